"""Draw the lessons' diagrams into this folder: ``python notebooks/figures/draw.py``.

Our own pictures, made with matplotlib (no image of the course is used): the U-Net with its skip
connections, the forward and reverse processes, the time embedding, GroupNorm against BatchNorm,
the Bernoulli context mask and the guided reverse step. The PNGs are committed next to this
script; rerun it after changing a drawing.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

HERE = Path(__file__).resolve().parent
DPI = 100
DOWN, UP, MID, EMB = "#9ecae1", "#fdae6b", "#c7e9c0", "#dadaeb"


def _box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                fc=color, ec="black", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, color="black", style="-|>", ls="-", rad=0.0, lw=1.0):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color,
                                 lw=lw, linestyle=ls, connectionstyle=f"arc3,rad={rad}"))


def _canvas(w, h, xlim, ylim):
    fig, ax = plt.subplots(figsize=(w, h))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def _save(fig, name):
    fig.savefig(HERE / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print("wrote", HERE / name)


def unet():
    """Lab 01's U-Net: sizes down, sizes up, one skip connection per up block."""
    fig, ax = _canvas(7.5, 3.6, (0, 10.2), (0, 5.2))
    down = [(1.2, 4.4, "down0\n16 x 16 x 16"), (2.2, 3.1, "down1\n32 x 8 x 8"),
            (3.2, 1.8, "down2\n64 x 4 x 4")]
    up = [(6.8, 1.8, "up0\n64 x 4 x 4"), (7.8, 3.1, "up1\n32 x 8 x 8"),
          (8.8, 4.4, "up2\n16 x 16 x 16")]
    _box(ax, 0.25, 4.4, 0.4, 0.5, "x", "white", 9)
    for x, y, t in down:
        _box(ax, x, y, 1.2, 0.75, t, DOWN, 7.5)
    _box(ax, 5.0, 0.6, 1.6, 0.7, "flatten -> dense\nbottleneck", MID, 8)
    for x, y, t in up:
        _box(ax, x, y, 1.2, 0.75, t, UP, 7.5)
    _box(ax, 9.85, 4.4, 0.45, 0.5, "out", "white", 8)
    _arrow(ax, (0.45, 4.4), (0.6, 4.4))
    _arrow(ax, (1.4, 4.0), (2.0, 3.5)); _arrow(ax, (2.4, 2.7), (3.0, 2.2))
    _arrow(ax, (3.4, 1.4), (4.2, 0.7)); _arrow(ax, (5.8, 0.7), (6.6, 1.4))
    _arrow(ax, (7.0, 2.2), (7.6, 2.7)); _arrow(ax, (8.0, 3.5), (8.6, 4.0))
    _arrow(ax, (9.4, 4.4), (9.62, 4.4))
    # The skips: each up block gets the down output of the size it starts from.
    _arrow(ax, (3.7, 1.95), (7.3, 2.95), "tab:red", ls="--", rad=-0.15)
    _arrow(ax, (2.7, 3.25), (8.3, 4.25), "tab:red", ls="--", rad=-0.12)
    ax.text(5.5, 2.75, "skip: concatenate down2 to up1's input", color="tab:red",
            ha="center", fontsize=8)
    ax.text(5.5, 4.3, "skip: concatenate down1 to up2's input", color="tab:red",
            ha="center", fontsize=8)
    ax.text(2.2, 0.5, "MaxPool halves\nthe size", ha="center", fontsize=8, color="grey")
    ax.text(8.0, 0.5, "ConvTranspose2d\ndoubles it", ha="center", fontsize=8, color="grey")
    _save(fig, "unet_skips.png")


def _garment(size=16):
    """A simple shirt-like silhouette in [-1, 1] (drawn here, not taken from any data set)."""
    img = -np.ones((size, size))
    img[3:14, 5:11] = 0.8          # body
    img[3:8, 2:5] = 0.6            # sleeves
    img[3:8, 11:14] = 0.6
    img[3:5, 7:9] = -0.6           # collar
    return img


def forward_reverse():
    """x_0 -> x_T by q (adding noise), x_T -> x_0 by the model's reverse steps."""
    T = 150
    a_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    rng = np.random.default_rng(0)
    x0, noise = _garment(), rng.standard_normal((16, 16))
    steps = [0, 30, 70, 110, 149]
    fig, axes = plt.subplots(1, len(steps), figsize=(7.5, 2.3))
    for ax, t in zip(axes, steps):
        ax.imshow(np.sqrt(a_bar[t]) * x0 + np.sqrt(1 - a_bar[t]) * noise, cmap="gray",
                  vmin=-2, vmax=2)
        ax.set_title(f"$x_{{{t}}}$" if t else "$x_0$", fontsize=10)
        ax.set_xticks([]); ax.set_yticks([])
    fig.subplots_adjust(top=0.72, bottom=0.2, wspace=0.35)
    fig.text(0.5, 0.93, "forward process q: add a little noise at each step  ->",
             ha="center", fontsize=10, color="tab:blue")
    fig.text(0.5, 0.05, "<-  reverse process: the model estimates the noise, one step removes "
             "some of it", ha="center", fontsize=10, color="tab:red")
    _save(fig, "forward_reverse.png")


def time_embedding():
    """t -> t / T -> EmbedBlock -> [N, C, 1, 1], added to the feature maps of the up path."""
    fig, ax = _canvas(7.5, 2.6, (0, 10), (0, 3.4))
    _box(ax, 0.6, 2.6, 0.9, 0.55, "t", "white")
    _box(ax, 2.0, 2.6, 1.1, 0.55, "t / T", "white")
    _box(ax, 4.2, 2.6, 2.4, 0.7, "EmbedBlock\nLinear, ReLU, Linear", EMB, 8)
    _box(ax, 7.2, 2.6, 2.4, 0.7, "Unflatten to\n[N, C, 1, 1]", EMB, 8)
    for a, b in [((1.05, 2.6), (1.45, 2.6)), ((2.55, 2.6), (3.0, 2.6)),
                 ((5.4, 2.6), (6.0, 2.6))]:
        _arrow(ax, a, b)
    _box(ax, 2.5, 0.7, 1.6, 0.7, "up0's output\n[N, C, H, W]", UP, 8)
    _box(ax, 5.0, 0.7, 0.5, 0.5, "+", "white", 12)
    _box(ax, 7.5, 0.7, 1.6, 0.7, "into up1\n(with its skip)", UP, 8)
    _arrow(ax, (3.3, 0.7), (4.75, 0.7)); _arrow(ax, (5.25, 0.7), (6.7, 0.7))
    _arrow(ax, (7.2, 2.25), (5.1, 0.95), rad=0.2)
    ax.text(7.7, 1.3, "broadcast over H and W:\nthe same number added to\nevery pixel "
            "of a channel", fontsize=8, color="grey")
    _save(fig, "time_embedding.png")


def group_vs_batch_norm():
    """Which values are normalised together: BatchNorm, one channel over the batch; GroupNorm,
    one image's group of channels."""
    n, c, groups = 4, 8, 2
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.8))
    for ax, title in zip(axes, ["BatchNorm: one channel, all images",
                                "GroupNorm: one image, one group of channels"]):
        for i in range(n):
            for j in range(c):
                hit = (j == 2) if "Batch" in title else (i == 1 and j < c // groups)
                ax.add_patch(Rectangle((j, n - 1 - i), 0.92, 0.92,
                                       fc="tab:orange" if hit else "#eeeeee", ec="grey"))
        ax.set_xlim(-0.2, c + 0.1); ax.set_ylim(-0.9, n + 0.1)
        ax.set_aspect("equal"); ax.axis("off")
        ax.set_title(title, fontsize=9)
        ax.text(c / 2, -0.6, "channels C (each square: all H x W pixels)", ha="center",
                fontsize=8)
        ax.text(-0.45, n / 2, "images N", rotation=90, va="center", ha="center", fontsize=8)
    _save(fig, "groupnorm_vs_batchnorm.png")


def bernoulli_mask():
    """One-hot context times a per-image Bernoulli mask: dropped rows become 'no context'."""
    rng = np.random.default_rng(3)
    n, k, p_drop = 8, 10, 0.25
    labels = rng.integers(0, k, n)
    c = np.eye(k)[labels]
    keep = np.array([1, 1, 0, 1, 1, 1, 0, 1])   # a draw of Bernoulli(1 - p) per image
    mask = np.repeat(keep[:, None], k, axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    for ax, m, title in zip(axes, [c, mask, c * mask],
                            ["c: one-hot class", f"c_mask ~ Bernoulli(1 - {p_drop})",
                             "c * c_mask"]):
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1.3)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]); ax.set_yticks(range(n))
        ax.set_yticklabels([f"image {i}" for i in range(n)] if m is c else [], fontsize=7)
        ax.set_xlabel("class", fontsize=8)
    axes[2].annotate("no context:\nlearns the\nunconditional\nnoise", xy=(9.4, 2), xytext=(10.5, 4),
                     fontsize=7, annotation_clip=False,
                     arrowprops=dict(arrowstyle="->", color="tab:red"), color="tab:red")
    _save(fig, "bernoulli_mask.png")


def guided_step():
    """e_t = (1 + w) e_cond - w e_uncond: go past the conditional estimate, away from the
    unconditional one."""
    fig, ax = _canvas(6.0, 3.0, (-0.3, 6.2), (-0.3, 3.2))
    e_u, e_c, w = np.array([3.0, 0.6]), np.array([3.2, 1.6]), 1.5
    e_g = (1 + w) * e_c - w * e_u
    for vec, name, color in [(e_u, "e_uncond (context dropped)", "tab:blue"),
                             (e_c, "e_cond (class asked for)", "tab:green"),
                             (e_g, f"guided, w = {w}", "tab:red")]:
        _arrow(ax, (0, 0), tuple(vec), color, lw=1.6)
        ax.text(vec[0] + 0.1, vec[1], name, color=color, fontsize=9, va="center")
    _arrow(ax, tuple(e_u), tuple(e_g), "grey", ls=":")
    ax.text(0.1, 2.95, "e_t = (1 + w) * e_cond - w * e_uncond", fontsize=10)
    ax.text(0.1, 2.6, "then the usual reverse step with e_t", fontsize=9, color="grey")
    _save(fig, "guided_step.png")


if __name__ == "__main__":
    unet()
    forward_reverse()
    time_embedding()
    group_vs_batch_norm()
    bernoulli_mask()
    guided_step()
