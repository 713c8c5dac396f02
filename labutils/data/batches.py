"""Batches from images that already sit in memory as tensors.

Decoding and resizing happen once, up front; per batch we only index, augment and move to the
device. That is what makes a 2-core CPU usable for these labs (a PIL transform per item per
step costs more than the small models' forward pass).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images ``[N, C, H, W]`` in [-1, 1] with integer labels ``[N]``; item = (image, label).

    ``paths`` (optional) names the source file of each image, e.g. to cache per-image encodings.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes=None, paths=None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if paths is not None and len(paths) != len(images):
            raise ValueError(f"{len(images)} images but {len(paths)} paths")
        self.images, self.labels = images, labels
        self.classes = list(classes) if classes is not None else None
        self.paths = list(paths) if paths is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, n: Optional[int], seed: int = 0) -> "TensorImageDataset":
        """A random subset of ``n`` images (all of them when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return TensorImageDataset(self.images[idx], self.labels[idx], self.classes, paths)


def random_hflip(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Flip each image of a batch left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device if generator is None
                      else generator.device) < 0.5
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def random_crop(x: torch.Tensor, size: int, padding: int = 0) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per batch (the course's RandomCrop on equal-size images)."""
    if padding:
        x = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    top = int(torch.randint(0, h - size + 1, ()))
    left = int(torch.randint(0, w - size + 1, ()))
    return x[..., top:top + size, left:left + size]


class BatchLoader:
    """Shuffled batches ``(images, labels)`` of a :class:`TensorImageDataset`, on ``device``.

    Like ``DataLoader(shuffle=True, drop_last=...)``, plus a per-batch ``augment`` function
    run on the device, a cap on batches per epoch, and sharding for distributed training
    (``rank``/``world_size``: each process sees its own slice of every shuffled epoch).
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = True, augment: Optional[Callable] = random_hflip,
                 device=None, max_batches: Optional[int] = None, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if len(dataset) < batch_size * world_size and drop_last:
            raise ValueError(f"{len(dataset)} images are fewer than one batch of {batch_size}"
                             + (f" per process x {world_size}" if world_size > 1 else ""))
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.device = torch.device(device) if device is not None else dataset.images.device
        self.max_batches, self.rank, self.world_size = max_batches, rank, world_size
        self.seed, self.epoch, self.start_batch = seed, 0, 0
        # Keep the images where training happens: one copy, moved once.
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the shuffle of ``epoch`` and start at its batch ``start_batch``.

        A resumed run sees the same order, and skipped batches are neither built nor augmented
        (augmenting them would draw random numbers an uninterrupted run never drew).
        """
        self.epoch, self.start_batch = epoch, start_batch

    def _per_process(self) -> int:
        return len(self.dataset) // self.world_size

    def __len__(self) -> int:
        n = self._per_process()
        full = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return min(full, self.max_batches) if self.max_batches else full

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        per = self._per_process()
        order = order[self.rank * per:(self.rank + 1) * per].to(self.device)
        start, self.start_batch = self.start_batch, 0
        self.epoch += 1
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment is not None:
                x = self.augment(x)
            yield x, self.labels[idx]
