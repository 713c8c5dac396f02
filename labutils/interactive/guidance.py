"""Explore a trained guided model: pick a context (class or prompt) and a guidance weight.

The contexts are named by strings (class names in lab 04, prompts in lab 05); ``context_fn``
turns a list of names into the model's context rows (:func:`one_hot_context` for classes,
:func:`text_context` for CLIP prompts). Widgets only render in a live Jupyter
front end, so :func:`guidance_explorer` always draws a static weight x context grid first.
"""
from __future__ import annotations

import io
from typing import Callable, Optional, Sequence

import torch

from ..context import class_indices, one_hot
from ..diffusion import DDPM, GUIDANCE_WEIGHTS, sample_w
from ..plotting import make_grid, plot_grid, wrap_label

ContextFn = Callable[[Sequence[str]], torch.Tensor]


def one_hot_context(class_names: Sequence[str], device=None) -> ContextFn:
    """``context_fn`` for class-conditioned models: names -> one-hot rows over ``class_names``."""
    names = list(class_names)

    def context(chosen: Sequence[str]) -> torch.Tensor:
        return one_hot(class_indices(chosen, names), len(names)).to(device)
    return context


def text_context(encoder, device=None) -> ContextFn:
    """``context_fn`` for lab 05: prompts -> CLIP text encodings (raw, as the course feeds them)."""
    def context(prompts: Sequence[str]) -> torch.Tensor:
        return encoder.encode_text(list(prompts)).to(device)
    return context


def guided_samples(model, ddpm: DDPM, context_fn: ContextFn, name: str, w: float,
                   n: int, img_shape: Sequence[int], device=None) -> torch.Tensor:
    """``n`` samples ``[n, C, H, W]`` of context ``name`` at guidance weight ``w``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    device = device if device is not None else ddpm.device
    context = context_fn([name]).to(device).repeat(n, 1)
    x_0, _ = sample_w(model, ddpm, img_shape, ddpm.T, context, device, w_tests=[w])
    return x_0.cpu()


def plot_guidance_grid(images: torch.Tensor, names: Sequence[str],
                       w_values: Sequence[float] = GUIDANCE_WEIGHTS, title: Optional[str] = None,
                       save_path=None) -> None:
    """A ``sample_w`` result (w-major) as rows of weights and columns of contexts."""
    if len(images) != len(w_values) * len(names):
        raise ValueError(f"{len(images)} images do not fill {len(w_values)} weights x "
                         f"{len(names)} contexts")
    plot_grid(images, ncols=len(names), row_labels=[f"w = {w:g}" for w in w_values],
              col_labels=list(names), title=title, save_path=save_path)


def guidance_explorer(model, ddpm: DDPM, class_names: Sequence[str], context_fn: ContextFn,
                      img_shape: Sequence[int], *, device=None,
                      w_values: Sequence[float] = GUIDANCE_WEIGHTS, n_samples: int = 4,
                      grid: Optional[torch.Tensor] = None, save_path=None, scale: int = 4,
                      widgets: bool = True, free_text: bool = False,
                      labels: Optional[Sequence[str]] = None):
    """Pick a class (or prompt) and a weight ``w``; press *Sample* to see ``n_samples`` of them.

    Always draws the static grid first: ``grid`` (a ``sample_w`` result over ``w_values`` x
    ``class_names``, e.g. the one the notebook already made) or, when None, a fresh one.
    Returns the ipywidgets box, or None when ipywidgets is missing or ``widgets=False``.
    ``free_text=True`` lets the user type any context name (a prompt, for CLIP) instead of
    picking one of ``class_names``; ``labels`` are the grid's column titles (default: the names).
    ``ddpm`` may be a respaced schedule (fewer reverse steps: one click costs
    ``ddpm.T`` forward passes of a batch of ``2 * n_samples``).
    """
    names = list(class_names)
    device = device if device is not None else ddpm.device
    if grid is None:
        grid, _ = sample_w(model, ddpm, img_shape, ddpm.T, context_fn(names).to(device), device,
                           w_tests=list(w_values))
    plot_guidance_grid(grid.cpu(), list(labels) if labels else names, w_values, save_path=save_path,
                       title="guided samples: rows w, columns " +
                             ("classes" if len(names) <= 10 else "contexts"))
    if not widgets:
        return None
    try:
        import ipywidgets as ipw
    except ImportError:
        print("ipywidgets is not installed: the static grid above stands in for the explorer")
        return None

    if free_text:
        choice = ipw.Combobox(value=names[0], options=names, placeholder="type a prompt",
                              description="prompt", ensure_option=False,
                              layout=ipw.Layout(width="420px"))
    else:
        choice = ipw.Dropdown(options=names, description="class")
    weight = ipw.SelectionSlider(options=list(w_values), value=list(w_values)[len(w_values) // 2],
                                 description="w")
    button = ipw.Button(description="Sample", button_style="primary")
    picture = ipw.Image(format="png")
    caption = ipw.Label(("Type a prompt" if free_text else "Pick a class") +
                        " and a guidance weight, then press Sample.")

    def on_click(_=None) -> None:
        name = choice.value.strip()
        if not name:
            caption.value = "type a prompt first"
            return
        button.disabled = True
        caption.value = f"sampling {n_samples} x {name!r} at w = {weight.value:g} ..."
        try:
            images = guided_samples(model, ddpm, context_fn, name, weight.value, n_samples,
                                    img_shape, device)
            buf = io.BytesIO()
            make_grid(images, ncols=n_samples, scale=scale).save(buf, format="PNG")
            picture.value = buf.getvalue()
            caption.value = f"{n_samples} samples of {name!r} at w = {weight.value:g}"
        except ValueError as err:  # e.g. a prompt longer than CLIP's context
            caption.value = f"error: {err}"
        finally:
            button.disabled = False

    button.on_click(on_click)
    return ipw.VBox([ipw.HBox([choice, weight, button]), picture, caption])


def prompt_explorer(model, ddpm: DDPM, encoder, prompts: Sequence[str],
                    img_shape: Sequence[int], *, device=None,
                    w_values: Sequence[float] = GUIDANCE_WEIGHTS, n_samples: int = 4,
                    grid: Optional[torch.Tensor] = None, save_path=None, scale: int = 4):
    """Lab 05: type a prompt, pick ``w``, press *Sample*. The static w x prompt grid is drawn
    first (it stands in where widgets do not render). Returns the widget box, or None."""
    device = device if device is not None else ddpm.device
    return guidance_explorer(model, ddpm, list(prompts), text_context(encoder, device), img_shape,
                             device=device, w_values=w_values, n_samples=n_samples, grid=grid,
                             save_path=save_path, scale=scale, free_text=True,
                             labels=[wrap_label(p, 18) for p in prompts])
