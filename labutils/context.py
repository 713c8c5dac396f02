"""Context vectors for classifier-free guidance, built in one place.

Class-conditioned labs (04, the assessment) feed the U-Net one-hot rows; lab 05 feeds CLIP
encodings, which are used as they are. :func:`class_indices` turns class names (or indices,
as typed on a command line) into label indices; :func:`one_hot` turns labels into rows.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

_INT_TYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def is_class_labels(c: torch.Tensor) -> bool:
    """Integer labels ``[N]`` (one-hot them), as opposed to context vectors ``[N, D]``."""
    return c.dtype in _INT_TYPES


def one_hot(labels, n_classes: int) -> torch.Tensor:
    """Float one-hot rows ``[N, n_classes]`` for integer ``labels`` (a tensor or a list)."""
    labels = torch.as_tensor(labels)
    if not is_class_labels(labels):
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"class labels must lie in [0, {n_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels.long(), num_classes=n_classes).float()


def class_indices(names: Sequence, classes: Sequence[str]) -> torch.Tensor:
    """Label indices for class names (case-insensitive) or indices (ints or digit strings)."""
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    idx = []
    for name in names:
        key = str(name).strip().lower()
        if key in lookup:
            idx.append(lookup[key])
        elif key.isdigit() and int(key) < len(classes):
            idx.append(int(key))
        else:
            raise ValueError(f"unknown class {name!r}; classes: {', '.join(classes)}")
    return torch.tensor(idx, dtype=torch.long)
