"""Models: the U-Net building blocks and the course's U-Nets."""
from .blocks import (BasicDownBlock, BasicUpBlock, ConvBNReLU, DenseBottleneck, DownBlock,
                     EmbedBlock, GELUConvBlock, RearrangePoolBlock, ResidualConvBlock,
                     SinusoidalPositionEmbedBlock, UpBlock)
from .unet import BasicUNet, UNet

__all__ = ["BasicDownBlock", "BasicUpBlock", "ConvBNReLU", "DenseBottleneck", "DownBlock",
           "EmbedBlock", "GELUConvBlock", "RearrangePoolBlock", "ResidualConvBlock",
           "SinusoidalPositionEmbedBlock", "UpBlock", "BasicUNet", "UNet"]
