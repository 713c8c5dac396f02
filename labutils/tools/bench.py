"""``labutils bench``: training-step speed of each lab's model, fp32 against bf16 autocast.

A benchmark, not a test: it reports times and ratios measured in the same run on the same
machine, and asserts nothing. Batches are random tensors of the lab's shape, so no data set is
needed; the model, loss and optimiser are the lab's own (:class:`labutils.labs.Lab`).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from ..config import autocast, cpu_supports_bf16, get_device, lab_settings
from ..labs import Lab


def time_steps(lab: str, device: torch.device, batch_size: Optional[int], steps: int,
               bf16: bool, warmup: int = 2) -> float:
    """Seconds per training step (forward, backward, Adam) of ``lab``'s model."""
    settings = lab_settings(lab, "full")          # the course's model and batch
    lab_run = Lab(settings, device)
    torch.manual_seed(0)
    model = lab_run.build_model()
    optimizer = lab_run.optimizer(model)
    loss_fn = lab_run.loss_fn()
    x, y = lab_run.random_batch(batch_size or settings.batch_size)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def run_bench(labs: Sequence[str], device=None, batch_size: Optional[int] = None,
              steps: int = 5) -> List[Dict]:
    device = get_device(device)
    native = cpu_supports_bf16() if device.type == "cpu" else torch.cuda.is_bf16_supported()
    print(f"device {device} ({torch.get_num_threads()} CPU threads); native bf16: "
          f"{'yes' if native else 'no'}; {steps} timed steps after 2 warm-up steps")
    print(f"{'lab':<18}{'batch':>6}{'fp32 s/step':>13}{'bf16 s/step':>13}{'fp32/bf16':>11}"
          f"{'images/s fp32':>15}")
    rows = []
    for lab in labs:
        b = batch_size or lab_settings(lab, "full").batch_size
        fp32 = time_steps(lab, device, b, steps, bf16=False)
        bf16 = time_steps(lab, device, b, steps, bf16=True)
        rows.append(dict(lab=lab, batch=b, fp32=fp32, bf16=bf16))
        print(f"{lab:<18}{b:>6}{fp32:>13.3f}{bf16:>13.3f}{fp32 / bf16:>11.2f}{b / fp32:>15.0f}",
              flush=True)
    return rows
