"""U-Net building blocks, each defined once; the lab models are assembled from them.

Lab 01/02 ("basic"): Conv-BatchNorm-ReLU, MaxPool down, ConvTranspose(k3, s2) up.
Lab 03+ ("optimised"): Conv-GroupNorm-GELU, rearrange pooling, sinusoidal time embeddings.
Names of the lab-03 blocks are the course's (UNet_utils).
"""
from __future__ import annotations

import math

import torch
from einops.layers.torch import Rearrange
from torch import nn


# --- shared by every lab -----------------------------------------------------------------------

class EmbedBlock(nn.Module):
    """Linear-act-Linear, reshaped to ``[B, emb_dim, 1, 1]`` so it broadcasts over a feature map.

    Lab 02 uses ReLU, lab 03+ GELU (the course's choice in each).
    """

    def __init__(self, input_dim: int, emb_dim: int, act: type = nn.GELU):
        super().__init__()
        self.input_dim = input_dim
        self.model = nn.Sequential(
            nn.Linear(input_dim, emb_dim), act(), nn.Linear(emb_dim, emb_dim),
            nn.Unflatten(1, (emb_dim, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(-1, self.input_dim))


class DenseBottleneck(nn.Sequential):
    """The dense layers between the encoder and decoder (flattened latent -> hidden -> latent)."""

    def __init__(self, latent_dim: int, hidden_dim: int):
        super().__init__(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, latent_dim), nn.ReLU())


# --- lab 01/02 ---------------------------------------------------------------------------------

class ConvBNReLU(nn.Sequential):
    """Conv3x3 - BatchNorm - ReLU (``transpose=True``: a stride-2 ConvTranspose that doubles H, W)."""

    def __init__(self, in_ch: int, out_ch: int, transpose: bool = False):
        conv = (nn.ConvTranspose2d(in_ch, out_ch, 3, 2, 1, 1) if transpose
                else nn.Conv2d(in_ch, out_ch, 3, 1, 1))
        super().__init__(conv, nn.BatchNorm2d(out_ch), nn.ReLU())


class BasicDownBlock(nn.Sequential):
    """Two ConvBNReLU, then MaxPool: halves H and W."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch), nn.MaxPool2d(2))


class BasicUpBlock(nn.Module):
    """Concatenate the skip, ConvTranspose up (doubles H, W), then ConvBNReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.model = nn.Sequential(ConvBNReLU(2 * in_ch, out_ch, transpose=True),
                                   ConvBNReLU(out_ch, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((x, skip), 1))


# --- lab 03+ (the course's UNet_utils) -----------------------------------------------------------

class GELUConvBlock(nn.Sequential):
    """Conv3x3 - GroupNorm - GELU."""

    def __init__(self, in_ch: int, out_ch: int, group_size: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, 1, 1), nn.GroupNorm(group_size, out_ch),
                         nn.GELU())


class RearrangePoolBlock(nn.Sequential):
    """Space-to-depth 2x2 (no information thrown away, unlike MaxPool), then GELUConv 4C -> C."""

    def __init__(self, in_chs: int, group_size: int):
        super().__init__(Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2),
                         GELUConvBlock(4 * in_chs, in_chs, group_size))


class DownBlock(nn.Sequential):
    """Two GELUConv, then RearrangePool: halves H and W."""

    def __init__(self, in_chs: int, out_chs: int, group_size: int):
        super().__init__(GELUConvBlock(in_chs, out_chs, group_size),
                         GELUConvBlock(out_chs, out_chs, group_size),
                         RearrangePoolBlock(out_chs, group_size))


class UpBlock(nn.Module):
    """Concatenate the skip, ConvTranspose k2 s2 (doubles H, W), then four GELUConv."""

    def __init__(self, in_chs: int, out_chs: int, group_size: int):
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(2 * in_chs, out_chs, 2, 2),
            *[GELUConvBlock(out_chs, out_chs, group_size) for _ in range(4)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((x, skip), 1))


class SinusoidalPositionEmbedBlock(nn.Module):
    """Transformer-style sin/cos features of a scalar time: ``[B] -> [B, dim]``."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        scale = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, device=time.device) * -scale)
        args = time.reshape(-1).float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class ResidualConvBlock(nn.Module):
    """``x1 = conv1(x); return x1 + conv2(x1)``."""

    def __init__(self, in_chs: int, out_chs: int, group_size: int):
        super().__init__()
        self.conv1 = GELUConvBlock(in_chs, out_chs, group_size)
        self.conv2 = GELUConvBlock(out_chs, out_chs, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        return x1 + self.conv2(x1)
