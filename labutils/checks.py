"""The notebooks' exercise checks: each says what was expected, what came, and a hint.

A failed check raises :class:`ExerciseCheckError` (an ``AssertionError``) whose message names the
exercise, the expected and the actual value (or shape, or parameter count) and the hint; a passed
one prints one line. Used by every lab notebook's check cells, so a wrong answer never shows a
bare ``assert`` or ``assert_close``'s generic "Tensor-likes are not close!".
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .config import seed_everything
from .data.batches import BatchLoader, TensorImageDataset
from .models.compat import from_course_state_dict, is_course_layout
from .modules import count_parameters, evaluating


class ExerciseCheckError(AssertionError):
    """An exercise's result is not what was expected; the message says how it differs."""


def _fail(name: str, what: str, hint: Optional[str]) -> None:
    raise ExerciseCheckError(f"{name}: {what}" + (f"\n  hint: {hint}" if hint else ""))


def _short(x) -> str:
    if isinstance(x, torch.Tensor):
        if x.numel() <= 6:
            return str([round(v, 4) for v in x.detach().float().flatten().tolist()])
        return f"tensor of shape {tuple(x.shape)}"
    if isinstance(x, float):
        return f"{x:.4g}"
    return repr(x)


def _compare_tensors(name, got, expected, hint, rtol, atol) -> None:
    if not isinstance(got, torch.Tensor):
        _fail(name, f"expected a tensor of shape {tuple(expected.shape)}, got "
                    f"{type(got).__name__} {_short(got)}", hint)
    if got.shape != expected.shape:
        _fail(name, f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}", hint)
    got_f = got.detach().float().cpu()
    exp_f = expected.detach().float().cpu()
    if torch.allclose(got_f, exp_f, rtol=rtol, atol=atol, equal_nan=True):
        return
    diff = (got_f - exp_f).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    worst = _index(int(diff.argmax()), got_f.shape)
    _fail(name, f"expected {exp_f[worst].item():.4f} at index {list(worst)}, got "
                f"{got_f[worst].item():.4f} ({int((diff > atol + rtol * exp_f.abs()).sum())} of "
                f"{diff.numel()} values differ; largest difference {diff.max().item():.4g})",
          hint)


def _index(flat: int, shape) -> tuple:
    """The multi-dimensional index of the ``flat``-th element of a tensor of ``shape``."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def check(name: str, got, expected, hint: Optional[str] = None, *, rtol: float = 1.3e-6,
          atol: float = 1e-5, quiet: bool = False) -> None:
    """Compare ``got`` with ``expected``: tensors (shape, then values), numbers, sequences of
    them (element by element), or anything else by ``==``. Prints one line when they agree,
    raises :class:`ExerciseCheckError` naming both when they do not."""
    if isinstance(expected, torch.Tensor):
        _compare_tensors(name, got, expected, hint, rtol, atol)
    elif isinstance(expected, (tuple, list)) and not isinstance(got, (str, bytes)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            _fail(name, f"expected {len(expected)} values {_short(expected)}, got {_short(got)}",
                  hint)
        for i, (g, e) in enumerate(zip(got, expected)):
            check(f"{name} [{i}]", g, e, hint, rtol=rtol, atol=atol, quiet=True)
    elif isinstance(expected, float) and isinstance(got, (int, float, torch.Tensor)):
        value = float(got)
        if not abs(value - expected) <= atol + rtol * abs(expected):
            _fail(name, f"expected {expected:.6g}, got {value:.6g}", hint)
    elif got != expected:
        _fail(name, f"expected {_short(expected)}, got {_short(got)}", hint)
    if not quiet:
        print(f"{name}: as expected ({_short(expected)})")


def check_true(name: str, ok: bool, what: str, hint: Optional[str] = None) -> None:
    """A condition that is not a comparison: ``what`` says what was seen, passed or not."""
    if not ok:
        _fail(name, what, hint)
    print(f"{name}: as expected ({what})")


def check_same(mine: nn.Module, theirs: nn.Module, *inputs, hint: Optional[str] = None) -> None:
    """A block built in a notebook against labutils' block of the same role: the same number of
    parameters, and the same output once ``theirs`` holds ``mine``'s weights."""
    name = type(mine).__name__
    check(f"{name} parameters", count_parameters(mine), count_parameters(theirs), hint,
          quiet=True)
    state = mine.state_dict()
    if is_course_layout(state.keys(), theirs):    # the course's layer names: rename them
        state = from_course_state_dict(state, theirs)
    theirs.load_state_dict(state)
    with evaluating(mine), evaluating(theirs):
        check(f"{name} output", mine(*inputs), theirs(*inputs), hint, quiet=True)
    print(f"{name}: {count_parameters(mine):,} parameters, the same output as labutils' "
          f"{type(theirs).__name__}")


TrainLoop = Callable[[nn.Module, object, torch.optim.Optimizer, int], Sequence[float]]


def check_training_loop(my_loop: TrainLoop, make_model: Callable[[], nn.Module], loss_fn,
                        data: TensorImageDataset, *, lr: float, batch_size: int, device,
                        steps: int = 3, fixed_steps: int = 5, hint: Optional[str] = None,
                        seed: int = 0) -> None:
    """A hand-written loop ``my_loop(model, loader, optimizer, epochs) -> losses``:

    1. ``fixed_steps`` steps on one fixed batch must lower its loss (measured with the same
       noise before and after);
    2. its first ``steps`` losses must equal :func:`labutils.train`'s with the same seed, model
       initialisation, batches and Adam optimiser (``loss_fn`` is train's loss for this lab).
    """
    from .training import train

    def fresh():
        seed_everything(seed)
        model = make_model().to(device)
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    # 1. One fixed batch, seen fixed_steps times (one batch per epoch, no shuffle or flip).
    model, optimizer = fresh()
    fixed = TensorImageDataset(data.images[:batch_size], data.labels[:batch_size])
    one_batch = BatchLoader(fixed, batch_size, shuffle=False, augment=None, device=device)
    x, y = fixed.images.to(device), fixed.labels.to(device)

    def fixed_loss() -> float:
        torch.manual_seed(seed + 1)       # the same noise before and after
        with torch.no_grad():
            return float(loss_fn(model, x, y))

    model.train()
    before = fixed_loss()
    my_loop(model, one_batch, optimizer, fixed_steps)
    after = fixed_loss()
    check_true("loss on a fixed batch", after < before,
               f"{before:.4f} before {fixed_steps} steps, {after:.4f} after", hint)

    # 2. The first steps, against labutils.train (fp32 on both sides).
    def loader():
        return BatchLoader(data, batch_size, device=device, max_batches=steps, seed=seed)

    model, optimizer = fresh()
    mine = [float(v) for v in my_loop(model, loader(), optimizer, 1)]
    model, optimizer = fresh()
    theirs = train(model, loss_fn, loader(), optimizer, 1, amp=False, progress=False).losses
    name = f"the first {steps} losses, against labutils.train"
    if len(mine) != len(theirs) or any(abs(m - t) > 1e-5 + 1e-4 * abs(t)
                                       for m, t in zip(mine, theirs)):
        _fail(name, f"expected {_losses(theirs)} (labutils.train), got {_losses(mine)}", hint)
    print(f"the first {steps} losses, against labutils.train: as expected "
          f"({_losses(mine)})")


def _losses(values) -> str:
    return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"
