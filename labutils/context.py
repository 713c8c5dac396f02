"""Context vectors for classifier-free guidance, built in one place.

Class-conditioned labs (04, the assessment) feed the U-Net one-hot rows; lab 05 feeds CLIP
encodings, which are used as they are. :func:`class_indices` turns class names (or indices,
as typed on a command line) into label indices; :func:`one_hot` turns labels into rows.
"""
from __future__ import annotations

from typing import Optional, Sequence

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


def as_context(c, n_classes: Optional[int] = None) -> torch.Tensor:
    """Context rows ``[N, D]`` for the U-Net from class labels or context vectors.

    - integer labels ``[N]`` -> one-hot rows (``n_classes`` wide, required);
    - float labels ``[N]`` (the course's ``torch.Tensor([3])``) with ``n_classes`` given ->
      one-hot rows, when every value is a whole number in ``[0, n_classes)``;
    - float context vectors ``[N, D]`` (one-hot rows, CLIP embeddings) -> as they are, as
      floats (with ``n_classes`` given, ``D`` must equal it).

    Anything else is ambiguous and an error that says what to pass: a 1-D float tensor
    without ``n_classes`` (labels or one context vector?), float labels that are not whole
    numbers, ``[N, D]`` rows that do not match ``n_classes``, tensors of 3 or more dimensions.
    """
    c = torch.as_tensor(c)
    if c.dim() == 0:
        c = c.reshape(1)
    if is_class_labels(c):
        if c.dim() != 1:
            raise ValueError(f"integer class labels must be one label per image, shape [N]; "
                             f"got shape {tuple(c.shape)}")
        if n_classes is None:
            raise ValueError("integer class labels need n_classes= to build one-hot context")
        return one_hot(c, n_classes)
    if c.dim() == 1:
        if n_classes is None:
            raise ValueError(
                f"ambiguous context: a 1-D {c.dtype} tensor of {len(c)} values could be class "
                "labels or one context vector. For class labels pass n_classes= (they become "
                "one-hot rows); for context vectors pass shape [N, D] (e.g. c[None]).")
        if not bool(torch.isfinite(c).all()) or not bool((c == c.round()).all()):
            raise ValueError(f"float class labels must be whole numbers in [0, {n_classes}); "
                             f"got {c.tolist()[:8]}")
        return one_hot(c.long(), n_classes)
    if c.dim() == 2:
        if n_classes is not None and c.shape[1] != n_classes:
            raise ValueError(f"context rows of shape {tuple(c.shape)} do not match "
                             f"n_classes={n_classes}: pass labels [N] to one-hot, or rows "
                             f"[N, {n_classes}]")
        return c.float()
    raise ValueError(f"context must be labels [N] or rows [N, D]; got shape {tuple(c.shape)}")


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
