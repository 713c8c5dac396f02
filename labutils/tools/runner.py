"""Execute the lab notebooks top to bottom and keep the executed copies (``make run``).

The tracked notebooks stay clean: each executed copy, with its outputs, goes to
``<out>/<notebook>.ipynb`` and the figures it saves to ``<out>/<notebook>/``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

from ..config import get_profile, project_dir, timestamp

NOTEBOOK_DIR = project_dir() / "notebooks"


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


def ensure_flowers() -> None:
    """Before labs 04-05: find the flower photos, or build them from TensorFlow's archive.

    Needs internet when nothing is there yet; without it, say what to do and carry on (the
    notebooks then stop with the data module's instructions, or use the ci fixture).
    """
    from ..config import project_dir
    from ..data import DataNotFoundError
    from ..data.flowers import find_flowers, prepare_flowers
    try:
        print(f"Flower photos: {find_flowers()}")
        return
    except DataNotFoundError:
        pass
    dest = project_dir() / "data" / "cropped_flowers"
    print(f"No flower photos yet: building {dest} from TensorFlow's flower_photos.tgz ...")
    try:
        prepare_flowers(dest)
    except Exception as err:  # offline, disk full, ...: the notebooks explain what to do
        print(f"  could not prepare the flower photos ({type(err).__name__}: {err}).\n"
              "  Set LABUTILS_FLOWERS_DIR or run `labutils prepare DIR` where there is internet.")


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
    if any(p.name[:2] in ("04", "05") for p in notebooks):
        ensure_flowers()
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
