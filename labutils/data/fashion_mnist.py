"""Fashion-MNIST from its four IDX files, found locally or downloaded, as tensors in [-1, 1].

Where the files come from, in order:
1. an explicit directory (argument) or ``LABUTILS_DATA_DIR``;
2. the system copy ``/usr/share/datasets/fashion-mnist/`` (Debian: ``apt-get install
   dataset-fashion-mnist``);
3. torchvision's download into ``data/`` (needs internet).
A directory given explicitly that lacks the files is an error, never a reason to look elsewhere;
a failed download leaves nothing behind. Truncated or corrupt files are an error naming the file
(:func:`verify_fashion_mnist` checks all four, as ``labutils doctor`` does).
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import project_dir
from .batches import BatchLoader, TensorImageDataset

FASHION_MNIST_CLASSES = ["Top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_DIR = project_dir() / "data"
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# Layouts a Fashion-MNIST directory may have: flat (Debian, course), torchvision's.
_LAYOUTS = (".", "FashionMNIST/raw", "fashion-mnist")


class DataNotFoundError(FileNotFoundError):
    """A data set is nowhere labutils looks; the message lists every way to provide it."""


class CorruptDataError(ValueError):
    """A data file is there but cannot be read (truncated, not gzip, wrong header)."""


def _file_in(directory: Path, stem: str, layouts=_LAYOUTS) -> Optional[Path]:
    """The IDX file ``stem`` (gzipped or not) in ``directory`` under one of ``layouts``."""
    for sub in layouts:
        for name in (stem + ".gz", stem):
            p = directory / sub / name
            if p.is_file():
                return p
    return None


def _complete(directory: Path) -> bool:
    return all(_file_in(directory, stem) for stem in _FILES.values())


def find_fashion_mnist(data_dir=None, download: bool = True) -> Path:
    """The first directory holding all four Fashion-MNIST IDX files (see the module docstring)."""
    tried = []
    explicit = data_dir or os.environ.get("LABUTILS_DATA_DIR")
    if explicit is not None and not str(explicit).strip() and data_dir is None:
        raise DataNotFoundError("Fashion-MNIST: LABUTILS_DATA_DIR is set but empty: point it at "
                                "a folder with the four IDX files, or unset it")
    if explicit:
        # An explicit choice is used or refused, never silently replaced by another copy.
        d = Path(explicit).expanduser()
        source = "argument data_dir" if data_dir else "LABUTILS_DATA_DIR"
        if _complete(d):
            return d
        missing = [s for s in _FILES.values() if not _file_in(d, s)] if d.is_dir() else []
        raise DataNotFoundError(
            f"Fashion-MNIST: {d} (from {source}) "
            + (f"has no complete set of the four IDX files (lacks {', '.join(missing)})"
               if d.is_dir() else "is not a directory")
            + ": point it at a folder with the four IDX files (or unset it to use the system "
              "copy or a download)")
    tried.append("  1. no directory given (argument data_dir= or LABUTILS_DATA_DIR)")
    if _complete(SYSTEM_DIR):
        return SYSTEM_DIR
    tried.append(f"  2. {SYSTEM_DIR}: missing (Debian/Ubuntu: "
                 "sudo apt-get install dataset-fashion-mnist)")
    if _complete(DOWNLOAD_DIR):
        return DOWNLOAD_DIR
    if download:
        try:
            if _download(DOWNLOAD_DIR):
                return DOWNLOAD_DIR
            tried.append(f"  3. download into {DOWNLOAD_DIR}/: finished without the files")
        except Exception as err:  # no internet, proxy, disk...
            tried.append(f"  3. download into {DOWNLOAD_DIR}/ failed: {type(err).__name__}: {err}")
    else:
        tried.append(f"  3. download into {DOWNLOAD_DIR}/: not attempted (download=False)")
    raise DataNotFoundError(
        "Fashion-MNIST not found. Tried:\n" + "\n".join(tried) +
        "\nProvide it one of these ways: point LABUTILS_DATA_DIR at a folder with the four "
        "IDX files, install the system copy, or run once with internet (`labutils prepare`).")


def _download(dest: Path) -> bool:
    return download_idx(dest, "FashionMNIST")


def download_idx(dest: Path, dataset: str) -> bool:
    """torchvision's download of ``dataset`` ("FashionMNIST", "MNIST"), done in a temporary
    folder and moved into ``dest/<dataset>/raw`` only when all four files arrived: a failure
    leaves nothing behind (not even empty folders)."""
    import torchvision
    made = [p for p in (dest, *dest.parents) if not p.exists()]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dataset.lower()}-download.", dir=dest))
    ok = False
    try:
        for train in (True, False):
            getattr(torchvision.datasets, dataset)(str(tmp), train=train, download=True)
        got = {stem: _file_in(tmp, stem, (".", f"{dataset}/raw")) for stem in _FILES.values()}
        if all(got.values()):
            raw = dest / dataset / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for stem, path in got.items():
                os.replace(path, raw / path.name)
            ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            for p in made:  # the folders this attempt created, innermost first
                try:
                    p.rmdir()
                except OSError:
                    break
    return ok


def read_idx(path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a NumPy array.

    A truncated or corrupt file raises :class:`CorruptDataError` (a ValueError) naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDataError(
            f"{path}: unreadable (truncated or corrupt?): {type(err).__name__}: {err}. Delete it "
            "and fetch it again (`labutils prepare`, or the system package)") from None
    if len(data) < 4:
        raise CorruptDataError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or len(data) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise CorruptDataError(f"{path}: truncated: header says {shape}, file holds {body.size} values")
    return body.reshape(shape)


def verify_fashion_mnist(directory) -> Path:
    """Read all four IDX files of ``directory``; :class:`CorruptDataError` names a bad one."""
    directory = Path(directory)
    for split in ("train", "test"):
        images, labels = _read_split(directory, split)
        if len(images) != len(labels):
            raise CorruptDataError(f"{directory}: {split} has {len(images)} images but "
                                   f"{len(labels)} labels")
    return directory


def _read_split(directory: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    images = read_idx(_file_in(directory, _FILES[(split, "images")]))
    labels = read_idx(_file_in(directory, _FILES[(split, "labels")]))
    return images, labels


def idx_tensors(directory: Path, img_size: int, splits, classes) -> TensorImageDataset:
    """The IDX ``splits`` of ``directory`` joined, resized once to ``img_size``, in [-1, 1]."""
    parts = [_read_split(directory, s) for s in splits]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).float().div_(255)[:, None]
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    if images.shape[-1] != img_size:
        # Bilinear with antialiasing: what torchvision's Resize does to a PIL image.
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear",
                               antialias=True, align_corners=False)
    return TensorImageDataset(images.mul_(2).sub_(1).clamp_(-1, 1), labels, classes)


def load_fashion_mnist_tensors(img_size: int = 16, data_dir=None,
                               splits=("train", "test")) -> TensorImageDataset:
    """Fashion-MNIST (train + test joined, as the course does), resized once, scaled to [-1, 1]."""
    return idx_tensors(find_fashion_mnist(data_dir), img_size, splits, FASHION_MNIST_CLASSES)


# --- the course's helper names (other_utils) -------------------------------------------------

class _PILImages(torch.utils.data.Dataset):
    """Items as (transform(PIL image), label), like torchvision's FashionMNIST."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.fromarray(self.images[i], mode="L")
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def load_fashionMNIST(data_transform, train: bool = True):
    """The course's loader: one split, ``data_transform`` applied to a PIL image per item.

    Kept for readers following the course text; training uses the tensor loaders below.
    """
    images, labels = _read_split(find_fashion_mnist(), "train" if train else "test")
    return _PILImages(images, labels, data_transform)


def load_transformed_fashionMNIST(img_size: int, batch_size: int, device=None,
                                  max_images: Optional[int] = None,
                                  max_batches: Optional[int] = None, data_dir=None):
    """The course's ``(data, dataloader)``: train + test, Resize, flip, scale to [-1, 1].

    Images are resized once into one tensor; each batch is flipped at random on ``device``.
    """
    data = load_fashion_mnist_tensors(img_size, data_dir).subset(max_images)
    loader = BatchLoader(data, batch_size, shuffle=True, drop_last=True, device=device,
                         max_batches=max_batches)
    return data, loader
