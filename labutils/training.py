"""One training loop for every lab, used by the notebooks and by ``labutils train``.

A lab supplies a model, a :class:`~labutils.data.BatchLoader`, an optimiser and a loss function
``loss_fn(model, x, y) -> scalar``; the loop adds what every run needs: bf16 autocast where the
hardware has it, a progress bar, a stop on NaN/inf, hooks for previews and checkpoints, a clean
stop on request (preemption), and timing numbers to compare machines with.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from .config import autocast, use_bf16
from .diffusion import DDPM, get_context_mask

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; nothing after the last good step was saved."""


@dataclasses.dataclass
class TrainResult:
    """What a run did, and how fast."""

    losses: List[float] = dataclasses.field(default_factory=list)   # one per step of this run
    epoch_times: List[float] = dataclasses.field(default_factory=list)
    step: int = 0            # global step reached (counts steps of earlier, resumed runs)
    epoch: int = 0           # epochs completed
    images: int = 0          # images trained on in this run
    wall_time: float = 0.0   # seconds
    cpu_time: float = 0.0    # process CPU seconds
    stopped_early: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_time if self.wall_time > 0 else 0.0

    def summary(self) -> str:
        per_epoch = (f", {sum(self.epoch_times) / len(self.epoch_times):.1f} s/epoch"
                     if self.epoch_times else "")
        return (f"{len(self.losses)} steps (global step {self.step}) in {self.wall_time:.1f} s "
                f"wall, {self.cpu_time:.1f} s CPU, {self.images_per_second:.0f} images/s"
                f"{per_epoch}" + (" [stopped early]" if self.stopped_early else ""))


# --- the labs' losses ----------------------------------------------------------------------------

def denoising_loss(noise_fn: Callable[[torch.Tensor], torch.Tensor]) -> LossFn:
    """Lab 01: predict the clean image from ``noise_fn(x)``; MSE on the image."""
    def loss(model, x, y):
        return F.mse_loss(model(noise_fn(x)).float(), x)
    return loss


def ddpm_loss(ddpm: DDPM) -> LossFn:
    """Labs 02-03: MSE between the noise added at a random step and the model's estimate."""
    def loss(model, x, y):
        return ddpm.get_loss(model, x, ddpm.timesteps(len(x)))
    return loss


def guided_ddpm_loss(ddpm: DDPM, drop_prob: float = 0.1, n_classes: Optional[int] = None) -> LossFn:
    """Labs 04-06: the DDPM loss with context ``y`` (class labels or embeddings), randomly dropped."""
    def loss(model, x, y):
        c, c_mask = get_context_mask(y, drop_prob, n_classes)
        return ddpm.get_loss(model, x, ddpm.timesteps(len(x)), c, c_mask)
    return loss


# --- the loop ------------------------------------------------------------------------------------

def train(model: torch.nn.Module, loss_fn: LossFn, loader, optimizer: torch.optim.Optimizer,
          epochs: int, *, start_step: int = 0, amp: Optional[bool] = None, progress: bool = True,
          desc: str = "train", on_step: Optional[Callable[[int, int, float], None]] = None,
          on_epoch_end: Optional[Callable[[int, int], None]] = None,
          should_stop: Optional[Callable[[], bool]] = None) -> TrainResult:
    """Train for ``epochs`` epochs of ``loader``, resuming at global step ``start_step``.

    ``on_step(step, epoch, loss)`` runs after every optimiser step, ``on_epoch_end(epoch, step)``
    after every epoch (epochs counted from 0); ``should_stop()`` is asked after every step and
    ends the run early when true. Raises :class:`NonFiniteLossError` on a NaN/inf loss, before
    any hook sees that step.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the data loader yields no batches (fewer images than one batch?)")
    device = next(model.parameters()).device
    amp = use_bf16(device) if amp is None else amp
    result = TrainResult(step=start_step, epoch=start_step // steps_per_epoch)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * steps_per_epoch, initial=start_step, desc=desc,
                   dynamic_ncols=True, leave=True)
    try:
        for epoch in range(result.epoch, epochs):
            skip = result.step - epoch * steps_per_epoch   # batches done before a resume
            if hasattr(loader, "set_epoch"):   # BatchLoader: skips without building batches
                loader.set_epoch(epoch, start_batch=skip)
                batches = loader
            else:
                batches = itertools.islice(loader, skip, None)
            t_epoch = time.perf_counter()
            for x, y in batches:
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, amp):
                    loss = loss_fn(model, x, y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss is {value} at step {result.step + 1} (epoch {epoch}); stopping. "
                        "The last checkpoint is the last good state: try a lower learning rate.")
                loss.backward()
                optimizer.step()
                result.step += 1
                result.images += len(x)
                result.losses.append(value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", refresh=False)
                if on_step is not None:
                    on_step(result.step, epoch, value)
                if should_stop is not None and should_stop():
                    result.stopped_early = True
                    return result
            result.epoch = epoch + 1
            result.epoch_times.append(time.perf_counter() - t_epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch, result.step)
        return result
    finally:
        if bar is not None:
            bar.close()
        result.wall_time = time.perf_counter() - wall0
        result.cpu_time = time.process_time() - cpu0
