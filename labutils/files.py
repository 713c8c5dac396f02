"""Files a job writes beside its checkpoints: text, PNGs and torch checkpoints, written
atomically (a crash leaves the old file or the new one, never half of one) with the user's umask.

Below both ``evaluation/`` and ``tools/`` so that either may write files without importing
the other."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from .config import ConfigError

# What ``labutils sample --out`` may write, by suffix (the bytes always match the name).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def check_writable(path, what: str, folder: bool = False) -> Path:
    """Refuse (:class:`ConfigError`, a one-line message) an output that cannot be written.

    ``folder``: ``path`` is a folder to create or fill; else a file to create or replace. Checked
    before any work, so a long run or a sampled grid is not lost to a bad ``--out``. Nothing
    is created here.
    """
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a folder; choose another {what}")
    if not folder and path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; give a file name")
    start = path if folder else path.parent
    ancestor = next((p for p in (start, *start.absolute().parents) if p.exists()), Path("/"))
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write in {ancestor} (read-only file system or "
                          "no permission); choose another " + what)
    return path


def image_format(path, what: str = "--out") -> str:
    """The Pillow format for ``path``'s suffix; :class:`ConfigError` for a suffix we do not write."""
    fmt = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"{what} {path}: the name must end in "
                          f"{', '.join(IMAGE_FORMATS)} (the file format follows the name)")
    return fmt


def umask_mode() -> int:
    """The mode a new file gets under this process's umask (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, fsync: bool = True):
    """A temporary file next to ``path`` to write; when the block ends without an error it
    replaces ``path`` (synced to disk first when ``fsync``), so ``path`` is always either the
    old file or the complete new one. On any error (or a kill) the temporary file goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, umask_mode())
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_atomic(obj, path) -> Path:
    """``torch.save`` to ``path`` so that ``path`` is always either the old or the new file."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return path


def save_png(image, path: Path, format: str = "PNG") -> Path:
    """Write ``image`` atomically in ``format`` (see :func:`image_format`)."""
    with atomic_path(path, fsync=False) as tmp:
        (image.convert("RGB") if format == "JPEG" and image.mode not in ("RGB", "L")
         else image).save(tmp, format=format)
    return path


def grid_scale(img_size: int) -> int:
    """Upscaling that makes a sample grid's cells about 64 pixels."""
    return max(1, 64 // img_size)
