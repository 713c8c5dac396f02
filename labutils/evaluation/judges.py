"""Judges: small classifiers trained here, offline, on the real data, that score generated images.

One judge per data set and image size (a data key of :data:`labutils.labs.DATA` and the lab's
``img_size``): Fashion-MNIST at 16 (labs 01-04) and 28, MNIST at 28 (the assessment's grader;
Fashion-MNIST when no MNIST exists, see :mod:`labutils.data.mnist`), flowers at 32 (labs 04-05).

- Trained on the train split with a fixed seed (Fashion-MNIST / MNIST: the official train split;
  flowers: a fixed, seeded, class-stratified 80/20 split of the photos); the held-out split gives
  the judge's accuracy and the real images that generated ones are compared with.
- Cached as ``<project>/data/judges/<data>-<size>px-v<version>-<fingerprint>.pt`` (or under
  ``LABUTILS_JUDGE_DIR``), the fingerprint being a SHA-256 of the judge's train and test images
  and labels and of its recipe (epochs, batch, lr, width, augmentation): new data or a changed
  recipe trains a new judge (bump ``JUDGE_VERSION`` when the network's code changes). Written atomically, loaded with ``weights_only=True``.
- The flowers judge refuses to exist on the generated fixture (coloured shapes of the ``ci``
  profile): there is no flower quality to report without the photos.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import project_dir
from ..data import TensorImageDataset, random_hflip
from ..data.batches import random_crop

JUDGE_VERSION = 1
CI_TRAIN_IMAGES = 4000   # the ci profile's judges: a seeded subset, seconds to train
FEATURE_DIM = 128
ENV_DIR = "LABUTILS_JUDGE_DIR"


class JudgeUnavailable(RuntimeError):
    """No honest judge can be built (e.g. only the generated flowers fixture exists)."""


# --- the network -------------------------------------------------------------------------------

def _block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class JudgeNet(nn.Module):
    """A small CNN; ``features`` is the penultimate layer (``FEATURE_DIM`` wide) used for
    Frechet distances, ``forward`` the class logits."""

    def __init__(self, img_ch: int, n_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            *_block(img_ch, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w), *_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * w, FEATURE_DIM), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(FEATURE_DIM, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# --- what a judge trains on ----------------------------------------------------------------------

@dataclasses.dataclass
class JudgeData:
    """A judge's train and held-out splits; ``note`` is said loudly wherever the judge reports."""

    train: TensorImageDataset
    test: TensorImageDataset
    classes: Tuple[str, ...]
    source: str
    note: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 16
    augment: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    def key(self) -> str:
        """What a cached judge depends on besides its data: a changed recipe trains anew."""
        aug = getattr(self.augment, "__qualname__", type(self.augment).__name__)
        return f"e{self.epochs}-b{self.batch_size}-lr{self.lr!r}-w{self.width}-{aug}"


def _shift(x: torch.Tensor) -> torch.Tensor:
    """Random translation by up to 2 pixels (digits must not be flipped)."""
    return random_crop(x, x.shape[-1], padding=2)


def _flowers_aug(x: torch.Tensor) -> torch.Tensor:
    return random_hflip(random_crop(x, x.shape[-1], padding=3))


def _fashion_splits(img_size: int, data_dir) -> JudgeData:
    from ..data import find_fashion_mnist, load_fashion_mnist_tensors
    from ..data.fashion_mnist import FASHION_MNIST_CLASSES
    folder = find_fashion_mnist(data_dir)
    return JudgeData(load_fashion_mnist_tensors(img_size, folder, splits=("train",)),
                     load_fashion_mnist_tensors(img_size, folder, splits=("test",)),
                     tuple(FASHION_MNIST_CLASSES), f"Fashion-MNIST {folder}")


def _mnist_splits(img_size: int, data_dir) -> JudgeData:
    from ..data.mnist import MNIST_CLASSES, load_mnist_tensors
    train = load_mnist_tensors(img_size, data_dir, splits=("train",))
    test = load_mnist_tensors(img_size, data_dir, splits=("test",), announce=False)
    return JudgeData(train, test, tuple(MNIST_CLASSES), train.source, train.stand_in)


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)``: ``test_fraction`` of each class held out, a fixed seeded draw."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for k in labels.unique(sorted=True).tolist():
        idx = (labels == k).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _flowers_splits(img_size: int, data_dir) -> JudgeData:
    from ..data.fashion_mnist import DataNotFoundError
    from ..data.flowers import FLOWER_CLASSES, find_flowers, fixture_root, load_flowers_tensors
    try:
        folder = find_flowers(data_dir)
    except DataNotFoundError as err:
        raise JudgeUnavailable("no flower photos, so no flower judge: flower quality is not "
                               f"reported (the generated ci fixture is shapes, not flowers).\n"
                               f"{err}") from None
    if fixture_root().resolve() in (folder.resolve(), *folder.resolve().parents):
        raise JudgeUnavailable(f"{folder} is the generated fixture, not photos: flower quality "
                               "is not reported")
    data = load_flowers_tensors(img_size, folder, allow_fixture=False)
    tr, te = stratified_split(data.labels, 0.2, seed=0)
    part = lambda idx: TensorImageDataset(data.images[idx], data.labels[idx], data.classes)
    return JudgeData(part(tr), part(te), tuple(FLOWER_CLASSES), f"flower photos {folder}")


# Per data key of labutils.labs.DATA: how to get the splits, and how to train on them.
SPLITS: Dict[str, Callable[[int, Optional[str]], JudgeData]] = {
    "fashion-mnist": _fashion_splits, "mnist": _mnist_splits, "flowers": _flowers_splits,
}
RECIPES: Dict[str, Recipe] = {
    "fashion-mnist": Recipe(epochs=3, augment=random_hflip),
    "mnist": Recipe(epochs=2, augment=_shift),
    "flowers": Recipe(epochs=40, batch_size=64, width=24, augment=_flowers_aug),
}


# --- the judge -----------------------------------------------------------------------------------

class Judge:
    """A trained classifier plus what it was trained on: ``predict``, ``features``, and the
    held-out real images (``heldout``) that generated ones are compared with."""

    def __init__(self, net: JudgeNet, meta: dict, heldout: Optional[TensorImageDataset] = None):
        self.net, self.meta, self.heldout = net.eval(), meta, heldout
        self.classes = tuple(meta["classes"])
        self.test_accuracy = float(meta["test_accuracy"])
        self.note = meta.get("note")

    @property
    def name(self) -> str:
        m = self.meta
        return f"{m['data']}-{m['img_size']}px-v{m['version']}-{m['fingerprint'][:12]}"

    @torch.no_grad()
    def _run(self, fn, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        device = next(self.net.parameters()).device
        out = [fn(images[i:i + batch].to(device).float()).cpu()
               for i in range(0, len(images), batch)]
        return torch.cat(out) if out else torch.empty(0)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(self.net, images)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[N, FEATURE_DIM]`` (float64, for Frechet distances)."""
        return self._run(self.net.features, images).double()

    def accuracy(self, data: TensorImageDataset) -> float:
        return float((self.predict(data.images) == data.labels.cpu()).float().mean())

    def describe(self) -> str:
        m = self.meta
        return (f"judge {self.name}: {m['source']}; held-out accuracy "
                f"{100 * self.test_accuracy:.1f}% on {m['n_test']} real images "
                f"(trained on {m['n_train']}, {m['epochs']} epochs, {m['seconds']:.0f} s)")


def fingerprint(data: JudgeData, recipe: Optional[Recipe] = None) -> str:
    """SHA-256 of the splits as 8-bit pixels and labels (what the judge actually sees) and of
    the recipe that trains it (:meth:`Recipe.key`)."""
    h = hashlib.sha256(f"v{JUDGE_VERSION}".encode())
    if recipe is not None:
        h.update(recipe.key().encode())
    for part in (data.train, data.test):
        pixels = ((part.images.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        h.update(str(tuple(pixels.shape)).encode())
        h.update(pixels.numpy().tobytes())
        h.update(part.labels.cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def train_judge(data: JudgeData, recipe: Recipe, seed: int = 0, progress=None) -> Judge:
    """Train a judge on ``data.train`` (fixed seed, fp32, CPU-friendly); accuracy on ``data.test``."""
    t0 = time.perf_counter()
    img_ch = data.train.images.shape[1]
    # enable_grad: a judge is often first needed inside an evaluation under no_grad.
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        net = JudgeNet(img_ch, len(data.classes), recipe.width)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=1e-4)
        x_all, y_all = data.train.images.float().cpu(), data.train.labels.cpu().long()
        n = len(x_all)
        bs = min(recipe.batch_size, n)
        steps_per_epoch = max(1, n // bs)
        total = recipe.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=total,
                                                    pct_start=0.15)
        g = torch.Generator().manual_seed(seed)
        net.train()
        for epoch in range(recipe.epochs):
            order = torch.randperm(n, generator=g)
            for b in range(steps_per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                loss = F.cross_entropy(net(recipe.augment(x_all[idx])), y_all[idx],
                                       label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            # About ten lines however many epochs: a notebook's output stays readable.
            if progress and (epoch + 1) % max(1, recipe.epochs // 10) == 0:
                progress(f"judge: epoch {epoch + 1}/{recipe.epochs}, loss {float(loss.detach()):.3f}")
    meta = {"version": JUDGE_VERSION, "classes": list(data.classes), "img_ch": img_ch,
            "img_size": int(data.train.images.shape[-1]), "width": recipe.width,
            "epochs": recipe.epochs, "seed": seed, "n_train": n, "n_test": len(data.test),
            "source": data.source, "note": data.note, "seconds": time.perf_counter() - t0,
            "data": "", "fingerprint": "", "test_accuracy": 0.0}
    judge = Judge(net, meta, data.test)
    meta["test_accuracy"] = judge.accuracy(data.test)
    judge.test_accuracy = meta["test_accuracy"]
    return judge


def cache_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env and env.strip() else project_dir() / "data" / "judges"


def _load(path: Path, data: JudgeData) -> Judge:
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = state["meta"]
    net = JudgeNet(meta["img_ch"], len(meta["classes"]), meta["width"])
    net.load_state_dict(state["model"])
    return Judge(net, meta, data.test)


def get_judge(data_key: str, img_size: int, data_dir=None, *, directory=None,
              splits: Optional[JudgeData] = None, recipe: Optional[Recipe] = None,
              max_train: Optional[int] = None, progress=print) -> Judge:
    """The judge for ``data_key`` at ``img_size``: from the cache when its fingerprint matches
    the data found now, else trained (and cached). ``splits``/``recipe`` override the data and
    the training (tests use tiny ones); ``max_train`` trains on a seeded subset (the ``ci``
    profile: a weaker judge, said in its source, that only checks the mechanics)."""
    from ..files import save_atomic
    if splits is None:
        if data_key not in SPLITS:
            raise JudgeUnavailable(f"no judge for data {data_key!r}; judges exist for "
                                   f"{', '.join(SPLITS)}")
        splits = SPLITS[data_key](img_size, data_dir)
    recipe = recipe or RECIPES[data_key]
    if max_train is not None and max_train < len(splits.train):
        splits = dataclasses.replace(
            splits, train=splits.train.subset(max_train, seed=0),
            source=f"{splits.source}, {max_train}-image training subset (ci)")
    if splits.train.images.shape[-1] != img_size:
        raise ValueError(f"judge data is {splits.train.images.shape[-1]}px, asked for {img_size}")
    fp = fingerprint(splits, recipe)
    folder = Path(directory) if directory is not None else cache_dir()
    stem = f"{data_key}-{img_size}px-v{JUDGE_VERSION}" + (f"-sub{max_train}" if max_train else "")
    path = folder / f"{stem}-{fp[:16]}.pt"
    if path.is_file():
        try:
            judge = _load(path, splits)
            if judge.meta.get("fingerprint") == fp:
                return judge
        except Exception as err:  # corrupt or foreign: retrain over it
            if progress:
                progress(f"judge: ignoring unreadable cache {path} ({type(err).__name__})")
    if progress:
        progress(f"judge: training the {data_key} {img_size}px judge on {len(splits.train)} "
                 f"images ({splits.source}; once, cached in {folder}/)"
                 + (f"\n{splits.note}" if splits.note else ""))
    judge = train_judge(splits, recipe, seed=0, progress=progress)
    judge.meta.update(data=data_key, fingerprint=fp)
    try:
        save_atomic({"format": 1, "meta": judge.meta, "model": judge.net.state_dict()}, path)
        for old in folder.glob(f"{stem}-*.pt"):   # judges of data that changed
            if old != path and len(old.name) == len(path.name):   # not a -subN judge
                old.unlink(missing_ok=True)
    except OSError as err:
        if progress:
            progress(f"judge: could not cache in {folder}: {err} (it will train again)")
    if progress:
        progress(judge.describe())
    return judge
