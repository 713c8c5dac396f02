"""Pictures: tensors in [-1, 1] to images, grids, trajectories and GIFs (the course's other_utils).

Every function that draws can also save what it drew (``save_path=``), so a notebook run leaves
its figures in the run's output folder. GIFs are written with Pillow: no ffmpeg needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image


def to_image(tensor: torch.Tensor, to_pil: bool = True):
    """One image in [-1, 1] -> PIL image (or a [0, 1] tensor with ``to_pil=False``).

    ``[C, H, W]`` (C = 1 or 3, e.g. a torchvision ``make_grid``) or a grey ``[H, W]`` (the
    course's ``torch.squeeze(x_t)``).
    """
    tensor = torch.as_tensor(tensor)
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3:
        raise ValueError(f"to_image takes one image [C, H, W] or [H, W]; got shape "
                         f"{tuple(tensor.shape)} (for a batch, pass x[0] or a make_grid)")
    tensor = ((tensor.detach().float().cpu() + 1) / 2).clamp(0, 1)
    if not to_pil:
        return tensor
    array = (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def show_tensor_image(image, ax=None) -> None:
    """Draw the first image of a batch ``[B, C, H, W]`` (or one ``[C, H, W]`` / ``[H, W]``) on ``ax``.

    Like the course, it draws ``image[0]`` of a list too (``show_tensor_image([grid])``).
    """
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("show_tensor_image got an empty list")
        image = image[0]
    image = torch.as_tensor(image)
    if image.dim() == 4:
        image = image[0]
    ax = ax or plt.gca()
    pil = to_image(image)
    ax.imshow(pil, cmap="gray" if pil.mode == "L" else None, vmin=0, vmax=255)


def make_grid(images: torch.Tensor, ncols: int, pad: int = 1, scale: int = 1) -> Image.Image:
    """A batch ``[N, C, H, W]`` in [-1, 1] as one PIL image, ``ncols`` images a row."""
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    canvas = torch.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), 1.0)
    for i, img in enumerate(images.detach().float().cpu()):
        r, k = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top:top + h, left:left + w] = img
    pil = to_image(canvas)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def finish_figure(fig, save_path, show: bool = True) -> None:
    """Save ``fig`` (when ``save_path``), then show it inline in a notebook or close it."""
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, bbox_inches="tight", dpi=100)
    if show and "inline" in matplotlib.get_backend().lower():
        plt.show()
    else:
        plt.close(fig)


def plot_generated_images(noise: torch.Tensor, result: torch.Tensor, save_path=None) -> None:
    """The course's pair: the noise fed in, and what the model made of it."""
    fig, axes = plt.subplots(1, 2, figsize=(4, 2))
    for ax, (title, img) in zip(axes, {"Noise": noise, "Generated Image": result}.items()):
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        show_tensor_image(img, ax)
    finish_figure(fig, save_path)


def plot_image_rows(rows: Sequence[torch.Tensor], titles: Sequence[str], ncols: int = 8,
                    save_path=None, row_labels: Optional[Sequence[str]] = None) -> None:
    """Side-by-side rows, e.g. original / noised / predicted, each a batch ``[N, C, H, W]``."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncols * 0.9, 1.1 * len(rows)), squeeze=False)
    for ax, batch, title in zip(axes[:, 0], rows, titles):
        pil = make_grid(batch[:ncols], ncols)
        ax.imshow(pil, cmap="gray" if pil.mode == "L" else None)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    finish_figure(fig, save_path)


def plot_trajectory(store: Sequence[torch.Tensor], axis_on: bool = False, save_path=None,
                    labels: Optional[Sequence[str]] = None) -> None:
    """Snapshots of one sample along the reverse chain, left (noise) to right (image)."""
    fig, axes = plt.subplots(1, len(store), figsize=(1.1 * len(store), 1.3), squeeze=False)
    for k, (ax, x) in enumerate(zip(axes[0], store)):
        show_tensor_image(x, ax)
        if labels:
            ax.set_title(labels[k], fontsize=7)
        if not axis_on:
            ax.axis("off")
    finish_figure(fig, save_path)


def plot_grid(images: torch.Tensor, ncols: int, row_labels=None, col_labels=None,
              title: Optional[str] = None, save_path=None, cell: float = 0.9) -> None:
    """A labelled grid (e.g. guidance weight x class)."""
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + 1, cell * nrows + 0.5),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]); ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i < len(images):
            show_tensor_image(images[i], ax)
        r, k = divmod(i, ncols)
        if row_labels is not None and k == 0:
            ax.set_ylabel(str(row_labels[r]), fontsize=8, rotation=0, ha="right", va="center")
        if col_labels is not None and r == 0:
            ax.set_title(str(col_labels[k]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    finish_figure(fig, save_path)


def save_animation(xs: Sequence, gif_name, interval: int = 300, repeat_delay: int = 5000) -> Path:
    """Write frames ``xs`` (PIL images, HxW(xC) uint8 arrays, or [-1, 1] tensors) to a looping GIF.

    ``interval`` ms per frame; the last frame stays ``repeat_delay`` ms longer before the loop.
    """
    frames = [_as_pil(x) for x in xs]
    if not frames:
        raise ValueError("save_animation needs at least one frame")
    gif_name = Path(gif_name)
    gif_name.parent.mkdir(parents=True, exist_ok=True)
    durations = [interval] * len(frames)
    durations[-1] += repeat_delay
    # Palette mode keeps grey images grey and the file small.
    frames = [f.convert("RGB").convert("P", palette=Image.ADAPTIVE) for f in frames]
    frames[0].save(gif_name, save_all=True, append_images=frames[1:], duration=durations,
                   loop=0, disposal=1)
    return gif_name


def trajectory_frames(store: torch.Tensor, ncols: int, scale: int = 4) -> List[Image.Image]:
    """Grid frames of a stored trajectory ``[frames, N, C, H, W]`` (for :func:`save_animation`)."""
    return [make_grid(x, ncols, scale=scale) for x in store]


def _as_pil(x) -> Image.Image:
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, torch.Tensor):
        return to_image(x[0] if x.dim() == 4 else x)
    array = np.asarray(x)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze())


def plot_image_grid(images: torch.Tensor, ncols: int, title: Optional[str] = None,
                    save_path=None, size: float = 0.55) -> None:
    """Many small images ``[N, C, H, W]`` as one unlabelled grid (fast: one axes, not N)."""
    nrows = -(-len(images) // ncols)
    fig, ax = plt.subplots(figsize=(size * ncols, size * nrows + (0.4 if title else 0)))
    pil = make_grid(images, ncols)
    ax.imshow(pil, cmap="gray" if pil.mode == "L" else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
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
