"""What bounds a sampled picture's memory, whatever ``labutils sample --n`` asks for.

- The model runs on chunks of :func:`sampling_chunk` images, so its activations stay bounded.
- The picture itself (the samples, their grid, and for a GIF each frame's grid) grows with the
  number of images: :func:`check_picture` refuses one that would need more than
  :func:`memory_limit` before anything is sampled (``--n 1000000`` once grew to 17.5 GB and
  was killed by the kernel without a word).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .config import ConfigError

PICTURE_MEMORY_LIMIT = 4 * 2**30   # bytes; less where less memory is available (memory_limit)


def sampling_chunk(device) -> int:
    """Images per sampling batch (guidance doubles it). On a CPU, batches whose activations pass
    glibc's 32 MB mmap threshold are mapped and unmapped at every reverse step: measured on a
    2-core CPU (lab 04 A, bf16), 2.6 ms per image-step at 128 images, 7.7 ms at 1,000, half of
    it system time. A GPU wants large batches."""
    return 1024 if torch.device(device).type == "cuda" else 128


def _available_bytes() -> int:
    """MemAvailable of /proc/meminfo (0 where it cannot be read: no such file, not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_limit() -> int:
    """:data:`PICTURE_MEMORY_LIMIT`, or half the memory available now when that is less."""
    available = _available_bytes()
    return min(PICTURE_MEMORY_LIMIT, available // 2) if available else PICTURE_MEMORY_LIMIT


def picture_bytes(count: int, image_shape: Sequence[int], scale: int, stored: int = 0,
                  frames: int = 0) -> int:
    """About how many bytes a picture of ``count`` images needs at its peak: the samples and
    ``stored`` copies of them along the chain (float32), the grid (a float canvas and its
    conversion, about 16 bytes a pixel and channel, then the ``scale``-fold upscaled image) and
    ``frames`` upscaled GIF frame grids."""
    c, h, w = image_shape
    sample = c * h * w * 4
    cell = c * (h + 1) * (w + 1)       # a grid cell with its 1-pixel border
    return count * (sample * (1 + stored) + cell * (16 + scale * scale * (1 + frames)))


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def check_picture(count: int, image_shape: Sequence[int], scale: int, stored: int = 0,
                  frames: int = 0) -> None:
    """:class:`ConfigError` saying what a picture of ``count`` images needs and the limit, when
    it needs more than :func:`memory_limit`; checked before any sampling."""
    need, limit = picture_bytes(count, image_shape, scale, stored, frames), memory_limit()
    if need > limit:
        most = max(1, count * limit // need)
        raise ConfigError(f"a picture of {count:,} images would need about {_size(need)} of "
                          f"memory, over the limit of {_size(limit)} ({_size(PICTURE_MEMORY_LIMIT)}, or "
                          f"half the memory available): ask for at most about {most:,} images"
                          + (", or draw no GIF" if frames else ""))
