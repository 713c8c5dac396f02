"""labutils: the helpers, models and training tool behind the diffusion-model labs.

The course library (data -> model -> diffusion -> training -> pictures):
  config      profiles and per-lab settings, devices, seeds, bf16, output folders
  data        Fashion-MNIST and flowers as tensors, batch loaders
  models      U-Net blocks and the course's U-Nets
  modules     count_parameters, evaluating (any nn.Module)
  context     one-hot class context for guidance
  diffusion   the DDPM schedule, samplers, classifier-free guidance
  training    the one training loop and the labs' losses
  plotting    images, grids, trajectories, GIFs
  clip        lab 05: CLIP loading, the offline stand-in, the embedding cache
  labs        the lab registry: one spec per lab, read by notebooks and tools alike
  checks      the notebooks' exercise checks: expected vs got, with a hint
Around it: ``interactive`` (previews and widgets for the notebooks) and ``tools`` (the
command line, checkpoints, torchrun, the notebook runner, bench, doctor).
"""
__version__ = "0.1.0"

from .config import (LABS, PROFILES, ConfigError, get_device, get_profile, lab_settings,
                     output_dir, seed_everything)
from .data import (FASHION_MNIST_CLASSES, BatchLoader, DataNotFoundError, load_fashionMNIST,
                   load_transformed_fashionMNIST)
from .context import one_hot
from .diffusion import DDPM, GUIDANCE_WEIGHTS, get_context_mask, linear_beta_schedule, sample_w
from .models import (BasicUNet, DownBlock, EmbedBlock, GELUConvBlock, RearrangePoolBlock,
                     ResidualConvBlock, SinusoidalPositionEmbedBlock, UNet, UpBlock)
from .modules import count_parameters, evaluating
from .plotting import (make_grid, plot_generated_images, plot_grid, plot_image_grid,
                       plot_image_rows, save_animation, show_tensor_image, to_image,
                       trajectory_frames)
from .training import NonFiniteLossError, TrainResult, train
from .labs import REGISTRY, LabSpec, get_spec
from .checks import check, check_same, check_training_loop, check_true
# A run trained as a batch job, opened in a notebook (labs 04-05); it lives with the job tools.
from .tools.trained_run import load_run
