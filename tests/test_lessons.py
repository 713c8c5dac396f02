"""What a lesson notebook may hold (notebooks/README.md, "What a lesson shows"): checked per lab.

Every exercise gives a hint and is checked by a message-bearing check (never a bare ``assert`` or
``assert_close``); every animation a notebook makes is shown where it is made; the markdown talks
about diffusion, not about how the project is tested or configured; the diagrams exist and are
drawn by our own script; the introductions say which edition they are.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from labutils.tools.exercises import find_regions, learner_markdown, learner_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
FIGURES = NOTEBOOKS / "figures"
# The notebooks that follow the lesson rules: all five labs.
LESSONS = ("01", "02", "03", "04", "05")
DIAGRAMS = ("unet_skips.png", "forward_reverse.png", "time_embedding.png",
            "groupnorm_vs_batchnorm.png", "bernoulli_mask.png", "guided_step.png")
# Words about the project's machinery that a lesson's text must not use.
IMPLEMENTATION_TALK = re.compile(r"\bCI\b|nbval|pytest|fixture|test suite|LABUTILS_", re.I)


def _nb(lab: str):
    [path] = NOTEBOOKS.glob(f"{lab}_*.ipynb")
    return nbformat.read(path, 4)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("lab", LESSONS)
def test_checks_are_never_bare_asserts(lab):
    for k, cell in enumerate(_nb(lab).cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
        assert not asserts, f"lab {lab}, cell {k}: bare assert on line(s) {asserts}; use check()"
        assert "assert_close" not in cell.source, (
            f"lab {lab}, cell {k}: assert_close says only 'not close'; use check()")


@pytest.mark.parametrize("lab", LESSONS)
def test_every_exercise_has_a_hint_kept_in_the_learner_edition(lab):
    nb = _nb(lab)
    learner = learner_notebook(nb)
    for k, (sol, lrn) in enumerate(zip(nb.cells, learner.cells)):
        if sol.cell_type != "code":
            continue
        for region in find_regions(sol.source):
            assert region.hints, f"lab {lab}, cell {k}, line {region.begin + 1}: no # HINT: line"
            for hint in region.hints:
                assert hint in lrn.source.split("\n"), f"lab {lab}, cell {k}: {hint!r} dropped"


@pytest.mark.parametrize("lab", LESSONS)
def test_every_exercise_is_checked_in_its_cell_or_the_next(lab):
    cells = _code(_nb(lab))
    for i, cell in enumerate(cells):
        if not find_regions(cell.source):
            continue
        here_and_next = cell.source + "\n" + (cells[i + 1].source if i + 1 < len(cells) else "")
        assert re.search(r"\bcheck(_same|_true|_training_loop)?\(", here_and_next), (
            f"lab {lab}: the exercise in code cell {i} is not checked there or in the next cell")


@pytest.mark.parametrize("lab", LESSONS)
def test_every_animation_is_shown_where_it_is_made(lab):
    for k, cell in enumerate(_nb(lab).cells):
        if cell.cell_type == "code" and "save_animation(" in cell.source:
            assert "Image(filename=" in cell.source and "display(" in cell.source, (
                f"lab {lab}, cell {k} saves a GIF without displaying it")


@pytest.mark.parametrize("lab", LESSONS)
def test_markdown_talks_about_diffusion_not_the_machinery(lab):
    for k, cell in enumerate(_nb(lab).cells):
        if cell.cell_type != "markdown":
            continue
        for text in (cell.source, learner_markdown(cell.source)):
            found = IMPLEMENTATION_TALK.findall(text)
            assert not found, f"lab {lab}, markdown cell {k} mentions {sorted(set(found))}"


@pytest.mark.parametrize("lab", LESSONS)
def test_each_edition_names_itself(lab):
    intro = _nb(lab).cells[0].source
    solution = re.sub(r"<!--.*?-->", "", intro)       # what the solution edition renders
    learner = learner_markdown(intro)
    assert "**solution edition**" in solution and "**exercise edition**" not in solution
    assert "**exercise edition**" in learner and "solution edition" not in learner


@pytest.mark.parametrize("lab", LESSONS)
def test_the_diagrams_a_lesson_shows_exist(lab):
    shown = [m for c in _nb(lab).cells if c.cell_type == "markdown"
             for m in re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", c.source)]
    assert shown, f"lab {lab} shows no diagram"
    for rel in shown:
        assert (NOTEBOOKS / rel).is_file(), f"lab {lab} shows {rel}, which does not exist"


def test_draw_py_draws_every_diagram_small(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("draw", FIGURES / "draw.py")
    draw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw)
    monkeypatch.setattr(draw, "HERE", tmp_path)
    for name in ("unet", "forward_reverse", "time_embedding", "group_vs_batch_norm",
                 "bernoulli_mask", "guided_step"):
        getattr(draw, name)()
    for png in DIAGRAMS:
        made = tmp_path / png
        assert made.is_file() and 5_000 < made.stat().st_size < 150_000, png
        assert (FIGURES / png).is_file(), f"{png} is drawn but not committed"


# --- labutils.checks: what a learner sees ----------------------------------------------------

def test_check_says_what_was_expected_and_what_came(capsys):
    import torch
    from labutils.checks import ExerciseCheckError, check
    with pytest.raises(ExerciseCheckError, match=r"^q: expected shape \(2, 4\), got shape \(2, 3\)"
                                                 r"\n  hint: reshape$"):
        check("q", torch.zeros(2, 3), torch.zeros(2, 4), "reshape")
    got = torch.zeros(2, 3)
    got[1, 2] = 5
    with pytest.raises(ExerciseCheckError, match=r"expected 0\.0000 at index \[1, 2\], got 5\.0000 "
                                                 r"\(1 of 6 values differ"):
        check("q", got, torch.zeros(2, 3))
    with pytest.raises(ExerciseCheckError, match=r"^share kept: expected 0\.47, got 0\.22"):
        check("share kept", 0.22, 0.47)
    check("params", 10, 10)
    assert capsys.readouterr().out == "params: as expected (10)\n"


def _tiny_data():
    import torch
    from labutils.data import TensorImageDataset
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randn(64, 1, 8, 8, generator=g), torch.zeros(64, dtype=torch.long))


def _loop(zero_grad: bool):
    import torch.nn.functional as F

    def loop(model, loader, optimizer, epochs, on_step=None):
        losses = []
        model.train()
        for _ in range(epochs):
            for x, _ in loader:
                if zero_grad:
                    optimizer.zero_grad()
                loss = F.mse_loss(model(x), x.flip(-1))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return losses
    return loop


def test_check_training_loop_passes_the_course_loop_and_names_a_missing_zero_grad():
    import torch
    import torch.nn.functional as F
    from labutils.checks import ExerciseCheckError, check_training_loop

    def make():
        return torch.nn.Conv2d(1, 1, 3, padding=1)

    def loss_fn(model, x, y):
        return F.mse_loss(model(x), x.flip(-1))

    args = dict(lr=1e-2, batch_size=16, device="cpu", hint="zero the gradients")
    check_training_loop(_loop(True), make, loss_fn, _tiny_data(), **args)
    with pytest.raises(ExerciseCheckError, match=r"the first 3 losses, against labutils\.train: "
                                                 r"expected \[.*\] \(labutils\.train\), got \[.*\]"
                                                 r"\n  hint: zero the gradients"):
        check_training_loop(_loop(False), make, loss_fn, _tiny_data(), **args)


def test_make_run_puts_the_diagrams_beside_the_executed_notebooks(tmp_path):
    from labutils.tools.runner import copy_diagrams
    copy_diagrams(NOTEBOOKS, tmp_path)
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == sorted(DIAGRAMS)
    copy_diagrams(tmp_path / "nowhere", tmp_path / "empty")   # no figures folder: nothing to do
    assert not (tmp_path / "empty").exists()
