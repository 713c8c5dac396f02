"""Interactive views for the notebooks, each with a static figure that stands in for it.

Widgets only render in a live Jupyter front end; under nbval, in an exported HTML page or on
GitHub they show as text. So each notebook also draws the static figure.
"""
from __future__ import annotations

import io
from typing import Optional, Sequence

import torch

from ..config import seeded
from ..diffusion import DDPM
from ..plotting import make_grid, plot_grid


def q_images(ddpm: DDPM, images: torch.Tensor, t: int, seed: int = 0) -> torch.Tensor:
    """``q(x_0, t)`` for a batch ``[N, C, H, W]``, with the same noise draw for every ``t``.

    Fixing the seed makes a slider over ``t`` show one image fading into one noise pattern,
    instead of fresh noise at every position.
    """
    if not 0 <= t < ddpm.T:
        raise ValueError(f"t must lie in [0, {ddpm.T}), got {t}")
    with seeded(seed, ddpm.device):
        x_t, _ = ddpm.q(images.to(ddpm.device),
                        torch.full((len(images),), t, device=ddpm.device))
    return x_t.cpu()


def default_steps(T: int, n: int = 8) -> list:
    """``n`` timesteps from 0 to ``T - 1``, evenly spread."""
    return torch.linspace(0, T - 1, n).round().long().tolist()


def plot_q_steps(ddpm: DDPM, images: torch.Tensor, steps: Optional[Sequence[int]] = None,
                 seed: int = 0, save_path=None) -> None:
    """The static stand-in for :func:`q_explorer`: rows are images, columns timesteps."""
    steps = list(steps) if steps is not None else default_steps(ddpm.T)
    per_step = torch.stack([q_images(ddpm, images, t, seed) for t in steps], 1)  # [N, S, ...]
    plot_grid(per_step.flatten(0, 1), ncols=len(steps), col_labels=[f"t={t}" for t in steps],
              title="q(x_0, t): the same images noised to step t", save_path=save_path)


def _png(images: torch.Tensor, scale: int) -> bytes:
    buf = io.BytesIO()
    make_grid(images, ncols=len(images), pad=1, scale=scale).save(buf, format="PNG")
    return buf.getvalue()


def q_explorer(ddpm: DDPM, images: torch.Tensor, seed: int = 0, scale: int = 6):
    """A slider over ``t`` showing ``q(x_0, t)`` for ``images`` (an ipywidgets ``VBox``)."""
    import ipywidgets as widgets

    slider = widgets.IntSlider(value=0, min=0, max=ddpm.T - 1, step=1, description="t",
                               continuous_update=True,
                               layout=widgets.Layout(width="480px"))
    picture = widgets.Image(format="png")
    caption = widgets.Label()

    def redraw(change=None) -> None:
        t = slider.value
        picture.value = _png(q_images(ddpm, images, t, seed), scale)
        caption.value = (f"t = {t}: sqrt(a_bar) = {float(ddpm.sqrt_a_bar[t]):.3f} of the image, "
                         f"sqrt(1 - a_bar) = {float(ddpm.sqrt_one_minus_a_bar[t]):.3f} of noise")

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, picture, caption])
