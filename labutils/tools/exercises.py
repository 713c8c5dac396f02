"""The learner edition of the lab notebooks: ``labutils exercises OUT_DIR``.

The committed notebooks are the *solution* edition. In their code cells an exercise is a region
from a line ``# BEGIN EXERCISE`` to a line ``# END EXERCISE`` (optional text may follow either
marker). Lines inside a region that start with ``# LEARNER: `` (after any indentation) give the
learner's version: the prefix is stripped, the indentation before ``#`` is kept, and the blanks
are the undefined name ``FIXME``, as in the course. The learner edition replaces the whole region
(markers, learner lines and solution) by those lines, or by a single ``FIXME  # your code here``
line at the marker's indentation when the region has none. Lines ``# HINT: ...`` inside a region
are kept, as they are, above the learner's lines: every exercise gives one. In markdown cells a
line starting ``<!-- SOLUTION -->`` is dropped and a line ``<!-- LEARNER: text -->`` (invisible in
the solution edition) becomes ``text``: that is how each introduction says which edition it is.
Every other cell is copied as it is; outputs are cleared. Executing a learner notebook then stops
with ``NameError: name 'FIXME' is not defined`` at the first exercise not yet done.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

BEGIN = "# BEGIN EXERCISE"
END = "# END EXERCISE"
LEARNER = "# LEARNER:"
HINT = "# HINT:"
PLACEHOLDER = "FIXME  # your code here"

_MARKER = re.compile(r"^(?P<indent>\s*)(?P<tag># (?:BEGIN|END) EXERCISE)\b.*$")
_LEARNER = re.compile(r"^(?P<indent>\s*)# LEARNER:(?: (?P<code>.*))?$")
_HINT = re.compile(r"^\s*# HINT:")
_MD_SOLUTION = "<!-- SOLUTION -->"
_MD_LEARNER = re.compile(r"^<!-- LEARNER: (?P<text>.*?) -->\s*$")


class ExerciseError(ValueError):
    """A malformed region: unbalanced or nested markers, or a learner line outside a region."""


class Region(NamedTuple):
    """One exercise region of a cell: line numbers (0-based, markers included) and its parts."""

    begin: int
    end: int
    learner: List[str]     # the learner's lines, prefix stripped
    solution: List[str]    # the other lines between the markers
    hints: Tuple[str, ...] = ()   # the ``# HINT:`` lines, as they are


def find_regions(source: str, where: str = "cell") -> List[Region]:
    """The exercise regions of one cell's source, in order; :class:`ExerciseError` if malformed."""
    regions: List[Region] = []
    lines = source.split("\n")
    start: Optional[int] = None
    learner: List[str] = []
    solution: List[str] = []
    hints: List[str] = []
    for i, line in enumerate(lines):
        marker = _MARKER.match(line)
        tag = marker.group("tag") if marker else None
        if tag == BEGIN:
            if start is not None:
                raise ExerciseError(f"{where}, line {i + 1}: {BEGIN} inside an open region "
                                    f"(opened on line {start + 1})")
            start, learner, solution, hints = i, [], [], []
        elif tag == END:
            if start is None:
                raise ExerciseError(f"{where}, line {i + 1}: {END} without {BEGIN}")
            regions.append(Region(start, i, learner, solution, tuple(hints)))
            start = None
        elif start is not None:
            m = _LEARNER.match(line)
            if m:
                learner.append(m.group("indent") + (m.group("code") or ""))
            elif _HINT.match(line):
                hints.append(line)
            else:
                solution.append(line)
        elif _LEARNER.match(line):
            raise ExerciseError(f"{where}, line {i + 1}: a {LEARNER} line outside an exercise "
                                "region")
    if start is not None:
        raise ExerciseError(f"{where}, line {start + 1}: {BEGIN} without {END}")
    return regions


def learner_source(source: str, where: str = "cell") -> str:
    """``source`` with every exercise region replaced by the learner's lines."""
    regions = find_regions(source, where)
    if not regions:
        return source
    lines = source.split("\n")
    out: List[str] = []
    pos = 0
    for region in regions:
        out.extend(lines[pos:region.begin])
        out.extend(region.hints)
        if region.learner:
            out.extend(region.learner)
        else:
            indent = _MARKER.match(lines[region.begin]).group("indent")
            out.append(indent + PLACEHOLDER)
        pos = region.end + 1
    out.extend(lines[pos:])
    return "\n".join(out)


def learner_markdown(source: str) -> str:
    """A markdown cell's learner text: ``<!-- SOLUTION -->`` lines dropped, ``<!-- LEARNER: x -->``
    lines shown as ``x``."""
    out = []
    for line in source.split("\n"):
        if line.startswith(_MD_SOLUTION):
            continue
        m = _MD_LEARNER.match(line)
        out.append(m.group("text") if m else line)
    return "\n".join(out)


def count_exercises(nb) -> int:
    """How many exercise regions a notebook (an ``nbformat`` node) holds."""
    return sum(len(find_regions(c.source)) for c in nb.cells if c.cell_type == "code")


def learner_notebook(nb, name: str = "notebook"):
    """A learner-edition copy of ``nb`` (an ``nbformat`` node): regions replaced, outputs cleared."""
    import copy
    nb = copy.deepcopy(nb)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = learner_markdown(cell.source)
        if cell.cell_type != "code":
            continue
        cell.source = learner_source(cell.source, f"{name}, cell {k + 1}")
        cell.outputs = []
        cell.execution_count = None
    return nb


def write_learner_edition(out_dir, notebook_dir=None,
                          names: Optional[Sequence[str]] = None) -> Dict[Path, int]:
    """Write the learner edition of every ``*.ipynb`` in ``notebook_dir`` into ``out_dir``.

    Returns ``{written path: number of exercises}``. Every notebook is checked before any file
    is written, and ``out_dir`` may not be the notebook folder itself (that would overwrite the
    solutions).
    """
    import nbformat
    from .runner import NOTEBOOK_DIR

    src = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
    out = Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"no notebook folder {src}")
    paths = sorted(src.glob("*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in names)]
    if not paths:
        raise FileNotFoundError(f"no notebooks in {src}" + (f" matching {list(names)}"
                                                            if names else ""))
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"{out} is the notebook folder itself: the learner edition would "
                         "overwrite the solutions; pick another folder")
    editions = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        editions.append((path.name, learner_notebook(nb, path.name), count_exercises(nb)))
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[Path, int] = {}
    for name, nb, n in editions:
        target = out / name
        nbformat.write(nb, target)
        written[target] = n
    return written


def run_exercises(out_dir, notebook_dir=None, names: Optional[Sequence[str]] = None) -> int:
    """``labutils exercises``: write the learner edition, print one line per notebook."""
    written = write_learner_edition(out_dir, notebook_dir, names)
    for path, n in written.items():
        print(f"{path}: {n} exercise{'s' if n != 1 else ''}")
    total = sum(written.values())
    print(f"learner edition: {len(written)} notebooks, {total} exercises in {Path(out_dir)} "
          "(fill in every FIXME; the notebooks in the checkout are the solutions)")
    return 0
