"""Previews while a model trains: ``on_step`` hooks for :func:`labutils.train`.

Each hook switches the model to eval mode for the preview (BatchNorm uses its running
statistics, no gradients) and back to training mode afterwards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import torch

from ..diffusion import DDPM
from ..modules import evaluating
from ..plotting import plot_image_rows

OnStep = Callable[[int, int, float], None]


def denoise_triples(model, images: torch.Tensor, noise_fn: Callable[[torch.Tensor], torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lab 01's picture: ``(original, noised, predicted)`` for a batch of clean images."""
    with evaluating(model):
        noised = noise_fn(images)
        return images, noised, model(noised)


def plot_denoise_triples(model, images, noise_fn, title: str = "", save_path=None) -> None:
    original, noised, predicted = denoise_triples(model, images, noise_fn)
    plot_image_rows([original, noised, predicted],
                    [f"{title}original".strip(), "noised", "predicted"],
                    ncols=len(images), save_path=save_path)


def _every(every: int, save_dir: Optional[Path],
           draw: Callable[[int, Optional[Path]], None]) -> Optional[OnStep]:
    """An ``on_step`` hook that logs and calls ``draw(step, png_path)`` every ``every`` steps."""
    if every <= 0:
        return None

    def on_step(step: int, epoch: int, loss: float) -> None:
        if step % every == 0:
            path = Path(save_dir) / f"preview_step{step:05d}.png" if save_dir else None
            print(f"epoch {epoch} | step {step:05d} | loss {loss:.4f}")
            draw(step, path)
    return on_step


def denoising_preview(model, images: torch.Tensor, noise_fn, every: int,
                      save_dir: Optional[Path] = None) -> Optional[OnStep]:
    """Every ``every`` steps, draw (and save) original / noised / predicted; ``every=0``: none."""
    return _every(every, save_dir, lambda step, path: plot_denoise_triples(
        model, images, noise_fn, f"step {step}: ", save_path=path))


def sample_row(model, sampler: DDPM, shape: Sequence[int], *model_args) -> torch.Tensor:
    """Samples of ``shape`` ``[N, C, H, W]`` from pure noise, the model in eval mode."""
    return sampler.sample(model, shape, *model_args)[0]


def sampling_preview(model, sampler: DDPM, every: int, shape: Sequence[int],
                     save_dir: Optional[Path] = None) -> Optional[OnStep]:
    """Every ``every`` steps, sample a row of images with ``sampler`` and draw (and save) it."""
    return _every(every, save_dir, lambda step, path: plot_image_rows(
        [sample_row(model, sampler, shape)], [f"samples at step {step}"], ncols=shape[0],
        save_path=path))
