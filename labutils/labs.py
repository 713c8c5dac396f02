"""The lab registry: what differs between the course's labs, as data, in one place.

Each lab is one :class:`LabSpec`: its model with the course's constructor arguments (and the
parameter count the course prints), its data, its conditioning (none, class labels or CLIP text),
its loss and the picture it draws. The profile-dependent numbers (epochs, batch, lr, T, ...) live
in :mod:`labutils.config` under the same name. The notebooks, ``labutils train`` / ``sample`` /
``bench`` all read this registry; adding a lab is adding one spec to :data:`REGISTRY`.

:class:`Lab` binds a spec to one settings object and device and builds the parts of a run from
it. Everything it does is looked up from the spec's fields (the tables ``DATA``, ``LOSSES``,
``PICTURES`` below), never from the lab's name.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .config import LABS, ConfigError, LabSettings, lab_settings
from .context import class_indices, one_hot
from .data import (FASHION_MNIST_CLASSES, FLOWER_CLASSES, TensorImageDataset, flowers_augment,
                   load_fashion_mnist_tensors, load_flowers_tensors, random_hflip)
from .diffusion import DDPM, GUIDANCE_WEIGHTS, make_sampler, sample_w
from .files import grid_scale
from .models import BasicUNet, UNet
from .modules import evaluating
from .sample_limits import check_picture, sampling_chunk
from .training import ddpm_loss, denoising_loss, guided_ddpm_loss

CFG_DROP_PROB = 0.1   # the course's Bernoulli drop probability for the context (labs 04-06)
AugmentFn = Callable[[torch.Tensor], torch.Tensor]


def fused_adam_kwargs(device) -> dict:
    """``{"fused": True}`` on CUDA (one kernel for all parameters), else ``{}``."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def lab01_noise(x: torch.Tensor) -> torch.Tensor:
    """Lab 01's corruption: half image, half Gaussian noise."""
    return 0.5 * x + 0.5 * torch.randn_like(x)


# --- data sources -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a lab's images come from and how each batch is augmented."""

    classes: Tuple[str, ...]
    load: Callable[..., TensorImageDataset]   # (img_size, data_dir, max_images, seed, profile)
    augment: Callable[[int], AugmentFn]       # img_size -> per-batch augmentation


def _fashion_mnist(img_size, data_dir, max_images, seed, profile):
    return load_fashion_mnist_tensors(img_size, data_dir).subset(max_images, seed)


def _flowers(img_size, data_dir, max_images, seed, profile):
    # Only the ci profile may fall back to the generated fixture when no photos exist.
    return load_flowers_tensors(img_size, data_dir, max_images=max_images,
                                allow_fixture=profile == "ci", keep_aspect=True)


def _mnist(img_size, data_dir, max_images, seed, profile):
    # MNIST where it can be found, else Fashion-MNIST at 28x28 with a loud note
    # (labutils.data.mnist says where it looks).
    from .data.mnist import load_mnist_tensors
    return load_mnist_tensors(img_size, data_dir).subset(max_images, seed)


def _no_augment(x: torch.Tensor) -> torch.Tensor:
    return x   # digits are not mirrored


DATA: Dict[str, DataSource] = {
    "fashion-mnist": DataSource(tuple(FASHION_MNIST_CLASSES), _fashion_mnist,
                                lambda img_size: random_hflip),
    "flowers": DataSource(tuple(FLOWER_CLASSES), _flowers, flowers_augment),
    "mnist": DataSource(tuple(str(d) for d in range(10)), _mnist, lambda img_size: _no_augment),
}


# --- the specs --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LabSpec:
    """One lab of the course, declared. ``name`` is also its key in :mod:`labutils.config`."""

    name: str
    title: str
    notebook: Optional[str]             # the notebook that teaches it (None: the CLI only)
    model: Callable[..., torch.nn.Module]
    model_args: Mapping                  # the course's arguments besides T, img_ch, img_size
    params: int                          # the course's ``Num params``
    data: str                            # a key of DATA
    conditioning: str = "none"           # "none" | "classes" | "clip-text"
    loss: str = "ddpm"                   # a key of LOSSES
    picture: str = "unguided"            # a key of PICTURES
    prompts: Tuple[str, ...] = ()        # default prompts (clip-text)
    prompt_classes: Tuple[str, ...] = ()  # the class each of ``prompts`` names (what eval judges)
    find_unused_parameters: bool = False  # DDP must know about parameters forward skips
    # The same design at a width a 2-core CPU trains in minutes, for profiles whose settings say
    # ``model="laptop"`` (config.py); None: the lab has no such variant.
    laptop_model_args: Optional[Mapping] = None
    laptop_params: Optional[int] = None

    @property
    def conditional(self) -> bool:
        return self.conditioning != "none"

    @property
    def classes(self) -> Tuple[str, ...]:
        """The data's class names (what ``--classes`` picks for class-conditioned labs)."""
        return DATA[self.data].classes if self.data in DATA else ()

    def _variant(self, variant: str) -> Tuple[Mapping, int]:
        if variant == "course":
            return self.model_args, self.params
        if variant == "laptop" and self.laptop_model_args is not None:
            return self.laptop_model_args, self.laptop_params
        have = "course, laptop" if self.laptop_model_args is not None else "course"
        raise ConfigError(f"{self.name} has no {variant!r} model; it has: {have}")

    def params_for(self, settings: LabSettings) -> int:
        """The parameter count of the model ``settings`` train (``params`` for the course's)."""
        return self._variant(settings.model)[1]

    def describe_model(self, settings: LabSettings) -> str:
        """One line for run headers: which model ``settings`` train, and its size."""
        args, params = self._variant(settings.model)
        if settings.model == "course":
            return f"the course's {self.model.__name__} ({params:,} parameters)"
        return (f"the {settings.model} {self.model.__name__}, down_chs {tuple(args['down_chs'])} "
                f"({params:,} parameters; the course's: {self.params:,})")

    def build_model(self, settings: LabSettings, variant: Optional[str] = None) -> torch.nn.Module:
        """``model(T=..., img_ch=..., img_size=..., **args)`` with the arguments of ``variant``
        ("course" or "laptop"; default: the one ``settings.model`` names)."""
        args = self._variant(variant or settings.model)[0]
        return self.model(T=settings.T, img_ch=settings.img_ch, img_size=settings.img_size,
                          **args)


_FLOWERS_UNET = dict(down_chs=(256, 256, 512), t_embed_dim=8)
_OPTIMIZED_UNET = dict(down_chs=(64, 64, 128), t_embed_dim=8)
# The flowers U-Net at a width a 2-core CPU trains in ~10 minutes (config.py, quick;
# docs/quality.md): 1.9 GFLOP an image for a training step, 1/27 of the course model's 51.2.
_FLOWERS_LAPTOP_UNET = dict(down_chs=(32, 64, 128), t_embed_dim=8)

REGISTRY: Dict[str, LabSpec] = {spec.name: spec for spec in (
    LabSpec("fmnist-unet", "Lab 01: a U-Net denoiser", "01_unets.ipynb",
            BasicUNet, dict(down_chs=(16, 32, 64)), 234_977, "fashion-mnist",
            loss="denoise", picture="denoise",
            # Lab 01 builds a dense bottleneck it never uses (a course quirk): DDP must know.
            find_unused_parameters=True),
    LabSpec("fmnist-ddpm", "Lab 02: DDPM", "02_diffusion_models.ipynb",
            BasicUNet, dict(down_chs=(16, 32, 64)), 240_385, "fashion-mnist"),
    LabSpec("fmnist-optimized", "Lab 03: the optimised U-Net", "03_optimizations.ipynb",
            UNet, dict(_OPTIMIZED_UNET, c_embed_dim=None), 1_979_777, "fashion-mnist"),
    LabSpec("fmnist-cfg", "Lab 04 A: classifier-free guidance, Fashion-MNIST",
            "04_classifier_free_guidance.ipynb", UNet, dict(_OPTIMIZED_UNET, c_embed_dim=10),
            2_002_561, "fashion-mnist", conditioning="classes", loss="guided", picture="guided"),
    LabSpec("flowers-cfg", "Lab 04 B: classifier-free guidance, flowers",
            "04_classifier_free_guidance.ipynb", UNet, dict(_FLOWERS_UNET, c_embed_dim=3),
            44_509_443, "flowers", conditioning="classes", loss="guided", picture="guided",
            laptop_model_args=dict(_FLOWERS_LAPTOP_UNET, c_embed_dim=3),
            laptop_params=2_565_315),
    LabSpec("flowers-clip", "Lab 05: CLIP text-to-image", "05_clip_text_to_image.ipynb",
            UNet, dict(_FLOWERS_UNET, c_embed_dim=512), 44_900_355, "flowers",
            conditioning="clip-text", loss="guided", picture="guided",
            prompts=("A round white flower", "A round orange sunflower with a big brown center",
                     "A red rose bud"),
            prompt_classes=("daisy", "sunflowers", "roses"),
            laptop_model_args=dict(_FLOWERS_LAPTOP_UNET, c_embed_dim=512),
            laptop_params=2_663_043),
    LabSpec("mnist-assessment", "Assessment: conditional MNIST at 28x28", None,
            UNet, dict(_OPTIMIZED_UNET, c_embed_dim=10), 2_547_457, "mnist",
            conditioning="classes", loss="guided", picture="guided"),
)}
assert tuple(REGISTRY) == LABS, "config and the registry must name the same labs"


def get_spec(name: str) -> LabSpec:
    if name not in REGISTRY:
        raise ConfigError(f"unknown lab {name!r}; valid labs: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_model(settings: LabSettings) -> torch.nn.Module:
    """The lab's U-Net with the course's constructor arguments."""
    return get_spec(settings.lab).build_model(settings)


def course_model(name: str, profile: Optional[str] = None) -> torch.nn.Module:
    """The notebooks' one-liner: lab ``name``'s model as the course builds it."""
    return build_model(lab_settings(name, profile))


# --- losses and pictures, looked up by the spec's fields -------------------------------------------

LOSSES: Dict[str, Callable[["Lab"], Callable]] = {
    "denoise": lambda lab: denoising_loss(lab01_noise),
    "ddpm": lambda lab: ddpm_loss(lab.ddpm),
    "guided": lambda lab: guided_ddpm_loss(lab.ddpm, CFG_DROP_PROB, n_classes=lab.n_classes),
}


@dataclasses.dataclass
class Samples:
    """A sampled grid: ``images`` row-major with ``ncols`` a row, plus GIF frames when drawn."""

    images: torch.Tensor
    ncols: int
    frames: Optional[torch.Tensor] = None   # [frames, N, C, H, W]
    row_labels: Optional[List[str]] = None
    col_labels: Optional[List[str]] = None


@dataclasses.dataclass
class SampleRequest:
    """What ``labutils sample`` (or a training run's grid) asks a lab to draw."""

    classes: Optional[Sequence[str]] = None
    prompts: Optional[Sequence[str]] = None
    weights: Optional[Sequence[float]] = None
    steps: Optional[int] = None
    sampler: Optional[str] = None             # "ddpm" | "ddim" (default: the settings')
    eta: Optional[float] = None               # DDIM's noise (None: diffusion.default_eta)
    n: int = 16
    examples: Optional[torch.Tensor] = None   # lab 01: clean images to noise and denoise
    frames: int = 15


def _check_memory(lab: "Lab", req: SampleRequest, count: int, stored: int = 0) -> None:
    """Refuse a picture of ``count`` images that would not fit in memory, before sampling."""
    check_picture(count, lab.image_shape, grid_scale(lab.settings.img_size), stored,
                  req.frames)


def _store_every(T: int, frames: int) -> int:
    """Reverse steps between the stored states of a GIF of ``frames`` frames (0: none)."""
    return max(1, T // frames) if frames else 0


def _denoise_picture(lab: "Lab", model, req: SampleRequest) -> Samples:
    """Lab 01: original / noised / predicted rows (or noise / output without examples)."""
    s = lab.settings
    with evaluating(model):
        if req.examples is not None:
            x = req.examples[:8].to(lab.device)
            noised = lab01_noise(x)
            return Samples(torch.cat((x, noised, model(noised))), len(x),
                           row_labels=["original", "noised", "predicted"])
        _check_memory(lab, req, 2 * req.n)
        noise = torch.randn(req.n, s.img_ch, s.img_size, s.img_size, device=lab.device)
        chunk = sampling_chunk(lab.device)
        out = torch.cat([model(noise[i:i + chunk]).cpu() for i in range(0, req.n, chunk)])
        return Samples(torch.cat((noise.cpu(), out)), req.n, row_labels=["noise", "generated"])


def unguided_samples(lab: "Lab", model, n: int, ddpm: Optional[DDPM] = None,
                     store_every: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``n`` unguided samples on the CPU, drawn in chunks of :func:`sampling_chunk` (activations
    stay bounded whatever ``n``), and the stored chain ``[states, n, C, H, W]`` (or None)."""
    ddpm = ddpm or lab.sampler()
    xs, stores = [], []
    chunk = sampling_chunk(lab.device)
    for i in range(0, n, chunk):
        x, store = ddpm.sample(model, (min(chunk, n - i), *lab.image_shape),
                               store_every=store_every)
        xs.append(x.cpu())
        if store:
            stores.append(torch.stack(store))
    return torch.cat(xs), (torch.cat(stores, dim=1) if stores else None)


def _unguided_picture(lab: "Lab", model, req: SampleRequest) -> Samples:
    """Labs 02-03: ``n`` samples from noise, with the trajectory for a GIF."""
    ddpm = lab.sampler(req.steps, req.sampler, req.eta)
    every = _store_every(ddpm.T, req.frames)
    _check_memory(lab, req, req.n, stored=-(-ddpm.T // every) if every else 0)
    x, store = unguided_samples(lab, model, req.n, ddpm, every)
    return Samples(x, min(req.n, 8), store)


def _guided_picture(lab: "Lab", model, req: SampleRequest) -> Samples:
    """Labs 04-05: a guidance-weight x context grid (rows w, columns classes or prompts)."""
    ddpm = lab.sampler(req.steps, req.sampler, req.eta)
    c, labels = lab.context(classes=req.classes, prompts=req.prompts)
    weights = list(GUIDANCE_WEIGHTS if req.weights is None else req.weights)
    every = _store_every(ddpm.T, req.frames) or ddpm.T + 1   # sample_w keeps the last 10 too
    _check_memory(lab, req, len(weights) * len(c), stored=-(-ddpm.T // every) + 10)
    x, store = sample_w(model, ddpm, lab.image_shape, ddpm.T, c, lab.device, weights,
                        store_freq=every)
    return Samples(x, len(c), store, row_labels=[f"w={w:g}" for w in weights], col_labels=labels)


PICTURES: Dict[str, Callable[["Lab", torch.nn.Module, SampleRequest], Samples]] = {
    "denoise": _denoise_picture, "unguided": _unguided_picture, "guided": _guided_picture,
}


# --- a spec bound to settings and a device ---------------------------------------------------------

class Lab:
    """Everything a run of one lab needs, built from its spec under one settings object."""

    def __init__(self, settings: LabSettings, device, seed: int = 0,
                 clip_model: Optional[str] = None, data_dir=None):
        self.spec = get_spec(settings.lab)
        self.settings, self.device, self.seed = settings, torch.device(device), seed
        self.clip_model, self.data_dir = clip_model, data_dir
        self._encoder = None
        self._said_steps = False   # --steps above T is reported once, not per chunk
        self.ddpm = DDPM.linear(settings.T, self.device) if settings.T else None

    # --- what the lab trains -------------------------------------------------------------------

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        s = self.settings
        return (s.img_ch, s.img_size, s.img_size)

    @property
    def n_classes(self) -> Optional[int]:
        """One-hot width for class-conditioned labs (None: context vectors are used as given)."""
        return len(self.spec.classes) if self.spec.conditioning == "classes" else None

    def build_model(self) -> torch.nn.Module:
        return self.spec.build_model(self.settings).to(self.device)

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The course's optimiser for every lab: Adam at the settings' learning rate (fused into
        one kernel per step on CUDA; the same arithmetic)."""
        return torch.optim.Adam(model.parameters(), lr=self.settings.lr,
                                **fused_adam_kwargs(self.device))

    def dataset(self) -> TensorImageDataset:
        """The lab's images in memory; labels are class indices, or CLIP image embeddings for
        ``clip-text`` labs (encoded once into the CSV cache)."""
        s = self.settings
        if self.spec.data not in DATA:
            raise ConfigError(f"{s.lab} has no data source yet (labutils ships no "
                              f"{self.spec.data!r} loader; the course grades its assessment "
                              "separately)")
        if self.spec.conditioning == "clip-text":
            from .clip import load_flowers_with_clip
            return load_flowers_with_clip(self.encoder(), img_size=s.img_size,
                                          data_dir=self.data_dir, max_images=s.max_images,
                                          allow_fixture=s.profile == "ci")
        return DATA[self.spec.data].load(s.img_size, self.data_dir, s.max_images, self.seed,
                                         s.profile)

    def augment(self) -> AugmentFn:
        return DATA[self.spec.data].augment(self.settings.img_size)

    def loss_fn(self):
        return LOSSES[self.spec.loss](self)

    def random_batch(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Random images and labels (or context vectors) of the lab's shapes, for benchmarks."""
        x = torch.rand(batch_size, *self.image_shape, device=self.device) * 2 - 1
        if self.spec.conditioning == "clip-text":
            return x, torch.randn(batch_size, self.spec.model_args["c_embed_dim"],
                                  device=self.device)
        return x, torch.randint(0, max(1, len(self.spec.classes)), (batch_size,),
                                device=self.device)

    # --- CLIP (clip-text labs) -------------------------------------------------------------------

    def encoder(self):
        """The CLIP encoder (loaded once; a stand-in, sized by the profile, when no weights)."""
        if self._encoder is None:
            from .clip import ClipUnavailableError, load_clip
            try:
                self._encoder = load_clip(self.clip_model, device=self.device,
                                          profile=self.settings.profile,
                                          flowers_dir=self.data_dir)
            except ClipUnavailableError as err:
                raise ConfigError(str(err)) from None
        return self._encoder

    def clip_info(self) -> Optional[dict]:
        """Which CLIP made the context vectors (None when none was loaded)."""
        if self._encoder is None:
            return None
        return {"model_id": str(self._encoder.model_id),
                "fingerprint": str(self._encoder.fingerprint)}

    def check_clip(self, trained_with: Optional[dict], advice: str) -> None:
        """Refuse a CLIP other than the one a checkpoint's model was trained with (``trained_with``
        is the checkpoint's ``clip`` entry; None: nothing recorded, nothing to check)."""
        now = self.clip_info() or (self.encoder() and self.clip_info())
        if trained_with and trained_with["fingerprint"] != now["fingerprint"]:
            raise ConfigError(
                f"this model was trained with CLIP {trained_with['model_id']} (weights sha256 "
                f"{trained_with['fingerprint'][:12]}), but {now['model_id']} (sha256 "
                f"{now['fingerprint'][:12]}) was loaded: {advice}")

    # --- what the lab draws ----------------------------------------------------------------------

    def sampler(self, steps: Optional[int] = None, kind: Optional[str] = None,
                eta: Optional[float] = None) -> DDPM:
        """The reverse process: ``kind`` "ddpm" (the course's) or "ddim" over ``steps`` steps
        (defaults: the settings' ``sampler`` and ``sample_steps``, else all T; DDIM's ``eta``:
        :func:`labutils.diffusion.default_eta`)."""
        steps = steps or self.settings.sample_steps or self.settings.T
        T = self.settings.T
        if T and steps > T:
            if not self._said_steps:
                print(f"labutils: {steps} sampling steps asked for, more than the model's "
                      f"T = {T} diffusion steps: sampling {T}", file=sys.stderr, flush=True)
                self._said_steps = True
            steps = T
        try:
            return make_sampler(self.ddpm, kind or self.settings.sampler, steps, eta)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def context(self, classes: Optional[Sequence[str]] = None,
                prompts: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, List[str]]:
        """Context rows and their column labels: one-hot rows for class names or indices
        (default: every class), or CLIP encodings of prompts (default: the lab's prompts)."""
        name, kind = self.settings.lab, self.spec.conditioning
        if kind == "clip-text":
            if classes:
                raise ConfigError(f"{name} is conditioned on text; use --prompts")
            labels = list(prompts or self.spec.prompts)
            return self.encoder().encode_text(labels).to(self.device), labels
        if kind == "none":
            raise ConfigError(f"{name} is not conditioned; it takes no context")
        if prompts:
            raise ConfigError(f"{name} is conditioned on classes; use --classes")
        try:
            idx = class_indices(classes or self.spec.classes, self.spec.classes)
        except ValueError as err:
            raise ConfigError(f"{name}: {err}") from None
        labels = [self.spec.classes[i] for i in idx]
        return one_hot(idx, len(self.spec.classes)).to(self.device), labels

    def sample(self, model: torch.nn.Module, request: Optional[SampleRequest] = None,
               **fields) -> Samples:
        """The lab's picture from ``model`` (samplers run it in eval mode; RNG is the caller's)."""
        request = request or SampleRequest(**fields)
        if not self.spec.conditional and (request.classes or request.prompts):
            raise ConfigError(f"{self.settings.lab} is not conditioned; --classes and --prompts "
                              "do not apply")
        return PICTURES[self.spec.picture](self, model, request)
