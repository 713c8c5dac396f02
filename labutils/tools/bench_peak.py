"""The physical limit: the floating-point operations a second this machine's matrix multiply
reaches, and the operations a lab's training step needs, so ``labutils bench`` can say what
fraction of the machine a step uses, and so how much any faster code path could still gain.

A step that already runs near the measured peak gets faster only by doing less arithmetic (a
smaller model or batch, fewer steps) or on faster hardware, not by better kernels.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, Optional

import torch

from ..config import cpu_supports_bf16, cuda_supports_bf16

# Square matrices large enough that the multiply runs at the hardware's rate, not its overheads
# (2 n^3 operations: 17 GFLOP on a CPU, 1.1 TFLOP on a GPU), small enough for seconds.
MATMUL_N = {"cpu": 2048, "cuda": 8192}
PROBE_BATCH = 2   # FLOPs are counted at this batch and twice it, then extrapolated


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_throughput(device: torch.device, dtype: torch.dtype, n: Optional[int] = None,
                      min_seconds: float = 1.0, min_reps: int = 3) -> Dict:
    """GFLOP/s of an ``n`` x ``n`` matrix multiply in ``dtype``: one untimed warm-up, then
    repeated until ``min_seconds`` and ``min_reps``; ``gflops`` from the fastest repetition
    (the limit), ``gflops_median`` from the median."""
    n = n or MATMUL_N.get(device.type, MATMUL_N["cpu"])
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)                 # the library picks and warms its kernel
    sync_device(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync_device(device)
        times.append(time.perf_counter() - t)
    flop = 2 * n ** 3
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "reps": len(times),
            "gflops": flop / min(times) / 1e9,
            "gflops_median": flop / statistics.median(times) / 1e9}


def machine_peak(device: torch.device, min_seconds: float = 1.0,
                 n: Optional[int] = None) -> Dict:
    """fp32 always, bf16 where the hardware has it natively (emulated bf16 is slower than
    fp32, so it is no limit worth showing). On CUDA, fp32 with TF32 allowed, as the labs train
    (:func:`labutils.training.enable_cuda_speedups`)."""
    peak = {}
    if device.type == "cuda":
        from ..training import enable_cuda_speedups
        enable_cuda_speedups()
        peak["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    peak["fp32"] = matmul_throughput(device, torch.float32, n, min_seconds)
    native = cuda_supports_bf16(device) if device.type == "cuda" else cpu_supports_bf16()
    if native:
        peak["bf16"] = matmul_throughput(device, torch.bfloat16, n, min_seconds)
    return peak


def step_flop(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
              probe: int = PROBE_BATCH) -> float:
    """Floating-point operations of one training step's forward and backward at the batch of
    ``x`` (``torch.utils.flop_counter``: matrix multiplies and convolutions; the optimiser's
    elementwise update is a rounding error beside them and not counted).

    Counted at batches ``probe`` and ``2 probe`` and extrapolated: a step's count is affine in
    the batch size, and this keeps the count to seconds for the 44.9M-parameter U-Net.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def count(b: int) -> int:
        with FlopCounterMode(display=False) as mode:
            loss_fn(model, x[:b], y[:b]).backward()
        model.zero_grad(set_to_none=True)
        return mode.get_total_flops()

    batch = len(x)
    if batch <= 2 * probe:
        return float(count(batch))
    small, double = count(probe), count(2 * probe)
    return small + (double - small) / probe * (batch - probe)
