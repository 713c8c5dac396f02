"""The course's U-Nets.

- :class:`BasicUNet`: labs 01 (``T=None``: a plain denoiser) and 02 (``T`` given: time-aware).
- :class:`UNet`: labs 03-06 (GroupNorm, GELU, rearrange pooling, sinusoidal time, optional
  context for classifier-free guidance).

Time-aware models take integer timesteps ``t`` in ``[0, T)`` and divide by ``T`` themselves.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .blocks import (BasicDownBlock, BasicUpBlock, ConvBNReLU, DenseBottleneck, DownBlock,
                     EmbedBlock, GELUConvBlock, ResidualConvBlock, SinusoidalPositionEmbedBlock,
                     UpBlock)
from .compat import register_course_loading


def _check_size(img_size: int, levels: int) -> int:
    factor = 2 ** levels
    if img_size % factor:
        raise ValueError(f"img_size must be divisible by {factor}, got {img_size}")
    return img_size // factor


class BasicUNet(nn.Module):
    """Lab 01 (``T=None``) and lab 02 (time embeddings added before both up blocks).

    Lab 01 builds the dense bottleneck but does not use it in ``forward`` (a quirk of the
    course that its parameter count, 234,977, includes); lab 02 uses it.
    ``load_state_dict`` also takes a state dict of the course's notebook ``UNet`` (see
    :mod:`labutils.models.compat`).
    """
    # Course state dicts (models/compat.py): these children are flat Sequentials there.
    course_flat_children = ("up0", "out")

    def __init__(self, img_ch: int = 1, img_size: int = 16,
                 down_chs: Sequence[int] = (16, 32, 64), T: Optional[int] = None):
        super().__init__()
        self.T = T
        up_chs = tuple(down_chs[::-1])
        latent = _check_size(img_size, len(down_chs) - 1)
        self.down0 = ConvBNReLU(img_ch, down_chs[0])
        self.down1 = BasicDownBlock(down_chs[0], down_chs[1])
        self.down2 = BasicDownBlock(down_chs[1], down_chs[2])
        self.to_vec = nn.Sequential(nn.Flatten(), nn.ReLU())
        self.dense_emb = DenseBottleneck(down_chs[2] * latent ** 2, down_chs[1])
        if T is not None:
            self.temb_1 = EmbedBlock(1, up_chs[0], act=nn.ReLU)
            self.temb_2 = EmbedBlock(1, up_chs[1], act=nn.ReLU)
        self.up0 = nn.Sequential(nn.Unflatten(1, (up_chs[0], latent, latent)),
                                 ConvBNReLU(up_chs[0], up_chs[0]))
        self.up1 = BasicUpBlock(up_chs[0], up_chs[1])
        self.up2 = BasicUpBlock(up_chs[1], up_chs[2])
        self.out = nn.Sequential(ConvBNReLU(up_chs[-1], up_chs[-1]),
                                 nn.Conv2d(up_chs[-1], img_ch, 3, 1, 1))
        register_course_loading(self)

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        down0 = self.down0(x)
        down1 = self.down1(down0)
        down2 = self.down2(down1)
        latent_vec = self.to_vec(down2)
        if self.T is None:
            up0 = self.up0(latent_vec)
            up1 = self.up1(up0, down2)
            up2 = self.up2(up1, down1)
        else:
            if t is None:
                raise TypeError("this U-Net is time-aware (T given): call model(x, t)")
            t = t.reshape(-1, 1).float() / self.T
            up0 = self.up0(self.dense_emb(latent_vec))
            up1 = self.up1(up0 + self.temb_1(t), down2)
            up2 = self.up2(up1 + self.temb_2(t), down1)
        return self.out(up2)


class UNet(nn.Module):
    """The course's optimised U-Net: ``UNet(T, img_ch, img_size, down_chs, t_embed_dim, c_embed_dim)``.

    ``c_embed_dim`` defaults to 10, as in the course's ``UNet_utils`` (lab 04's 10 classes);
    ``c_embed_dim=None`` (lab 03) builds it without context input. With context, the context
    rows ``c`` ``[N, c_embed_dim]`` are multiplied by ``c_mask`` (0 drops them: classifier-free
    guidance) and enter as ``c_emb * up + t_emb`` before each up block.
    ``load_state_dict`` also takes a state dict saved from the course's ``UNet_utils.UNet``
    (or lab 03's notebook U-Net, or either after ``torch.compile``); see
    :mod:`labutils.models.compat`.
    """
    # Course state dicts (models/compat.py): lab 03's notebook names the time embeddings so.
    course_aliases = {"temb_1.": "t_emb1.", "temb_2.": "t_emb2."}

    small_group_size = 8
    big_group_size = 32

    def __init__(self, T: int, img_ch: int, img_size: int,
                 down_chs: Sequence[int] = (64, 64, 128), t_embed_dim: int = 8,
                 c_embed_dim: Optional[int] = 10):
        super().__init__()
        self.T, self.c_embed_dim = T, c_embed_dim
        up_chs = tuple(down_chs[::-1])
        latent = _check_size(img_size, len(down_chs) - 1)
        small, big = self.small_group_size, self.big_group_size

        self.down0 = ResidualConvBlock(img_ch, down_chs[0], small)
        self.down1 = DownBlock(down_chs[0], down_chs[1], big)
        self.down2 = DownBlock(down_chs[1], down_chs[2], big)
        self.to_latent = nn.Sequential(nn.Flatten(), nn.GELU())
        self.dense_emb = DenseBottleneck(down_chs[2] * latent ** 2, down_chs[1])

        self.sinusoidaltime = SinusoidalPositionEmbedBlock(t_embed_dim)
        self.t_emb1 = EmbedBlock(t_embed_dim, up_chs[0])
        self.t_emb2 = EmbedBlock(t_embed_dim, up_chs[1])
        if c_embed_dim is not None:
            self.c_embed1 = EmbedBlock(c_embed_dim, up_chs[0])
            self.c_embed2 = EmbedBlock(c_embed_dim, up_chs[1])

        self.up0 = nn.Sequential(nn.Unflatten(1, (up_chs[0], latent, latent)),
                                 GELUConvBlock(up_chs[0], up_chs[0], big))
        self.up1 = UpBlock(up_chs[0], up_chs[1], big)
        self.up2 = UpBlock(up_chs[1], up_chs[2], big)
        self.out = nn.Sequential(
            nn.Conv2d(2 * up_chs[-1], up_chs[-1], 3, 1, 1), nn.GroupNorm(small, up_chs[-1]),
            nn.ReLU(), nn.Conv2d(up_chs[-1], img_ch, 3, 1, 1))
        register_course_loading(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: Optional[torch.Tensor] = None,
                c_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        down0 = self.down0(x)
        down1 = self.down1(down0)
        down2 = self.down2(down1)
        latent_vec = self.dense_emb(self.to_latent(down2))

        t = self.sinusoidaltime(t.reshape(-1).float() / self.T)
        t_emb1, t_emb2 = self.t_emb1(t), self.t_emb2(t)

        up0 = self.up0(latent_vec)
        if self.c_embed_dim is None:
            up1 = self.up1(up0 + t_emb1, down2)
            up2 = self.up2(up1 + t_emb2, down1)
        else:
            if c is None:
                raise TypeError("this U-Net takes context: call model(x, t, c, c_mask) "
                                "(build it with c_embed_dim=None for none)")
            if c.dim() != 2 or c.shape[1] != self.c_embed_dim:
                raise ValueError(
                    f"context c must be rows [N, {self.c_embed_dim}], got shape "
                    f"{tuple(c.shape)}; one-hot class labels first: c, c_mask = "
                    f"get_context_mask(labels, drop_prob, n_classes={self.c_embed_dim})")
            c = c.float() if c_mask is None else c.float() * c_mask
            up1 = self.up1(self.c_embed1(c) * up0 + t_emb1, down2)
            up2 = self.up2(self.c_embed2(c) * up1 + t_emb2, down1)
        return self.out(torch.cat((up2, down0), 1))
