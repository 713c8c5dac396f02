"""The exercises: the marker convention, the learner edition and how a learner notebook fails.

The solution edition (the committed notebooks) runs under nbval like every notebook; here the
learner edition is generated (``labutils exercises``), every region must be replaced, and
executing a learner notebook must stop with ``NameError`` for ``FIXME`` at the first exercise.
"""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from labutils.tools.cli import main
from labutils.tools.exercises import (PLACEHOLDER, ExerciseError, count_exercises, find_regions,
                                      learner_markdown, learner_notebook, learner_source,
                                      write_learner_edition)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LABS = ("01", "02", "03", "04", "05")
MARKERS = ("# BEGIN EXERCISE", "# END EXERCISE", "# LEARNER:")


def _notebook(lab: str) -> Path:
    [path] = NOTEBOOKS.glob(f"{lab}_*.ipynb")
    return path


# --- the convention on one cell ------------------------------------------------------------------

SOLVED = """\
def f(x):
    y = 2 * x
    # BEGIN EXERCISE: double it
    # LEARNER: z = FIXME * y
    # LEARNER:     # an indented learner line keeps its indentation
    z = 2 * y
    # END EXERCISE
    return z
"""


def test_a_region_becomes_its_learner_lines_with_their_indentation():
    assert learner_source(SOLVED) == (
        "def f(x):\n"
        "    y = 2 * x\n"
        "    z = FIXME * y\n"
        "        # an indented learner line keeps its indentation\n"
        "    return z\n")


def test_a_region_without_learner_lines_becomes_one_fixme_line():
    src = "a = 1\n    # BEGIN EXERCISE\n    b = a + 1\n    # END EXERCISE\nprint(b)"
    assert learner_source(src) == f"a = 1\n    {PLACEHOLDER}\nprint(b)"


def test_hint_lines_stay_above_the_learner_lines():
    src = ("    # BEGIN EXERCISE\n    # HINT: twice y\n    # LEARNER: z = FIXME\n    z = 2 * y\n"
           "    # END EXERCISE")
    assert learner_source(src) == "    # HINT: twice y\n    z = FIXME"
    assert find_regions(src)[0].hints == ("    # HINT: twice y",)
    no_learner = "# BEGIN EXERCISE\n# HINT: add one\nb = a + 1\n# END EXERCISE"
    assert learner_source(no_learner) == f"# HINT: add one\n{PLACEHOLDER}"


def test_markdown_edition_lines():
    md = ("# Title\n<!-- SOLUTION -->This is the solution edition.\n"
          "<!-- LEARNER: This is the **exercise edition**. -->\nMore text.")
    assert learner_markdown(md) == "# Title\nThis is the **exercise edition**.\nMore text."
    assert learner_markdown("plain <!-- LEARNER: x --> inline") == "plain <!-- LEARNER: x --> inline"


def test_cells_without_regions_are_left_alone():
    src = "x = 1  # BEGIN EXERCISE is only a marker at the start of a line\nprint(x)"
    assert learner_source(src) == src
    assert find_regions(src) == []


@pytest.mark.parametrize("src, message", [
    ("# BEGIN EXERCISE\nx = 1", "without # END"),
    ("x = 1\n# END EXERCISE", "without # BEGIN"),
    ("# BEGIN EXERCISE\n# BEGIN EXERCISE\n# END EXERCISE\n# END EXERCISE", "inside an open"),
    ("# LEARNER: x = FIXME\nx = 1", "outside an exercise region"),
])
def test_malformed_regions_are_an_error_naming_the_line(src, message):
    with pytest.raises(ExerciseError, match=message):
        learner_source(src, "nb.ipynb, cell 3")


# --- the lab notebooks ---------------------------------------------------------------------------

def test_every_lab_has_exercises_and_labs_02_03_at_least_the_courses_six():
    counts = {lab: count_exercises(nbformat.read(_notebook(lab), 4)) for lab in LABS}
    assert all(n >= 1 for n in counts.values()), counts
    assert counts["02"] + counts["03"] >= 6, counts


def _fixme_is_only_read(source: str) -> bool:
    """FIXME appears, and only where a value is read (never assigned, never a parameter)."""
    tree = ast.parse(source)
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "FIXME"]
    params = [a for a in ast.walk(tree) if isinstance(a, ast.arg) and a.arg == "FIXME"]
    return bool(names) and all(isinstance(n.ctx, ast.Load) for n in names) and not params


@pytest.mark.parametrize("lab", LABS)
def test_learner_edition_replaces_every_region(lab):
    solution = nbformat.read(_notebook(lab), 4)
    learner = learner_notebook(solution, _notebook(lab).name)
    assert len(learner.cells) == len(solution.cells)
    n_regions = 0
    for sol, lrn in zip(solution.cells, learner.cells):
        if sol.cell_type != "code":
            assert lrn.source == learner_markdown(sol.source)
            continue
        regions = find_regions(sol.source)
        if not regions:
            assert lrn.source == sol.source
            continue
        n_regions += len(regions)
        assert not any(m in lrn.source for m in MARKERS), lrn.source
        assert _fixme_is_only_read(lrn.source), lrn.source
        kept = {line.strip() for line in lrn.source.split("\n")}
        outside = {line.strip() for i, line in enumerate(sol.source.split("\n"))
                   if not any(r.begin <= i <= r.end for r in regions)}
        for region in regions:
            learner_lines = {line.strip() for line in region.learner}
            for line in region.solution:
                s = line.strip()
                if s and s not in learner_lines and s not in outside:
                    assert s not in kept, f"solution line survived: {s!r}"
    assert n_regions >= 1


def test_labutils_exercises_writes_the_learner_edition(tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in NOTEBOOKS.glob("*.ipynb")}
    out = tmp_path / "learner"
    assert main(["exercises", str(out)]) == 0
    assert "exercises in" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.ipynb")) == sorted(before)
    for path in out.glob("*.ipynb"):
        nb = nbformat.read(path, 4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert not any(m in text for m in MARKERS), path.name
        assert all(not c.outputs and c.execution_count is None
                   for c in nb.cells if c.cell_type == "code")
        if path.name[:2] in LABS:
            assert "FIXME" in text, path.name
    # The solutions are never touched, and the command refuses to write over them.
    assert main(["exercises", str(NOTEBOOKS)]) == 2
    assert "overwrite the solutions" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in NOTEBOOKS.glob("*.ipynb")} == before


def test_labs_option_picks_notebooks(tmp_path):
    written = write_learner_edition(tmp_path, names=["02"])
    assert [p.name for p in written] == [_notebook("02").name]
    assert written[tmp_path / _notebook("02").name] == count_exercises(
        nbformat.read(_notebook("02"), 4))


# --- executing a learner notebook ----------------------------------------------------------------

def _execute(nb, cwd: Path):
    """Run ``nb`` with nbclient; ``(index of the failing cell or None, its error output)``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except CellExecutionError:
        for i, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                if output.output_type == "error":
                    return i, output
        raise
    return None, None


def test_a_small_learner_notebook_fails_at_the_fixme_and_the_solution_runs(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 20"),
                nbformat.v4.new_code_cell("# BEGIN EXERCISE\n# LEARNER: y = x + FIXME\n"
                                          "y = x + 1\n# END EXERCISE"),
                nbformat.v4.new_code_cell("assert y == 21")]
    index, error = _execute(learner_notebook(nb), tmp_path)
    assert index == 1 and error.ename == "NameError" and "FIXME" in error.evalue
    assert _execute(nb, tmp_path) == (None, None)


def test_the_learner_edition_of_lab_02_fails_at_its_first_fixme(tmp_path):
    """Under the ci profile (conftest): every cell before the first exercise runs, then a
    NameError for FIXME stops it, in the first cell that has one."""
    learner = learner_notebook(nbformat.read(_notebook("02"), 4))
    first = next(i for i, c in enumerate(learner.cells)
                 if c.cell_type == "code" and "FIXME" in c.source)
    index, error = _execute(learner, tmp_path)
    assert (index, error.ename) == (first, "NameError"), (index, error)
    assert "FIXME" in error.evalue
