"""Models: the U-Net building blocks and the course's U-Nets."""
from .blocks import (BasicDownBlock, BasicUpBlock, ConvBNReLU, DenseBottleneck, DownBlock,
                     EmbedBlock, GELUConvBlock, RearrangePoolBlock, ResidualConvBlock,
                     SinusoidalPositionEmbedBlock, UpBlock)
from .unet import BasicUNet, UNet
from .compat import course_key_map, from_course_state_dict, to_course_state_dict

__all__ = ["BasicDownBlock", "BasicUpBlock", "ConvBNReLU", "DenseBottleneck", "DownBlock",
           "EmbedBlock", "GELUConvBlock", "RearrangePoolBlock", "ResidualConvBlock",
           "SinusoidalPositionEmbedBlock", "UpBlock", "BasicUNet", "UNet", "course_key_map",
           "from_course_state_dict", "to_course_state_dict"]
