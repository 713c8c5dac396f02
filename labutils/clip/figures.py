"""Lab 05's picture: the image x caption cosine-similarity matrix."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch
from PIL import Image

from ..plotting import finish_figure, to_image, wrap_label


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


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        return to_image(image)
    with Image.open(image) as im:
        return im.convert("RGB")
