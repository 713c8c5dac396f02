"""Flower photos (labs 04-05) as a folder of classes, decoded and resized once into tensors.

Layout: ``<dir>/<class>/*.jpg`` with the classes daisy, sunflowers and roses. Where the
photos come from, in order:
1. an explicit directory (argument ``data_dir=``) or ``LABUTILS_FLOWERS_DIR``;
2. ``data/cropped_flowers/`` (in the working directory or the project checkout), which
   :func:`prepare_flowers` (``labutils prepare``) builds from TensorFlow's ``flower_photos.tgz``;
3. only under the ``ci`` profile: a small synthetic set of coloured shapes, announced loudly.

The course pre-transforms once (Resize 32: the *shorter* edge to 32, keeping the aspect;
ToTensor; scale to [-1, 1]) and augments per item (RandomCrop 32, RandomHorizontalFlip). Here
``load_flowers_tensors(..., keep_aspect=True)`` (what the labs use) keeps the aspect the same
way, and :func:`flowers_augment` crops each image of a batch at its own random place and
flips it, on the device. Square photos decode to exactly ``S x S``, as before.
"""
from __future__ import annotations

import io
import os
import random
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import get_profile, project_dir
from .batches import TensorImageDataset, random_hflip
from .fashion_mnist import DataNotFoundError

FLOWER_CLASSES = ["daisy", "sunflowers", "roses"]
FLOWER_PHOTOS_URL = ("https://storage.googleapis.com/download.tensorflow.org/"
                     "example_images/flower_photos.tgz")
ENV_VAR = "LABUTILS_FLOWERS_DIR"
DEFAULT_DIR = Path("data") / "cropped_flowers"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Errors Pillow raises for a file that is not a (complete) image.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_PROJECT_ROOT = project_dir()


class FlowersFixtureWarning(UserWarning):
    """Synthetic shapes stand in for the flower photos (ci profile only)."""


# --- finding the photos --------------------------------------------------------------------------

def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _missing_classes(directory: Path, classes: Sequence[str]) -> List[str]:
    """The classes without a sub-folder holding at least one image file."""
    return [c for c in classes
            if not (directory / c).is_dir() or not _image_files(directory / c)]


def _default_dirs() -> List[Path]:
    dirs = [DEFAULT_DIR.resolve()]
    if (_PROJECT_ROOT / "pyproject.toml").is_file():  # a checkout: notebooks run in notebooks/
        dirs.append(_PROJECT_ROOT / DEFAULT_DIR)
    return list(dict.fromkeys(dirs))


def _ways_to_provide() -> str:
    return ("Provide the photos one of these ways:\n"
            f"  - point {ENV_VAR} (or data_dir=) at a folder <dir>/<class>/*.jpg;\n"
            "  - run `labutils prepare` or labutils.data.prepare_flowers() to download "
            f"{FLOWER_PHOTOS_URL}\n    and build {DEFAULT_DIR}/ (or prepare_flowers(archive="
            "'flower_photos.tgz') with a copy you already have);\n"
            "  - under the ci profile only, a synthetic fixture of coloured shapes stands in.")


def find_flowers(data_dir=None, classes: Sequence[str] = FLOWER_CLASSES) -> Path:
    """The folder of flower classes to use (see the module docstring for the order).

    A directory given explicitly (argument or ``LABUTILS_FLOWERS_DIR``) must hold every class:
    we never silently use another one in its place.
    """
    explicit = data_dir or os.environ.get(ENV_VAR)
    if explicit:
        d = Path(explicit).expanduser()
        source = "argument data_dir" if data_dir else ENV_VAR
        if not d.is_dir():
            raise DataNotFoundError(f"flowers: {d} (from {source}) is not a directory.\n"
                                    + _ways_to_provide())
        missing = _missing_classes(d, classes)
        if missing:
            raise DataNotFoundError(f"flowers: {d} (from {source}) has no images for "
                                    f"{missing} (expected {d}/<class>/*.jpg).\n"
                                    + _ways_to_provide())
        return d
    tried = [f"  1. no directory given (argument data_dir= or {ENV_VAR})"]
    for n, d in enumerate(_default_dirs(), start=2):
        missing = _missing_classes(d, classes) if d.is_dir() else list(classes)
        if not missing:
            return d
        tried.append(f"  {n}. {d}: " + ("missing" if not d.is_dir()
                                        else f"no images for {missing}"))
    raise DataNotFoundError("Flower photos not found. Tried:\n" + "\n".join(tried) + "\n"
                            + _ways_to_provide())


# --- decoding ------------------------------------------------------------------------------------

def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB; transparent parts become white (not black) as on a web page."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def _centre_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


# With keep_aspect, the longer edge is kept up to this many times the shorter one (centre-cropped
# beyond): TensorFlow's flower_photos are mostly 4:3 or 3:2; a rare panorama would otherwise
# make every image's canvas (and the memory on the device) as wide as itself.
MAX_ASPECT = 1.5


def _fit_aspect(im: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the longer edge to at most ``max_aspect`` times the shorter one."""
    w, h = im.size
    short = min(w, h)
    long_max = int(short * max_aspect)
    if max(w, h) <= long_max:
        return im
    if w > h:
        left = (w - long_max) // 2
        return im.crop((left, 0, left + long_max, h))
    top = (h - long_max) // 2
    return im.crop((0, top, w, top + long_max))


def _decode(path: Path, img_size: int, keep_aspect: bool = False) -> np.ndarray:
    """One image file as uint8 RGB ``[H, W, 3]`` with its shorter edge resized to S.

    ``keep_aspect=False``: centre-cropped to ``[S, S, 3]``. ``keep_aspect=True`` (the course's
    ``Resize(S)``): the aspect is kept, up to :data:`MAX_ASPECT`.
    """
    with Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here
        im = _to_rgb(im)
    im = _fit_aspect(im) if keep_aspect else _centre_square(im)
    w, h = im.size
    scale = img_size / min(w, h)
    # Pillow's bilinear resize antialiases when shrinking, like torchvision's Resize.
    im = im.resize((max(img_size, round(w * scale)), max(img_size, round(h * scale))),
                   Image.BILINEAR)
    return np.asarray(im if keep_aspect else _centre_square(im), dtype=np.uint8)


def _canvas(arrays: List[np.ndarray]) -> torch.Tensor:
    """Images of different sizes as one float tensor ``[N, 3, M, M]`` in [-1, 1], each in the
    top-left corner, NaN where it has no pixels (``M``: the largest edge; all ``S x S``: no NaN)."""
    side = max(max(a.shape[0], a.shape[1]) for a in arrays)
    out = torch.full((len(arrays), 3, side, side), float("nan"))
    for i, a in enumerate(arrays):
        h, w = a.shape[:2]
        out[i, :, :h, :w] = torch.tensor(a).permute(2, 0, 1).float().div_(127.5).sub_(1)
    return out.clamp_(-1, 1)


def _warn_skipped(skipped: List[Tuple[Path, Exception]], where) -> None:
    if skipped:
        path, err = skipped[0]
        warnings.warn(f"flowers: skipped {len(skipped)} unreadable image file(s) in {where} "
                      f"(first: {path}: {type(err).__name__}: {err})", stacklevel=3)


def load_flowers_tensors(img_size: int = 32, data_dir=None,
                         classes: Sequence[str] = FLOWER_CLASSES,
                         max_images: Optional[int] = None, allow_fixture: Optional[bool] = None,
                         device=None, keep_aspect: bool = False) -> TensorImageDataset:
    """The flower photos as a :class:`TensorImageDataset` in [-1, 1], ``[N, 3, S, S]``.

    ``keep_aspect=True`` (the labs' training data, the course's ``Resize(S)`` before a
    per-image ``RandomCrop(S)``): each photo keeps its aspect with the shorter edge S, in the
    top-left corner of an ``[3, M, M]`` canvas (``M`` the longest edge, at most
    ``MAX_ASPECT * S``) that is NaN outside the photo; :func:`flowers_augment` crops an
    ``S x S`` window inside each photo at random. Square photos give ``M = S`` and no NaN.

    Labels index ``classes`` (course order: daisy, sunflowers, roses); ``dataset.paths`` names
    each image's file. ``max_images`` keeps a random subset (seed 0), balanced over the
    classes, and decodes only that.
    Unreadable files are skipped with one warning that counts them. ``allow_fixture`` (None:
    only under the ``ci`` profile) lets synthetic shapes stand in when no photos exist.
    """
    classes = list(classes)
    if not classes:
        raise ValueError("classes is empty")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be positive, got {max_images}")
    try:
        directory = find_flowers(data_dir, classes)
    except DataNotFoundError as err:
        explicit = data_dir or os.environ.get(ENV_VAR)
        allowed = get_profile() == "ci" if allow_fixture is None else allow_fixture
        if explicit or not allowed:
            raise
        directory = _announce_fixture(classes, err)

    per_class = [[(p, k) for p in _image_files(directory / c)] for k, c in enumerate(classes)]
    files = [f for group in per_class for f in group]
    if max_images is not None and max_images < len(files):
        # A random subset, balanced over the classes (round robin over shuffled classes);
        # only the subset is decoded.
        rng = random.Random(0)
        for group in per_class:
            rng.shuffle(group)
        files = [g[i] for i in range(max(map(len, per_class))) for g in per_class if i < len(g)]
    arrays, labels, paths, skipped = [], [], [], []
    for path, k in files:
        if max_images is not None and len(arrays) >= max_images:
            break
        try:
            arrays.append(_decode(path, img_size, keep_aspect))
        except _UNREADABLE as err:
            skipped.append((path, err))
            continue
        labels.append(k)
        paths.append(str(path))
    _warn_skipped(skipped, directory)
    if not arrays:
        raise DataNotFoundError(f"flowers: no readable images in {directory}")
    _check_every_class(classes, set(labels), per_class, skipped, directory, img_size,
                       max_images)
    order = sorted(range(len(labels)), key=lambda i: (labels[i], paths[i]))  # class order
    images = _canvas([arrays[i] for i in order])
    dataset = TensorImageDataset(images, torch.tensor([labels[i] for i in order]),
                                 classes, [paths[i] for i in order])
    if device is not None:
        dataset.images = dataset.images.to(device)
        dataset.labels = dataset.labels.to(device)
    return dataset


def _check_every_class(classes, present, per_class, skipped, directory, img_size,
                       max_images) -> None:
    """A class never silently drops out of the data set.

    A class whose image files are all unreadable is an error, under every profile; a class
    that only a small ``max_images`` subset leaves out is announced loudly.
    """
    absent = [k for k in range(len(classes)) if k not in present]
    if not absent:
        return
    unreadable = {p for p, _ in skipped}

    def readable(path):
        try:
            _decode(path, img_size)
            return True
        except _UNREADABLE:
            return False

    dead = [classes[k] for k in absent
            if not any(readable(p) for p, _ in per_class[k] if p not in unreadable)]
    if dead:
        raise DataNotFoundError(f"flowers: no readable images for {dead} in {directory} "
                                "(every file of that class failed to decode); fix or remove "
                                "those files, the class would be missing from training")
    left_out = [classes[k] for k in absent]
    message = (f"*** flowers: the {max_images}-image subset holds no image of {left_out} "
               f"(their first files were unreadable or the subset is smaller than the "
               f"{len(classes)} classes): the model will not learn them. ***")
    print(message, file=sys.stderr, flush=True)
    warnings.warn(message, stacklevel=3)


def random_crop_each(x: torch.Tensor, size: int) -> torch.Tensor:
    """A ``size x size`` crop of every image of a batch, each at its own random place.

    The course's per-item ``RandomCrop``. Each image may fill only the top-left part of ``x``
    (NaN elsewhere, see ``load_flowers_tensors(keep_aspect=True)``): its crop stays inside it.
    """
    n, _, h, w = x.shape
    if h == size and w == size:
        return x
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {h}x{w} images")
    valid = ~torch.isnan(x[:, 0])                           # [N, H, W]
    heights = valid[:, :, 0].sum(1)                         # rows of each image
    widths = valid[:, 0, :].sum(1)
    if bool(((heights < size) | (widths < size)).any()):
        raise ValueError(f"an image of the batch is smaller than the {size}x{size} crop")
    top = (torch.rand(n, device=x.device) * (heights - size + 1)).long()
    left = (torch.rand(n, device=x.device) * (widths - size + 1)).long()
    offsets = torch.arange(size, device=x.device)
    rows = (top[:, None] + offsets)[:, :, None]             # [N, S, 1]
    cols = (left[:, None] + offsets)[:, None, :]            # [N, 1, S]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)   # [N, C, S, S]


def flowers_augment(img_size: int = 32, padding: int = 0):
    """Per-batch augmentation for ``BatchLoader(augment=...)``: the course's RandomCrop and
    RandomHorizontalFlip, drawn for each image of the batch."""
    def augment(x: torch.Tensor) -> torch.Tensor:
        if padding:   # reflect-pad first (square images only: no NaN canvas)
            x = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
        return random_hflip(random_crop_each(x, img_size))
    return augment


# --- the synthetic fixture (ci profile without photos) -------------------------------------------

def _draw_flower(cls: str, size: int, rng: random.Random) -> Image.Image:
    """A crude flower of ``cls`` on a green background, placed and sized at random."""
    bg = (rng.randint(20, 70), rng.randint(90, 150), rng.randint(20, 70))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    cx, cy = (size / 2 + rng.uniform(-size / 8, size / 8) for _ in range(2))
    r = size * rng.uniform(0.28, 0.4)

    def disc(radius, colour):
        d.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)

    if cls in ("daisy", "sunflowers"):
        petal = (245, 245, 240) if cls == "daisy" else (250, 200, 20)
        n = 12 if cls == "daisy" else 16
        for i in range(n):
            a = 2 * np.pi * (i + rng.random() * 0.3) / n
            px, py = cx + 0.6 * r * np.cos(a), cy + 0.6 * r * np.sin(a)
            d.ellipse((px - 0.35 * r, py - 0.35 * r, px + 0.35 * r, py + 0.35 * r), fill=petal)
        disc(0.25 * r if cls == "daisy" else 0.5 * r,
             (240, 200, 30) if cls == "daisy" else (90, 50, 20))
    elif cls == "roses":
        disc(r * 0.85, (200, 20, 40))
        for f in (0.6, 0.35):
            d.arc((cx - f * r, cy - f * r, cx + f * r, cy + f * r), 30, 320,
                  fill=(120, 0, 20), width=max(1, size // 32))
    else:
        raise ValueError(f"the synthetic fixture has no shape for class {cls!r}; "
                         f"it knows {FLOWER_CLASSES}")
    return im


def make_flowers_fixture(dest, classes: Sequence[str] = FLOWER_CLASSES, per_class: int = 24,
                         size: int = 64, seed: int = 0) -> Path:
    """Write ``per_class`` synthetic PNGs per class to ``dest/<class>/`` (atomically)."""
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        rng = random.Random(seed)
        for cls in classes:
            (tmp / cls).mkdir()
            for i in range(per_class):
                _draw_flower(cls, size, rng).save(tmp / cls / f"{cls}_{i:03d}.png")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def fixture_root() -> Path:
    """Where the ci fixture is built: under the project's ``data/`` (never a shared temp folder,
    where another user could plant files), private to this user (mode 0700)."""
    return _PROJECT_ROOT / "data" / "flowers-fixture-v1"


def _announce_fixture(classes: Sequence[str], err: Exception) -> Path:
    root = fixture_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = root.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise DataNotFoundError(f"flowers: the fixture folder {root} is not owned by you or is "
                                "writable by others; remove it and run again")
    dest = root / "-".join(classes)
    if not dest.is_dir():
        try:
            make_flowers_fixture(dest, classes)
        except OSError:
            if not dest.is_dir():  # another process may have built it first
                raise
    message = ("*** NO FLOWER PHOTOS: using a SYNTHETIC FIXTURE of coloured shapes "
               f"({dest}) because the profile is ci. Samples will be shapes, not flowers. ***\n"
               f"Why: no {ENV_VAR} and no {DEFAULT_DIR}/.\nTo use the photos: set {ENV_VAR} or run "
               "`labutils prepare`.")
    print(message, flush=True)
    warnings.warn(message, FlowersFixtureWarning, stacklevel=3)
    return dest


# --- building data/cropped_flowers from TensorFlow's archive -------------------------------------

def _download(url: str, path: Path) -> Path:
    part = path.with_name(path.name + ".part")
    print(f"Downloading {url} -> {path}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
        os.replace(part, path)
    except BaseException as err:
        part.unlink(missing_ok=True)
        if isinstance(err, Exception):
            raise DataNotFoundError(f"could not download {url}: {type(err).__name__}: {err}. "
                                    "Download it elsewhere and pass prepare_flowers(archive=...)"
                                    ) from err
        raise
    return path


def prepare_flowers(dest="data/cropped_flowers", archive=None, url: str = FLOWER_PHOTOS_URL,
                    classes: Sequence[str] = FLOWER_CLASSES, size: Optional[int] = 128) -> Path:
    """Build ``dest/<class>/*.jpg`` from TensorFlow's ``flower_photos.tgz``; returns ``dest``.

    ``archive`` is a local copy of the archive; without it the archive is downloaded from
    ``url`` next to ``dest`` (kept, so a rerun does not download again). Only ``classes`` are
    kept; each photo keeps its aspect (the longer edge centre-cropped to at most
    :data:`MAX_ASPECT` times the shorter, so the training crop can still move) and its shorter
    edge is resized to ``size`` pixels (None keeps the size). ``dest`` appears complete or not at all: it is built in a temporary folder and
    renamed. An existing complete ``dest`` is returned as it is.
    """
    dest = Path(dest)
    if dest.exists():
        if dest.is_dir() and not _missing_classes(dest, classes):
            print(f"{dest} already holds {list(classes)}; nothing to do")
            return dest
        raise FileExistsError(f"{dest} exists but is not a complete flower folder; move it away "
                              "(labutils does not delete it) and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if archive is None:
        archive = dest.parent / "flower_photos.tgz"
        if not archive.is_file():
            _download(url, archive)
    archive = Path(archive)
    if not archive.is_file():
        raise DataNotFoundError(f"no archive at {archive}")

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        counts, skipped = {c: 0 for c in classes}, []
        for c in classes:
            (tmp / c).mkdir()
        with tarfile.open(archive) as tar:
            for member in tar:
                name = Path(member.name)
                cls = name.parent.name
                if (not member.isfile() or cls not in counts
                        or name.suffix.lower() not in IMAGE_SUFFIXES):
                    continue
                # Decoded from memory: nothing from the archive is written under its own name.
                try:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                        im.load()
                        im = _fit_aspect(_to_rgb(im))
                except _UNREADABLE as err:
                    skipped.append((member.name, err))
                    continue
                if size is not None:
                    scale = size / min(im.size)
                    im = im.resize((max(size, round(im.width * scale)),
                                    max(size, round(im.height * scale))), Image.LANCZOS)
                out = tmp / cls / f"{name.stem}.jpg"
                if out.exists():
                    out = tmp / cls / f"{name.stem}_{counts[cls]}.jpg"
                im.save(out, quality=95)
                counts[cls] += 1
        _warn_skipped(skipped, archive)
        empty = [c for c, n in counts.items() if n == 0]
        if empty:
            raise DataNotFoundError(f"{archive} holds no readable images for {empty} "
                                    "(expected flower_photos/<class>/*.jpg)")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"Wrote {dest}/: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return dest
