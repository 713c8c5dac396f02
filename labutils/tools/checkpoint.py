"""Checkpoints that survive crashes, preemption and corrupt files.

- Written atomically: a temporary file in the same folder, flushed and fsync'ed, then
  ``os.replace``'d over the final name and the folder fsync'ed. A crash mid-write leaves the
  previous checkpoints untouched.
- Read with ``torch.load(..., weights_only=True)``: a checkpoint holds only tensors and plain
  containers (dict, list, tuple, str, int, float, bool, None), so loading one cannot run code.
  That is why the Python and NumPy RNG states are stored converted to tensors.
- A run folder keeps the newest ``keep`` files ``ckpt-step00001234.pt``; resuming takes the
  newest one that loads, reporting (and skipping) truncated or corrupt ones.
"""
from __future__ import annotations

import contextlib
import errno
import pickle
import random
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..files import save_atomic

FORMAT = 1
_NAME = re.compile(r"^ckpt-step(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and why."""


# --- a full disk ----------------------------------------------------------------------------

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A checkpoint (or another file of the run) does not fit on its file system: one line
    naming the folder and "no space left on device", with what was needed when known."""

    def __init__(self, folder, detail: str = ""):
        super().__init__(errno.ENOSPC, "no space left on device")
        self.folder, self.detail = Path(folder), detail

    def __str__(self) -> str:
        return f"{self.folder}: no space left on device" + (f" ({self.detail})"
                                                             if self.detail else "")

    def __reduce__(self):   # travels between ranks (broadcast) as itself
        return NoSpaceError, (self.folder, self.detail)


def out_of_space(err: BaseException) -> bool:
    """Whether ``err`` or an exception it was raised from is ENOSPC/EDQUOT: ``torch.save`` on a
    full disk raises a RuntimeError ("unexpected pos ...") from the OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_free_space(folder, need: int, what: str = "a checkpoint") -> None:
    """:class:`NoSpaceError` when ``folder``'s file system (or that of its nearest existing
    parent) has fewer than ``need`` bytes free."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if free < need:
        raise NoSpaceError(folder, f"{what} needs about {_mb(need)}, {_mb(free)} free")


def checkpoint_bytes(model: torch.nn.Module, ema_shadow: Optional[Dict] = None) -> int:
    """About the size of a checkpoint of ``model`` before one exists: its state, Adam's two
    moments per parameter and the EMA's copy (a written checkpoint's size is the better guide)."""
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    return (nbytes(model.state_dict().values()) + 2 * nbytes(model.parameters())
            + nbytes((ema_shadow or {}).values()))


# --- RNG states as tensors ------------------------------------------------------------------

def _cuda_index(device) -> Optional[int]:
    """The CUDA device index whose RNG this process uses (None: no CUDA in use)."""
    if device is not None:
        device = torch.device(device)
        if device.type != "cuda":
            return None
        if device.index is not None:
            return device.index
    if not torch.cuda.is_available():
        return None
    return torch.cuda.current_device()


def rng_state(device=None) -> Dict:
    """This process's Python, NumPy, torch CPU and CUDA RNG states, as weights_only-safe values.

    Only the CUDA generator of the process's own GPU (``device``, default the current one) is
    saved: under torchrun each rank uses one GPU, and saving every visible GPU's state would tie
    the checkpoint to the node's GPU count.
    """
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    index = _cuda_index(device)
    state = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": [] if index is None else [torch.cuda.get_rng_state(index)],
    }
    return state


def set_rng_state(state: Dict, device=None) -> None:
    """Restore what :func:`rng_state` returned; the saved CUDA state goes to this process's GPU.

    When the checkpoint's CUDA state cannot be restored (saved on a CPU and resumed on a GPU, or
    the reverse) a warning says that the run continues correctly but not bit-for-bit like an
    uninterrupted one.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    index = _cuda_index(device)
    if index is not None and len(cuda) >= 1:
        # Format of older checkpoints: one state per visible GPU; take this GPU's, else the first.
        saved = cuda[index] if len(cuda) > 1 and index < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(saved, index)
    elif index is not None or cuda:
        warnings.warn("the checkpoint's CUDA random state "
                      + ("is missing (it was saved without a GPU)" if index is not None
                         else "cannot be restored here (resuming without a GPU)")
                      + ": training continues correctly, but its random draws differ from an "
                        "uninterrupted run's", RuntimeWarning, stacklevel=2)


# --- safe load (the atomic save is labutils.files.save_atomic) ------------------------------

def load_checkpoint(path, map_location="cpu") -> Dict:
    """Load a checkpoint written by this module; :class:`CheckpointError` says why one is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: unreadable: an empty file (0 bytes; a crash or a full "
                              "disk while it was written?)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = [l.strip() for l in str(err).splitlines() if "Unsupported global" in l]
        first = detail[0].split(" was not")[0] if detail else type(err).__name__
        first = first.replace("WeightsUnpickler error: ", "")
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers, "
            f"and labutils only loads checkpoints with weights_only=True ({first})") from None
    except Exception as err:  # truncated zip, not a torch file, I/O error...
        lines = str(err).strip().splitlines()  # some exceptions carry no text at all
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt?): "
                              f"{type(err).__name__}" + (f": {lines[0]}" if lines else "")
                              ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "model" not in obj:
        raise CheckpointError(f"{path}: not a labutils checkpoint (format {FORMAT} with a model)")
    return obj


# --- a run folder's checkpoints -------------------------------------------------------------

class CheckpointDir:
    """The checkpoints of one run: ``<dir>/ckpt-step<step>.pt``, newest ``keep`` kept.

    Only *readable* checkpoints count toward ``keep``: clean-up never deletes the newest
    readable one, and leaves unreadable files alone (reported when resuming, never counted).
    """

    def __init__(self, directory, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory, self.keep = Path(directory), keep
        self._verdicts: Dict[Tuple[str, int, int], bool] = {}  # (path, size, mtime) -> loads

    def _key(self, path: Path) -> Optional[Tuple[str, int, int]]:
        try:
            st = path.stat()
        except OSError:
            return None
        return (str(path), st.st_size, st.st_mtime_ns)

    def _remember(self, path: Path, readable: bool) -> None:
        key = self._key(path)
        if key is not None:
            self._verdicts[key] = readable

    def readable(self, path: Path) -> bool:
        """Whether ``path`` loads (each file version is loaded at most once per process)."""
        key = self._key(path)
        if key is None:
            return False
        if key not in self._verdicts:
            try:
                load_checkpoint(path)
                self._verdicts[key] = True
            except CheckpointError:
                self._verdicts[key] = False
        return self._verdicts[key]

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt-step{step:08d}.pt"

    def list(self) -> List[Tuple[int, Path]]:
        """``(step, path)`` of every checkpoint here, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, state: Dict, step: int) -> Path:
        """Write ``state`` as step ``step``'s checkpoint; on a full disk a :class:`NoSpaceError`
        (the temporary file gone, older checkpoints untouched)."""
        try:
            path = save_atomic(state, self.path_for(step))
        except Exception as err:
            if out_of_space(err):
                raise NoSpaceError(self.directory, f"writing the checkpoint of step {step}"
                                   ) from None
            raise
        self._remember(path, True)
        # Keep the newest ``keep`` readable checkpoints, the one just written always among them.
        readable = [p for _, p in self.list() if p == path or self.readable(p)]
        others = [p for p in readable if p != path]
        for old in others[:max(0, len(others) - (self.keep - 1))]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path

    def latest(self, report: Optional[Callable[[str], None]] = None
               ) -> Optional[Tuple[Path, Dict]]:
        """The newest checkpoint that loads, ``(path, state)``; None when there is none at all.

        Unreadable newer files are reported through ``report`` and skipped; when every file is
        unreadable a :class:`CheckpointError` lists them all (we never silently start over).
        """
        problems = []
        for _, path in reversed(self.list()):
            try:
                state = load_checkpoint(path)
                self._remember(path, True)
                return path, state
            except CheckpointError as err:
                self._remember(path, False)
                problems.append(str(err))
                if report is not None:
                    report(f"skipping {err}")
        if problems:
            raise CheckpointError("no usable checkpoint in " + str(self.directory) + ":\n  "
                                  + "\n  ".join(problems))
        return None

    def clean_temporaries(self) -> None:
        """Remove temporary files left by a process killed while saving."""
        if self.directory.is_dir():
            for p in self.directory.glob(".ckpt-step*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()


def find_checkpoint(source, command: str = "eval"):
    """``(path, state, run_folder)`` for a checkpoint file or a run folder (its newest one)."""
    source = Path(source)
    if source.is_dir():
        folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
        found = CheckpointDir(folder).latest(
            report=lambda m: print(f"labutils {command}: {m}", file=sys.stderr))
        if found is None:
            raise CheckpointError(f"no checkpoint in {folder}")
        path, state = found
    else:
        path, state = source, load_checkpoint(source)
    path = Path(path)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path, state, run
