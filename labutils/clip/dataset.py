"""Lab 05's training set: flower images in memory with their CLIP image embeddings as labels."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..data.batches import TensorImageDataset
from ..data.flowers import FLOWER_CLASSES, load_flowers_tensors
from .cache import embedding_cache
from .standin import default_cache_dir


def default_cache_csv(encoder) -> Path:
    """One CSV per model: ``<clip cache dir>/embeddings-<model>-<weights sha256[:12]>.csv``."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder.model_id).strip("-")
    return default_cache_dir() / f"embeddings-{tag}-{encoder.fingerprint[:12]}.csv"


def load_flowers_with_clip(encoder, img_size: int = 32, data_dir=None, cache_csv=None,
                           max_images: Optional[int] = None, classes=FLOWER_CLASSES,
                           on_mismatch: str = "error",
                           allow_fixture: Optional[bool] = None,
                           keep_aspect: bool = True) -> TensorImageDataset:
    """Flowers ``[N, 3, S, S]`` in [-1, 1] whose labels are float32 CLIP embeddings ``[N, 512]``.

    The embeddings come from the CSV cache (encoded once; see :mod:`.cache`), so
    ``guided_ddpm_loss`` uses them as context unchanged. ``dataset.class_labels`` keeps the
    class indices, ``dataset.cache_csv`` names the CSV. ``keep_aspect``: see
    :func:`~labutils.data.flowers.load_flowers_tensors` (train with ``flowers_augment``).
    """
    data = load_flowers_tensors(img_size=img_size, data_dir=data_dir, classes=classes,
                                max_images=max_images, allow_fixture=allow_fixture,
                                keep_aspect=keep_aspect)
    csv_path = Path(cache_csv) if cache_csv is not None else default_cache_csv(encoder)
    embeddings = embedding_cache(csv_path, data.paths, encoder, on_mismatch=on_mismatch)
    out = TensorImageDataset(data.images, embeddings, data.classes, data.paths)
    out.class_labels = data.labels
    out.cache_csv = csv_path
    return out
