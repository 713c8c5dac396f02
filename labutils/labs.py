"""One small recipe per lab for ``labutils train`` / ``labutils sample``.

A recipe knows the lab's model (the course's constructor arguments), its data, its loss
(from :mod:`labutils.training`) and how to draw its sample grid. The optimiser is the course's
Adam at ``settings.lr`` for every lab. Flowers and CLIP modules are imported only by the
flowers recipes, so the Fashion-MNIST labs need neither.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .config import ConfigError, LabSettings
from .diffusion import DDPM, GUIDANCE_WEIGHTS, sample_w
from .models import BasicUNet, UNet, evaluating
from .training import ddpm_loss, denoising_loss, guided_ddpm_loss

# Lab 05's sampling prompts (course-spec.md).
DEFAULT_PROMPTS = ("A round white flower", "A round orange sunflower with a big brown center",
                   "A red rose bud")
CFG_DROP_PROB = 0.1


@dataclasses.dataclass
class Samples:
    """A sampled grid: ``images`` row-major with ``ncols`` a row, plus GIF frames when drawn."""

    images: torch.Tensor
    ncols: int
    frames: Optional[torch.Tensor] = None   # [frames, N, C, H, W]
    row_labels: Optional[List[str]] = None
    col_labels: Optional[List[str]] = None


def build_model(settings: LabSettings) -> torch.nn.Module:
    """The lab's U-Net with the course's constructor arguments."""
    lab = settings.lab
    if lab == "fmnist-unet":
        return BasicUNet(1, 16, (16, 32, 64))
    if lab == "fmnist-ddpm":
        return BasicUNet(1, 16, (16, 32, 64), T=settings.T)
    if lab == "fmnist-optimized":
        return UNet(settings.T, 1, 16, (64, 64, 128), 8)
    if lab == "fmnist-cfg":
        return UNet(settings.T, 1, 16, (64, 64, 128), 8, 10)
    if lab == "flowers-cfg":
        return UNet(settings.T, 3, 32, (256, 256, 512), 8, 3)
    if lab == "flowers-clip":
        return UNet(settings.T, 3, 32, (256, 256, 512), 8, 512)
    if lab == "mnist-assessment":
        return UNet(settings.T, 1, 28, (64, 64, 128), 8, 10)
    raise ConfigError(f"no recipe for lab {lab!r}")


def lab01_noise(x: torch.Tensor) -> torch.Tensor:
    """Lab 01's corruption: half image, half Gaussian noise."""
    return 0.5 * x + 0.5 * torch.randn_like(x)


def clip_module():
    """The CLIP helper module (written beside this one; imported only when a lab needs it)."""
    try:
        from . import clip_embed
        return clip_embed
    except ImportError:
        from .clip import encoder
        return encoder


class Recipe:
    """Everything ``labutils train`` needs for one lab under one settings object."""

    def __init__(self, settings: LabSettings, device: torch.device, seed: int = 0,
                 clip_model: Optional[str] = None):
        self.settings, self.device, self.seed = settings, torch.device(device), seed
        self.lab = settings.lab
        self.clip_model = clip_model
        self.data_dir = None   # flowers folder (None: the data module's search order)
        self._encoder = None
        self.ddpm = DDPM.linear(settings.T, self.device) if settings.T else None
        if self.lab == "mnist-assessment":
            raise ConfigError("mnist-assessment has no training recipe: labutils ships no MNIST "
                              "loader (the course's assessment is graded separately)")

    # --- what the lab trains ---------------------------------------------------------------

    @property
    def conditional(self) -> bool:
        return self.lab in ("fmnist-cfg", "flowers-cfg", "flowers-clip", "mnist-assessment")

    @property
    def find_unused_parameters(self) -> bool:
        # Lab 01 builds a dense bottleneck it never uses (a course quirk): DDP must know.
        return self.lab == "fmnist-unet"

    @property
    def classes(self) -> Optional[List[str]]:
        if self.lab in ("fmnist-cfg", "fmnist-unet", "fmnist-ddpm", "fmnist-optimized"):
            from .data import FASHION_MNIST_CLASSES
            return list(FASHION_MNIST_CLASSES)
        if self.lab == "flowers-cfg":
            from .data.flowers import FLOWER_CLASSES
            return list(FLOWER_CLASSES)
        return None

    def build_model(self) -> torch.nn.Module:
        return build_model(self.settings).to(self.device)

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.settings.lr)

    def encoder(self):
        if self._encoder is None:
            module = clip_module()
            try:
                # A stand-in (no CLIP weights here) is sized by the run's profile.
                self._encoder = module.load_clip(self.clip_model, device=self.device,
                                                 profile=self.settings.profile,
                                                 flowers_dir=self.data_dir)
            except module.ClipUnavailableError as err:
                raise ConfigError(str(err)) from None
        return self._encoder

    def clip_info(self) -> Optional[dict]:
        """Which CLIP made the context vectors (None when none was loaded)."""
        if self._encoder is None:
            return None
        return {"model_id": str(self._encoder.model_id),
                "fingerprint": str(self._encoder.fingerprint)}

    def dataset(self, data_dir=None):
        """The lab's images (and labels) in memory; ``max_images`` subset drawn with ``seed``."""
        s = self.settings
        self.data_dir = data_dir
        if self.lab.startswith("fmnist"):
            from .data import load_fashion_mnist_tensors
            return load_fashion_mnist_tensors(s.img_size, data_dir).subset(s.max_images, self.seed)
        if self.lab == "flowers-cfg":
            from .data.flowers import load_flowers_tensors
            return load_flowers_tensors(s.img_size, data_dir, max_images=s.max_images)
        if self.lab == "flowers-clip":
            data = clip_module().load_flowers_with_clip(self.encoder(), img_size=s.img_size,
                                                        data_dir=data_dir,
                                                        max_images=s.max_images)
            return data
        raise ConfigError(f"no data recipe for lab {self.lab!r}")

    def augment(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.lab.startswith("flowers"):
            from .data.flowers import flowers_augment
            return flowers_augment(self.settings.img_size)
        from .data import random_hflip
        return random_hflip

    def loss_fn(self):
        if self.lab == "fmnist-unet":
            return denoising_loss(lab01_noise)
        if self.lab in ("fmnist-ddpm", "fmnist-optimized"):
            return ddpm_loss(self.ddpm)
        if self.lab == "flowers-clip":
            return guided_ddpm_loss(self.ddpm, CFG_DROP_PROB)
        return guided_ddpm_loss(self.ddpm, CFG_DROP_PROB, n_classes=len(self.classes))

    # --- what the lab draws ----------------------------------------------------------------

    def sampler(self, steps: Optional[int] = None) -> DDPM:
        steps = steps or self.settings.sample_steps or self.settings.T
        if steps < 1:
            raise ConfigError(f"sampling steps must be at least 1, got {steps}")
        return self.ddpm.respaced(steps)

    def class_context(self, names: Sequence[str]) -> Tuple[torch.Tensor, List[str]]:
        """One-hot rows for class names (case-insensitive) or indices."""
        classes = self.classes
        lookup = {c.lower(): i for i, c in enumerate(classes)}
        idx = []
        for name in names:
            key = str(name).strip().lower()
            if key in lookup:
                idx.append(lookup[key])
            elif key.isdigit() and int(key) < len(classes):
                idx.append(int(key))
            else:
                raise ConfigError(f"unknown class {name!r} for {self.lab}; classes: "
                                  f"{', '.join(classes)}")
        one_hot = torch.nn.functional.one_hot(torch.tensor(idx), len(classes)).float()
        return one_hot.to(self.device), [classes[i] for i in idx]

    def sample(self, model: torch.nn.Module, *, classes: Optional[Sequence[str]] = None,
               prompts: Optional[Sequence[str]] = None, weights: Optional[Sequence[float]] = None,
               steps: Optional[int] = None, n: int = 16, examples: Optional[torch.Tensor] = None,
               frames: int = 15) -> Samples:
        """The lab's picture from ``model`` (in eval mode, RNG of the caller's choosing).

        Lab 01: original / noised / predicted rows of ``examples`` (or noise / output pairs
        without examples); labs 02-03: ``n`` unguided samples; labs 04-05: a guidance-weight x
        class (or prompt) grid.
        """
        s = self.settings
        with evaluating(model):
            if self.lab == "fmnist-unet":
                if examples is not None:
                    x = examples[:8].to(self.device)
                    noised = lab01_noise(x)
                    return Samples(torch.cat((x, noised, model(noised))), len(x),
                                   row_labels=["original", "noised", "predicted"])
                noise = torch.randn(n, s.img_ch, s.img_size, s.img_size, device=self.device)
                return Samples(torch.cat((noise, model(noise))), n,
                               row_labels=["noise", "generated"])
            ddpm = self.sampler(steps)
            every = max(1, ddpm.T // frames)
            if not self.conditional:
                x, store = ddpm.sample(model, (n, s.img_ch, s.img_size, s.img_size),
                                       store_every=every)
                return Samples(x, min(n, 8), torch.stack(store) if store else None)
            if self.lab == "flowers-clip":
                labels = list(prompts or DEFAULT_PROMPTS)
                c = self.encoder().encode_text(labels).to(self.device)
            else:
                if prompts:
                    raise ConfigError(f"{self.lab} is conditioned on classes; use --classes")
                c, labels = self.class_context(classes or self.classes)
            weights = list(GUIDANCE_WEIGHTS if weights is None else weights)
            x, store = sample_w(model, ddpm, (s.img_ch, s.img_size, s.img_size), ddpm.T, c,
                                self.device, weights, store_freq=every)
            return Samples(x, len(c), store, row_labels=[f"w={w:g}" for w in weights],
                           col_labels=labels)


@contextlib.contextmanager
def fixed_rng(seed: int, device: torch.device):
    """Sample with a fixed seed without disturbing the training RNG (resumed runs stay exact)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
