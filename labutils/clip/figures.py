"""Lab 05's pictures: the image x caption similarity matrix, and a prompt explorer."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch
from PIL import Image

from ..diffusion import DDPM, GUIDANCE_WEIGHTS
from ..explorers import ContextFn, guidance_explorer
from ..plotting import finish_figure


def plot_similarity(images: Sequence, captions: Sequence[str], sims: torch.Tensor,
                    title: Optional[str] = None, save_path=None) -> None:
    """Images across the top, captions down the side, cosine similarities in the cells."""
    sims = sims.detach().float().cpu()
    if sims.shape != (len(images), len(captions)):
        raise ValueError(f"similarities {tuple(sims.shape)} do not match {len(images)} images x "
                         f"{len(captions)} captions")
    n_img, n_cap = len(images), len(captions)
    fig = plt.figure(figsize=(1.6 * n_img + 3.2, 1.6 + 0.7 * n_cap))
    grid = fig.add_gridspec(2, n_img, height_ratios=[1.6, 0.7 * n_cap], hspace=0.05)
    for k, im in enumerate(images):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(_pil(im))
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(sims.T, cmap="viridis", aspect="auto")
    for i in range(n_img):
        for j in range(n_cap):
            ax.text(i, j, f"{sims[i, j]:.2f}", ha="center", va="center", color="w", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks(range(n_cap), [wrap_label(c) for c in captions], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    finish_figure(fig, save_path)


def wrap_label(text: str, width: int = 28) -> str:
    """A prompt broken into lines for a figure label (CLIP reads line breaks as spaces)."""
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        from ..plotting import to_image
        return to_image(image)
    with Image.open(image) as im:
        return im.convert("RGB")


def text_context(encoder, device=None) -> ContextFn:
    """``context_fn`` for lab 05: prompts -> CLIP text encodings (raw, as the course feeds them)."""
    def context(prompts: Sequence[str]) -> torch.Tensor:
        return encoder.encode_text(list(prompts)).to(device)
    return context


def prompt_explorer(model, ddpm: DDPM, encoder, prompts: Sequence[str],
                    img_shape: Sequence[int], *, device=None,
                    w_values: Sequence[float] = GUIDANCE_WEIGHTS, n_samples: int = 4,
                    grid: Optional[torch.Tensor] = None, save_path=None, scale: int = 4):
    """Type a prompt, pick ``w``, press *Sample*. The static w x prompt grid is drawn first
    (it stands in where widgets do not render). Returns the widget box, or None."""
    device = device if device is not None else ddpm.device
    return guidance_explorer(model, ddpm, list(prompts), text_context(encoder, device), img_shape,
                             device=device, w_values=w_values, n_samples=n_samples, grid=grid,
                             save_path=save_path, scale=scale, free_text=True,
                             labels=[wrap_label(p, 18) for p in prompts])
