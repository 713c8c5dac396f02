"""Files a job writes beside its checkpoints: text and PNGs, written atomically (a crash leaves
the old file or the new one, never half of one) with the user's umask."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .checkpoint import umask_mode


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, umask_mode())
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_png(image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, umask_mode())
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def grid_scale(img_size: int) -> int:
    """Upscaling that makes a sample grid's cells about 64 pixels."""
    return max(1, 64 // img_size)
