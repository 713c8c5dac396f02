"""Execute the lab notebooks top to bottom and keep the executed copies (``make run``).

The tracked notebooks stay clean: each executed copy, with its outputs, goes to
``<out>/<notebook>.ipynb`` and the figures it saves to ``<out>/<notebook>/``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

from .config import get_profile, timestamp

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def find_notebooks(directory: Path = NOTEBOOK_DIR, select: Optional[Sequence[str]] = None
                   ) -> List[Path]:
    """The lab notebooks in course order; ``select`` keeps those whose name starts with one of it."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no notebook folder at {directory} (run from a checkout of the "
                                "project, or pass --notebooks DIR)")
    found = sorted(p for p in directory.glob("*.ipynb") if p.name[:2].isdigit())
    if select:
        found = [p for p in found if any(p.name.startswith(s) for s in select)]
        if not found:
            raise FileNotFoundError(f"no notebook in {directory} matches {list(select)}")
    return found


def run_notebooks(out: Optional[Path] = None, profile: Optional[str] = None,
                  select: Optional[Sequence[str]] = None, directory: Path = NOTEBOOK_DIR,
                  timeout: int = 6 * 3600) -> Path:
    """Run the notebooks in order under ``profile``; returns the output folder.

    A failing notebook is still written (with the error in its outputs) before we stop, so
    nothing a run produced is lost.
    """
    import nbformat
    from nbclient import NotebookClient

    profile = get_profile(profile)
    out = Path(out) if out else Path("runs") / timestamp()
    out.mkdir(parents=True, exist_ok=True)
    notebooks = find_notebooks(directory, select)
    print(f"Running {len(notebooks)} notebooks under profile '{profile}' -> {out}/")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        env_before = dict(os.environ)
        os.environ["LABUTILS_PROFILE"] = profile
        os.environ["LABUTILS_OUTPUT_DIR"] = str((out / path.stem).resolve())
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(directory)}}).execute()
        finally:
            os.environ.clear()
            os.environ.update(env_before)
            nbformat.write(nb, out / path.name)
            print(f"  {path.name}: {time.perf_counter() - start:.0f} s")
    return out
