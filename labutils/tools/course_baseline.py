"""The course's own way through each step, as ``labutils bench``'s baseline.

Everything here does what the course's notebooks do, at the course's cost, so that ``bench``
can measure labutils' path against it in the same run:

- Fashion-MNIST (labs 02-04): train + test joined (``ConcatDataset``), each item a
  ``PIL.Image.fromarray`` of the 28 x 28 bytes through ``Compose([Resize(16), ToTensor(),
  RandomHorizontalFlip(), Lambda(2 t - 1)])``, fed by ``DataLoader(batch_size=128,
  shuffle=True, drop_last=True)`` (546 steps per epoch);
- flowers (labs 04 B, 05): every photo pre-transformed once (``Resize(32)``, the shorter edge,
  keeping the aspect; ``ToTensor``; scale to [-1, 1]) and kept on the device as a list of
  tensors of different sizes; each item ``RandomCrop(32)`` then ``RandomHorizontalFlip()``; lab
  05's items carry a 512-d CLIP image embedding (the bench draws fixed random vectors: the
  step costs the same);
- a training step: ``optimizer.zero_grad()``, ``t = randint(0, T)``, ``x = batch[0].to(device)``,
  the context mask (``one_hot`` + element-wise Bernoulli keep-mask, drop probability 0.1),
  ``ddpm.get_loss``, ``backward``, plain ``torch.optim.Adam`` -- in fp32, eager, default memory
  format.

The course wraps its models in ``torch.compile``; the baseline stays eager (the project's
choice: compilation is measured separately, ``labutils bench --knobs``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from ..data.fashion_mnist import _read_split, find_fashion_mnist

COURSE_BATCH = 128
CONTEXT_DROP_PROB = 0.1


def _to_signed(t: torch.Tensor) -> torch.Tensor:
    """The course's ``Lambda(lambda t: (t * 2) - 1)`` (a named function: picklable)."""
    return (t * 2) - 1


def fmnist_transform(img_size: int = 16, flip: bool = True):
    """The course's per-item transform of a Fashion-MNIST PIL image."""
    from torchvision import transforms
    steps = [transforms.Resize(img_size), transforms.ToTensor()]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.Lambda(_to_signed))
    return transforms.Compose(steps)


class CourseImages(Dataset):
    """Items ``(transform(Image.fromarray(uint8 H x W)), int label)``, like torchvision's
    ``FashionMNIST``: the PIL image is built and transformed anew for every item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        img = Image.fromarray(self.images[i])          # mode "L" for uint8 H x W
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


def _subset(dataset: Dataset, max_images: Optional[int], seed: int = 0) -> Dataset:
    if max_images is None or max_images >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=g)[:max_images].tolist())


def course_fashion_mnist(img_size: int = 16, data_dir=None, max_images: Optional[int] = None,
                         flip: bool = True, directory: Optional[Path] = None) -> Dataset:
    """Fashion-MNIST train + test joined (70,000 items) with the course's per-item transform.

    ``directory`` names a folder with the four IDX files (MNIST's, for the assessment) instead of
    :func:`~labutils.data.fashion_mnist.find_fashion_mnist`'s search."""
    directory = directory or find_fashion_mnist(data_dir)
    transform = fmnist_transform(img_size, flip)
    parts = [CourseImages(*_read_split(Path(directory), split), transform=transform)
             for split in ("train", "test")]
    return _subset(ConcatDataset(parts), max_images)


class CourseFlowers(Dataset):
    """The course's flowers ``MyDataset``: pre-transformed tensors on ``device``, one per photo
    (sizes differ: ``Resize(S)`` keeps the aspect), cropped and flipped per item.

    ``labels``: class indices (lab 04 B) or a ``[N, D]`` tensor of embeddings (lab 05)."""

    def __init__(self, files: Sequence, labels, img_size: int = 32, device=None):
        from PIL import Image
        from torchvision import transforms
        self.pre_transforms = transforms.Compose([
            transforms.Resize(img_size), transforms.ToTensor(), transforms.Lambda(_to_signed)])
        self.random_transforms = transforms.Compose([
            transforms.RandomCrop(img_size), transforms.RandomHorizontalFlip()])
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.imgs: List[torch.Tensor] = []
        for path in files:
            with Image.open(path) as img:
                self.imgs.append(self.pre_transforms(img.convert("RGB")).to(device))
        if torch.is_tensor(labels):
            labels = labels.to(device)
        elif len(labels) != len(self.imgs):
            raise ValueError(f"{len(self.imgs)} images but {len(labels)} labels")
        self.labels = labels

    def __len__(self) -> int:
        return len(self.imgs)

    def __getitem__(self, idx):
        return self.random_transforms(self.imgs[idx]), self.labels[idx]


def flower_files(directory: Path, classes: Sequence[str],
                 max_images: Optional[int] = None) -> Tuple[List[Path], List[int]]:
    """The photos of each class folder (sorted, class order) and their class indices;
    ``max_images`` keeps that many, taking the classes in turn."""
    from ..data.flowers import _image_files
    per_class = [_image_files(Path(directory) / c) for c in classes]
    if max_images is not None:
        turns = [(i, k) for i in range(max(map(len, per_class)))
                 for k in range(len(classes)) if i < len(per_class[k])][:max_images]
        per_class = [[per_class[k][i] for i, kk in turns if kk == k]
                     for k in range(len(classes))]
    files = [f for group in per_class for f in group]
    labels = [k for k, group in enumerate(per_class) for _ in group]
    return files, labels


def course_dataloader(dataset: Dataset, batch_size: int = COURSE_BATCH) -> DataLoader:
    """The course's loader: shuffled, the last partial batch dropped, no worker processes."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def course_context(y: torch.Tensor, conditioning: str, n_classes: Optional[int], device,
                   drop_prob: float = CONTEXT_DROP_PROB):
    """The course's ``get_context_mask``: ``(c, c_mask)`` (lab 04: one-hot classes; lab 05: the
    embeddings as they are), the mask an element-wise Bernoulli keep-mask."""
    if conditioning == "classes":
        c = F.one_hot(y.to(torch.int64), num_classes=n_classes).to(device)
    else:
        c = y.to(device)
    c_mask = torch.bernoulli(torch.ones_like(c).float() - drop_prob).to(device)
    return c, c_mask


def course_step(model, optimizer, ddpm, batch, *, T: int, device, conditioning: str = "none",
                n_classes: Optional[int] = None) -> torch.Tensor:
    """One step of the course's training loop (fp32, eager); returns the loss."""
    optimizer.zero_grad()
    x, y = batch
    t = torch.randint(0, T, (len(x),), device=device).float()
    x = x.to(device)
    if conditioning == "none":
        loss = ddpm.get_loss(model, x, t)
    else:
        c, c_mask = course_context(y, conditioning, n_classes, device)
        loss = ddpm.get_loss(model, x, t, c, c_mask)
    loss.backward()
    optimizer.step()
    return loss
