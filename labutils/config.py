"""Configuration in one visible place: profiles, devices, seeds, precision and output folders.

A *profile* shrinks data, epochs and sampling; it never changes T or a lab's U-Net design.
- ``full``:  the course's exact settings.
- ``quick``: a laptop runs each lab in minutes (the series: about an hour on 2 cores without
  native bf16, docs/speed.md). Where the course's model cannot learn in minutes there (the 44.5M-parameter flowers U-Net: 6.56 TFLOP a step),
  ``quick`` trains the lab's declared laptop variant (``model="laptop"``, :mod:`labutils.labs`:
  the same design, narrower) with the batch and learning rate measured best for it.
- ``ci``:    seconds per notebook, for the test suite.
Select one with ``LABUTILS_PROFILE`` (default: ``full`` with a GPU, else ``quick``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

PROFILES = ("full", "quick", "ci")


@dataclasses.dataclass(frozen=True)
class LabSettings:
    """Everything a lab's training run needs to know, for one profile."""

    lab: str
    profile: str
    T: Optional[int]        # diffusion steps (None: lab 01 has no diffusion)
    img_size: int
    img_ch: int
    batch_size: int
    lr: float
    epochs: int
    max_images: Optional[int] = None       # train on a subset (None: all images)
    steps_per_epoch: Optional[int] = None  # cap on optimiser steps per epoch (None: a full pass)
    sample_every: int = 1                  # epochs between sample grids (flowers labs)
    preview_every: int = 100               # steps between previews in notebooks (0: none)
    sample_steps: Optional[int] = None     # reverse steps when sampling (None: all T; fewer
                                           # uses a respaced schedule, DDPM.respaced)
    sampler: str = "ddpm"                  # "ddpm" (the course's) or "ddim" (diffusion.SAMPLERS)
    compile: bool = False                  # torch.compile the training step: costs ~45 s once
                                           # on a CPU, pays only on long runs (README, speed)
    model: str = "course"                  # which U-Net the lab trains: "course" (the course's
                                           # arguments) or "laptop" (the lab spec's narrower
                                           # laptop_model_args); checkpoints record it


# The course's settings, lab by lab (../shared/course-spec.md).
_COURSE = {
    "fmnist-unet": dict(T=None, img_size=16, img_ch=1, batch_size=128, lr=1e-4, epochs=2),
    "fmnist-ddpm": dict(T=150, img_size=16, img_ch=1, batch_size=128, lr=1e-3, epochs=3),
    "fmnist-optimized": dict(T=150, img_size=16, img_ch=1, batch_size=128, lr=1e-3, epochs=5),
    "fmnist-cfg": dict(T=150, img_size=16, img_ch=1, batch_size=128, lr=1e-3, epochs=3),
    # Compiling the 44.5M-parameter flowers U-Net's step pays on a 100-epoch run (measured on
    # a 2-core AMX CPU: 8.1 -> 5.8 s a step at batch 128 for ~45 s of compiling); the small
    # Fashion-MNIST models gain nothing from it there (202 -> 198 ms).
    "flowers-cfg": dict(T=400, img_size=32, img_ch=3, batch_size=128, lr=1e-4, epochs=100,
                        sample_every=5, compile=True),
    "flowers-clip": dict(T=400, img_size=32, img_ch=3, batch_size=128, lr=1e-4, epochs=100,
                         sample_every=5, compile=True),
    "mnist-assessment": dict(T=150, img_size=28, img_ch=1, batch_size=128, lr=1e-3, epochs=5),
}
LABS = tuple(_COURSE)

# What each smaller profile changes. Keys absent here keep the course value.
_SHRINK = {
    "quick": {
        "fmnist-unet": dict(epochs=1, steps_per_epoch=300, preview_every=100),
        # One full epoch (546 steps, ~2 min alone); sampling this small model is cheap.
        "fmnist-ddpm": dict(epochs=1, preview_every=200),
        # ~0.7 s a step at batch 64 alone: 260 steps ~3 min; 50-step sampling keeps previews
        # and the final grid to seconds.
        "fmnist-optimized": dict(epochs=1, steps_per_epoch=450, batch_size=64, preview_every=100,
                                 sample_steps=50),
        # 546 steps of 64 (half an epoch; ~0.65 s a step in fp32 on 2 cores, ~6 min): 83% of
        # its samples judged as the class asked for at w = 2 and 92% at w = 4, where 546 steps
        # of 128 (twice the arithmetic, ~12 min there) gave 89.5% / 96.5% and 273 steps of 64
        # 72% / 74% (docs/quality.md). 50-step sampling of the 7 x 10 grid.
        "fmnist-cfg": dict(epochs=1, steps_per_epoch=546, batch_size=64, preview_every=0,
                           sample_steps=50),
        # The laptop U-Net (labs.py: down_chs (32, 64, 128), 1.9 GFLOP an image for a training
        # step, 1/27 of the course's): 923 steps of 32 (13 epochs of the 2,281 photos) at
        # lr 1e-3: 12-14 min with the four grids on a 2-core AMD EPYC without native bf16
        # (0.54-0.83 s a step). Lab 04 B after 919 steps: 90% judged as asked at w = 4 (75%
        # after 710; the notebook: 80%); lab 05 on stand-in CLIP v3: 88% at w = 2 (notebook:
        # 85%). The course's model and lr 1e-4 learn nothing in that time (docs/quality.md).
        "flowers-cfg": dict(model="laptop", epochs=13, batch_size=32, lr=1e-3, sample_every=4,
                            sample_steps=50, compile=False),
        "flowers-clip": dict(model="laptop", epochs=13, batch_size=32, lr=1e-3, sample_every=4,
                             sample_steps=50, compile=False),
        # The assessment on a laptop shows the mechanics only: 150 steps of 64 at 28 px (1.6 s a
        # step in fp32 on a 2-core AVX2 CPU, 4 min) still FAILed at 16% (docs/speed.md); what
        # passes the bar is `full` (5 epochs, all T steps), so quick trains one minute, not four.
        "mnist-assessment": dict(epochs=1, steps_per_epoch=40, batch_size=64, sample_steps=50),
    },
    "ci": {
        "fmnist-unet": dict(epochs=1, steps_per_epoch=4, max_images=1024, preview_every=2),
        "fmnist-ddpm": dict(epochs=1, steps_per_epoch=4, max_images=1024, preview_every=0,
                            sample_steps=10),
        "fmnist-optimized": dict(epochs=1, steps_per_epoch=3, max_images=1024, batch_size=64,
                                 preview_every=0, sample_steps=10),
        "fmnist-cfg": dict(epochs=1, steps_per_epoch=3, max_images=1024, batch_size=64,
                           preview_every=0, sample_steps=5),
        # One epoch: its grid is both the "every sample_every" and the last one (each grid is
        # 2 reverse steps of a 44.5M-parameter model on a batch of 42).
        "flowers-cfg": dict(epochs=1, steps_per_epoch=1, max_images=16, batch_size=8,
                            sample_every=1, sample_steps=2, compile=False),
        "flowers-clip": dict(epochs=2, steps_per_epoch=1, max_images=16, batch_size=8,
                             sample_every=1, sample_steps=2, compile=False),
        "mnist-assessment": dict(epochs=1, steps_per_epoch=3, max_images=1024, batch_size=64,
                                 sample_steps=5),
    },
}


class ConfigError(ValueError):
    """A setting (profile, lab, device, ...) that labutils cannot use; the message says why."""


# Every on/off environment switch of labutils: name -> (value when unset or blank, meaning).
SWITCHES = {
    "LABUTILS_BF16": (None, "bf16 autocast in training and sampling (unset: where the hardware "
                            "has native bf16)"),
    "LABUTILS_CLIP_OFFLINE": (False, "never try to download CLIP weights"),
    "LABUTILS_MNIST_DOWNLOAD": (True, "download MNIST when no copy is found"),
}
# The values each of them accepts (any case, spaces around ignored).
SWITCH_ON = ("1", "true", "yes", "on")
SWITCH_OFF = ("0", "false", "no", "off")


def env_switch(name: str) -> Optional[bool]:
    """The on/off environment switch ``name`` (a key of :data:`SWITCHES`): True for
    1/true/yes/on, False for 0/false/no/off (any case, spaces around ignored), its default
    when unset or blank.

    Anything else is a :class:`ConfigError` naming the variable and the accepted values: ``off``
    once read as "on" made bf16 training 11x slower on a CPU without native bf16 (issue 20).
    """
    default = SWITCHES[name][0]
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    if value in SWITCH_ON:
        return True
    if value in SWITCH_OFF:
        return False
    raise ConfigError(f"{name}={text!r} is not an on/off value: use {'/'.join(SWITCH_ON)} (on) "
                      f"or {'/'.join(SWITCH_OFF)} (off), any case, or unset it")


def check_switches() -> None:
    """Every switch of :data:`SWITCHES` parsed now: a command refuses a bad value before any
    work, not when the code that reads it is reached."""
    for name in SWITCHES:
        env_switch(name)


def has_gpu() -> bool:
    return torch.cuda.is_available()


def default_profile() -> str:
    return "full" if has_gpu() else "quick"


def get_profile(profile: Optional[str] = None) -> str:
    """The profile to use: the argument, else ``LABUTILS_PROFILE``, else the default."""
    name = profile or os.environ.get("LABUTILS_PROFILE") or default_profile()
    name = name.strip().lower()
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return name


def lab_settings(lab: str, profile: Optional[str] = None) -> LabSettings:
    """The settings of ``lab`` under ``profile`` (see the module docstring)."""
    if lab not in _COURSE:
        raise ConfigError(f"unknown lab {lab!r}; valid labs: {', '.join(LABS)}")
    profile = get_profile(profile)
    values = dict(_COURSE[lab])
    values.update(_SHRINK.get(profile, {}).get(lab, {}))
    return LabSettings(lab=lab, profile=profile, **values)


def get_device(device: Optional[str] = None) -> torch.device:
    """CUDA when available, else CPU (the course's rule); an explicit choice is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if has_gpu() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not has_gpu():
        raise ConfigError(
            f"device {device!r} asked for, but torch sees no usable CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run `labutils doctor` to see why, or use --device cpu")
    return dev


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) with one call."""
    random.seed(seed)
    np.random.seed(seed % 2**32)   # NumPy's legacy seed takes 0 ... 2**32 - 1 only
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def seeded(seed: int, device=None):
    """Draw random numbers from ``seed`` inside the block, and leave the global RNG streams as
    they were afterwards (a sample grid drawn mid-training keeps a resumed run exact)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# --- CPU threads that fit the allocation -------------------------------------------------------------

def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> Optional[float]:
    """CPUs the cgroup's quota allows (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``); None: no
    quota or no cgroup file."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    return None


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # macOS, Windows
        return os.cpu_count() or 1


def size_threads(affinity: int, cgroup: Optional[float] = None, slurm: Optional[str] = None,
                 local_world_size: Optional[str] = None, omp: Optional[str] = None,
                 override: Optional[int] = None) -> Tuple[int, str]:
    """How many threads torch should use, and why: ``(threads, reason)``.

    ``override`` (``--threads``) wins, then ``OMP_NUM_THREADS``; otherwise the CPUs this process
    may use (the fewest of its affinity mask, its cgroup quota, rounded down, and Slurm's
    ``SLURM_CPUS_PER_TASK``) shared among torchrun's ``LOCAL_WORLD_SIZE`` processes on this
    node. Two processes that each use every core run many times slower than one alone (their
    OpenMP threads spin against each other), so the share never exceeds the allocation.
    """
    if override is not None:
        if override < 1:
            raise ConfigError(f"--threads must be at least 1, got {override}")
        return override, "--threads"
    if omp and omp.strip():
        try:
            n = int(omp)
        except ValueError:
            raise ConfigError(f"OMP_NUM_THREADS={omp!r} is not a whole number") from None
        if n < 1:
            raise ConfigError(f"OMP_NUM_THREADS must be at least 1, got {n}")
        return n, "OMP_NUM_THREADS"
    limits = {"CPU affinity": max(1, affinity)}
    if cgroup is not None:
        limits["cgroup quota"] = max(1, int(cgroup))
    if slurm and slurm.strip().isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    source = min(limits, key=limits.get)
    cpus = limits[source]
    reason = f"{cpus} CPUs ({source})"
    procs = int(local_world_size) if (local_world_size or "").isdigit() else 1
    if procs > 1:
        reason += f" / {procs} local processes"
    return max(1, cpus // max(1, procs)), reason


def set_threads(override: Optional[int] = None) -> dict:
    """Size torch's CPU threads to this process's allocation (:func:`size_threads`, read from
    this machine and environment); returns ``{"threads": n, "reason": ...}`` for run headers
    and ``summary.json``."""
    env = os.environ
    n, reason = size_threads(_affinity_cpus(), _cgroup_cpus(), env.get("SLURM_CPUS_PER_TASK"),
                             env.get("LOCAL_WORLD_SIZE"), env.get("OMP_NUM_THREADS"), override)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return {"threads": n, "reason": reason}


def cpu_flags() -> set:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    flags = cpu_flags()
    if flags:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    with contextlib.suppress(Exception):  # non-Linux: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def use_bf16(device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast (the on/off switch
    ``LABUTILS_BF16`` overrides: :func:`env_switch`).

    On a CPU with AMX a lab-3 step is about 2.5x faster in bf16; without native bf16 it is
    slower than fp32, so we keep fp32 there. On a GPU, bf16 needs compute capability 8.0 or
    newer (:func:`cuda_supports_bf16`); older GPUs train in fp32.
    """
    forced = env_switch("LABUTILS_BF16")
    if forced is not None:
        return forced
    if device.type == "cuda":
        return cuda_supports_bf16(device)
    return device.type == "cpu" and cpu_supports_bf16()


# bf16 tensor cores arrive with Ampere (compute capability 8.0: A100, A10G, RTX 30xx, and every
# newer card). Older cards (V100 7.0, T4 7.5) report ``torch.cuda.is_bf16_supported()`` True
# because bf16 is *emulated* there, at a fraction of fp32's speed: fp32 is faster on them.
MIN_BF16_CAPABILITY = (8, 0)


def cuda_supports_bf16(device=None) -> bool:
    """True when the GPU ``device`` has native bf16 (compute capability >= 8.0)."""
    if not torch.cuda.is_available():
        return False
    index = torch.device(device).index if device is not None else None
    return tuple(torch.cuda.get_device_capability(index)) >= MIN_BF16_CAPABILITY


def autocast(device: torch.device, enabled: Optional[bool] = None):
    """bf16 autocast on ``device`` when it helps (see :func:`use_bf16`), else a no-op."""
    enabled = use_bf16(device) if enabled is None else enabled
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def project_dir() -> Path:
    """The checkout's root when labutils runs from one, else the working directory.

    Notebooks run with ``notebooks/`` as their working directory; anchoring ``data/`` and
    ``runs/`` here keeps one copy of each, whichever way a lab is started.
    """
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def output_dir(subdir: Optional[str] = None) -> Path:
    """Where a notebook or job writes its figures: ``LABUTILS_OUTPUT_DIR``, else
    ``<project>/runs/latest``. ``make run`` points it at ``runs/<timestamp>/<notebook>/``.
    """
    base = Path(os.environ.get("LABUTILS_OUTPUT_DIR") or project_dir() / "runs" / "latest")
    path = base / subdir if subdir else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
