"""labutils: the helpers, models and training tool behind the diffusion-model labs.

Layout (data -> model -> diffusion -> training -> pictures; the CLI on top):
  config      profiles, devices, seeds, bf16, output folders
  data        Fashion-MNIST and flowers as tensors, batch loaders
  models      U-Net blocks and the course's U-Nets
  diffusion   the DDPM schedule, samplers, classifier-free guidance
  training    the one training loop and the labs' losses
  plotting    images, grids, trajectories, GIFs
"""
__version__ = "0.1.0"

from .config import (LABS, PROFILES, ConfigError, get_device, get_profile, lab_settings,
                     output_dir, seed_everything)
from .data import (FASHION_MNIST_CLASSES, BatchLoader, DataNotFoundError, load_fashionMNIST,
                   load_transformed_fashionMNIST)
from .diffusion import DDPM, GUIDANCE_WEIGHTS, get_context_mask, linear_beta_schedule, sample_w
from .models import (BasicUNet, DownBlock, EmbedBlock, GELUConvBlock, RearrangePoolBlock,
                     ResidualConvBlock, SinusoidalPositionEmbedBlock, UNet, UpBlock,
                     count_parameters)
from .plotting import (make_grid, plot_generated_images, save_animation, show_tensor_image,
                       to_image)
from .training import NonFiniteLossError, TrainResult, train
