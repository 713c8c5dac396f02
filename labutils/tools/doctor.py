"""``labutils doctor`` (what this machine offers, and what to install) and ``labutils prepare``
(stage data and weights into one folder on a login node with internet, for offline compute nodes).
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

# PyTorch wheel builds by CUDA version, newest first, and the oldest Linux driver that runs each
# without relying on minor-version compatibility (NVIDIA's CUDA toolkit release notes, table 3).
WHEELS: Tuple[Tuple[str, Tuple[int, int], str], ...] = (
    ("cu130", (13, 0), "580.65.06"),
    ("cu128", (12, 8), "570.26"),
    ("cu126", (12, 6), "560.28.03"),
    ("cu124", (12, 4), "550.54.14"),
    ("cu121", (12, 1), "530.30.02"),
    ("cu118", (11, 8), "520.61.05"),
)
INDEX_URL = "https://download.pytorch.org/whl/{tag}"


def _run(cmd: Sequence[str], timeout: float = 15) -> Optional[str]:
    """stdout of ``cmd``, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def driver_info() -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    """``(driver version, highest CUDA version it supports)`` from nvidia-smi, or Nones."""
    text = _run(["nvidia-smi"])
    if not text:
        return None, None
    drv = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", text)
    return (drv.group(1) if drv else None,
            (int(cuda.group(1)), int(cuda.group(2))) if cuda else None)


# Oldest driver of each CUDA major that runs newer minors' builds (minor-version compatibility).
COMPAT_MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def wheel_for(driver: Optional[str], driver_cuda: Optional[Tuple[int, int]]) -> str:
    """The torch wheel tag to install for this driver (``cpu`` without one).

    A build of the driver's own CUDA major version: the newest one the driver supports outright,
    else the oldest one of that major, which runs through CUDA minor-version compatibility (a
    CUDA 12.0 driver >= 525.60.13 runs every cu12x build; README's table). A driver of an older
    major (CUDA 10) gets ``cpu``.
    """
    if driver is None and driver_cuda is None:
        return "cpu"
    if driver_cuda is None:   # no "CUDA Version" in nvidia-smi: go by the driver's version
        for tag, cuda, min_driver in WHEELS:
            if driver and _version_tuple(driver) >= _version_tuple(min_driver):
                return tag
        return "cpu"
    major = driver_cuda[0]
    same_major = [(tag, cuda) for tag, cuda, _ in WHEELS if cuda[0] == major]
    for tag, cuda in same_major:
        if cuda <= driver_cuda:
            return tag
    compat = COMPAT_MIN_DRIVER.get(major)
    if same_major and driver and compat and _version_tuple(driver) >= _version_tuple(compat):
        return same_major[-1][0]
    older = [tag for tag, cuda, _ in WHEELS if cuda <= driver_cuda]
    return older[0] if older else "cpu"


def compatible_wheels(driver: Optional[str], driver_cuda: Optional[Tuple[int, int]]) -> List[str]:
    """Every build tag this driver runs, newest first: its own CUDA and older, plus the newer
    builds of its major through minor-version compatibility (driver >= the major's minimum)."""
    if driver_cuda is None:
        return []
    compat = COMPAT_MIN_DRIVER.get(driver_cuda[0])
    minor_ok = bool(driver and compat and _version_tuple(driver) >= _version_tuple(compat))
    return [tag for tag, cuda, _ in WHEELS
            if cuda <= driver_cuda or (minor_ok and cuda[0] == driver_cuda[0])]


def wheel_line(driver: Optional[str], driver_cuda: Optional[Tuple[int, int]]) -> str:
    """The install command of the torch build that fits this driver (``cpu`` without one)."""
    tag = wheel_for(driver, driver_cuda)
    return f"pip install torch torchvision --index-url {INDEX_URL.format(tag=tag)}"


def torch_build_supported(built_cuda: str, driver: Optional[str],
                          driver_cuda: Tuple[int, int]) -> Tuple[bool, str]:
    """Whether a driver supporting ``driver_cuda`` runs torch built for CUDA ``built_cuda``."""
    need = tuple(int(v) for v in built_cuda.split(".")[:2])
    if need <= driver_cuda:
        return True, "supported by this driver"
    compat = COMPAT_MIN_DRIVER.get(need[0])
    if (need[0] == driver_cuda[0] and compat and driver
            and _version_tuple(driver) >= _version_tuple(compat)):
        return True, "supported through CUDA minor-version compatibility"
    return False, "NEWER than this driver supports"


def _section(title: str) -> None:
    print(f"\n== {title} ==")


_ENV_FOR = {"Fashion-MNIST": "LABUTILS_DATA_DIR", "flower photos": "LABUTILS_FLOWERS_DIR",
            "CLIP ViT-B/32 weights": "LABUTILS_CLIP_MODEL"}


def _data_checks(data_dir: Optional[str]) -> List[Tuple[str, bool, str]]:
    """(item, present, detail) for Fashion-MNIST, the flower photos and the CLIP weights."""
    rows = []
    try:
        from ..data.fashion_mnist import find_fashion_mnist, verify_fashion_mnist
        # Read, not just listed: a truncated .gz is not "present".
        rows.append(("Fashion-MNIST", True, str(verify_fashion_mnist(
            find_fashion_mnist(data_dir, download=False)))))
    except Exception as err:
        rows.append(("Fashion-MNIST", False, str(err).splitlines()[0]))
    try:
        from ..data.flowers import find_flowers
        rows.append(("flower photos", True, str(find_flowers())))
    except Exception as err:
        rows.append(("flower photos", False, " ".join(str(err).splitlines()[:3])))
    rows.append(("CLIP ViT-B/32 weights",) + _clip_weights())
    return rows


def _clip_weights() -> Tuple[bool, str]:
    """Whether the CLIP weights that lab 05 would load are on disk (no download attempted)."""
    name = os.environ.get("LABUTILS_CLIP_MODEL") or "ViT-B/32"
    if Path(name).expanduser().is_file():
        return True, f"{name} (LABUTILS_CLIP_MODEL)"
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from clip.clip import _MODELS
    except ImportError:
        return False, "the `clip` package (openai-clip) is not installed"
    if name not in _MODELS:
        return False, f"LABUTILS_CLIP_MODEL={name} is neither a file nor a CLIP model name"
    root = Path(os.environ.get("LABUTILS_CLIP_DOWNLOAD_ROOT") or "~/.cache/clip").expanduser()
    file = root / os.path.basename(_MODELS[name])
    if file.is_file():
        return True, str(file)
    return False, f"{name} not in {root} (set LABUTILS_CLIP_MODEL to the file)"


def run_doctor(data_dir: Optional[str] = None) -> int:
    import torch

    from ..config import MIN_BF16_CAPABILITY, cpu_flags, cpu_supports_bf16
    advice: List[str] = []

    _section("Python")
    print(f"{sys.version.split()[0]} ({sys.executable}) on {platform.platform()}")

    _section("PyTorch")
    built_cuda = torch.version.cuda
    print(f"torch {torch.__version__}, built for CUDA {built_cuda or 'none (CPU-only build)'}")
    usable = torch.cuda.is_available()
    print(f"CUDA usable: {'yes' if usable else 'no'}")

    _section("GPUs")
    if usable:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
                  f"{p.major}.{p.minor}, bf16 "
                  + ("yes (bf16 autocast on)" if (p.major, p.minor) >= MIN_BF16_CAPABILITY
                     else "no: emulated below compute capability 8.0 (fp32)"))
    else:
        print("none visible to torch")

    _section("NVIDIA driver")
    driver, driver_cuda = driver_info()
    if driver is None:
        print("nvidia-smi not found or failed: no NVIDIA driver here")
        if usable:
            print("torch sees a GPU, though: the driver's CUDA version is unknown")
    else:
        cuda_text = f"{driver_cuda[0]}.{driver_cuda[1]}" if driver_cuda else "unknown"
        print(f"driver {driver}, supports CUDA up to {cuda_text}")
        if built_cuda and driver_cuda:
            ok, how = torch_build_supported(built_cuda, driver, driver_cuda)
            print(f"torch's CUDA {built_cuda}: {how}")
            if not ok:
                tag = wheel_for(driver, driver_cuda)
                advice.append(f"this driver ({driver}, CUDA {cuda_text}) is too old for torch's "
                              f"CUDA {built_cuda}: pip install torch torchvision --index-url "
                              f"{INDEX_URL.format(tag=tag)}")
    # Always, healthy node or not: the build that fits this driver (README's table).
    if driver is None and usable and built_cuda:   # GPU usable, nvidia-smi missing
        tag = "cu" + "".join(built_cuda.split(".")[:2])
        print(f"torch build for this machine (the one installed works): pip install torch "
              f"torchvision --index-url {INDEX_URL.format(tag=tag)}")
    else:
        print(f"torch build for this machine: {wheel_line(driver, driver_cuda)}")
    also = [t for t in compatible_wheels(driver, driver_cuda)
            if t != wheel_for(driver, driver_cuda)]
    if also:
        print(f"  this driver also runs: {', '.join(also)} (newer torch releases drop old "
              "builds; pick one your torch release is published for)")
    if driver is not None and not usable and not advice:
        tag = wheel_for(driver, driver_cuda)
        advice.append("a driver is present but torch cannot use a GPU"
                      + (" (torch is a CPU-only build)" if not built_cuda else "")
                      + f": pip install torch torchvision --index-url {INDEX_URL.format(tag=tag)}"
                      " (and check CUDA_VISIBLE_DEVICES / your job's GPU request)")

    _section("CPU")
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor() or "unknown")
    flags = cpu_flags()
    speed = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
             if f in flags]
    print(f"{model}; {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} "
          f"usable here); torch uses {torch.get_num_threads()} threads")
    print(f"speed flags: {', '.join(speed) or 'none found'}; native bf16 "
          f"{'yes (bf16 autocast on)' if cpu_supports_bf16() else 'no (fp32)'}")

    _section("Compiler")
    gcc = _run(["gcc", "--version"])
    print(gcc.splitlines()[0] if gcc else "gcc not found (only torch.compile needs it)")

    _section("Disk")
    where = Path(data_dir or os.environ.get("LABUTILS_DATA_DIR") or "data")
    probe = next((p for p in [where, *where.resolve().parents] if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free / 2**30
    print(f"{free:.1f} GiB free at {probe.resolve()} (data dir {where})")
    if free < 2:
        advice.append(f"less than 2 GiB free at {probe}: data, CLIP weights (~340 MB) and "
                      "checkpoints need room")

    _section("Data and weights")
    for item, present, detail in _data_checks(data_dir):
        print(f"{item}: {'present' if present else 'MISSING'} - {detail}")
        if not present:
            advice.append(f"{item} missing: on a machine with internet run `labutils prepare "
                          f"DIR`, then set {_ENV_FOR[item]} as it prints")

    _section("Advice")
    if driver is None and not usable:
        advice.append("no GPU: the CPU-only wheel is smaller: pip install torch torchvision "
                      f"--index-url {INDEX_URL.format(tag='cpu')}; use the 'quick' profile")
    if usable:
        advice.append("GPU ready: the 'full' profile reproduces the course's settings")
    for line in advice:
        print(f"- {line}")
    print("- older drivers: https://pytorch.org/get-started/previous-versions/ lists which torch "
          "releases have which cuXXX builds")
    return 0


def _read(path: str) -> List[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


# --- prepare ---------------------------------------------------------------------------------------

def _stage_fashion_mnist(dest: Path) -> str:
    from ..data.fashion_mnist import SYSTEM_DIR, _FILES, _complete, _file_in
    if _complete(dest):
        return f"already complete in {dest}"
    if _complete(SYSTEM_DIR):   # copy the system's files rather than downloading
        dest.mkdir(parents=True, exist_ok=True)
        for stem in _FILES.values():
            src = _file_in(SYSTEM_DIR, stem)
            tmp = dest / f".{src.name}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest / src.name)
    else:
        import torchvision
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(dest), train=train, download=True)
    if not _complete(dest):
        raise FileNotFoundError(f"download finished but {dest} lacks some IDX files")
    return f"export LABUTILS_DATA_DIR={dest.resolve()}"


def _stage_flowers(dest: Path, archive: Optional[str]) -> str:
    from ..data.flowers import prepare_flowers
    path = prepare_flowers(dest, archive=archive)
    return f"export LABUTILS_FLOWERS_DIR={Path(path).resolve()}"


def _stage_clip(dest: Path, name: str) -> str:
    from ..clip.encoder import fetch_model, load_checkpoint
    path = fetch_model(name, download_root=str(dest))
    load_checkpoint(path)   # proves the file loads
    return f"export LABUTILS_CLIP_MODEL={Path(path).resolve()}"


def run_prepare(dest: Path, only: Optional[Sequence[str]] = None,
                flowers_archive: Optional[str] = None, clip_model: str = "ViT-B/32") -> int:
    """Fill ``dest`` with the requested items; exit code 1 when any of them failed."""
    items = list(only or ("fmnist", "flowers", "clip"))
    steps = {"fmnist": ("Fashion-MNIST", lambda: _stage_fashion_mnist(dest / "fashion-mnist")),
             "flowers": ("flower photos", lambda: _stage_flowers(dest / "flowers",
                                                                 flowers_archive)),
             "clip": (f"CLIP {clip_model}", lambda: _stage_clip(dest / "clip", clip_model))}
    ok, failed = [], []
    for item in items:
        title, stage = steps[item]
        print(f"{title}: ...", flush=True)
        try:
            ok.append((title, stage()))
            print(f"{title}: ok", flush=True)
        except Exception as err:  # offline, disk full, bad archive: report and go on
            failed.append((title, f"{type(err).__name__}: {err}"))
            print(f"{title}: FAILED: {type(err).__name__}: {err}", flush=True)
    print("\nSummary:")
    for title, line in ok:
        print(f"  ok      {title}: {line}")
    for title, reason in failed:
        print(f"  FAILED  {title}: {reason.splitlines()[0]}")
    if failed:
        print("Some items could not be staged (offline? run this on a login node with internet, "
              "or pass --flowers-archive for a local copy).")
        return 1
    print("Put the export lines above in your job script (compute nodes need no internet).")
    return 0
