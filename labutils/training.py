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
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import autocast, use_bf16
from .context import is_class_labels, one_hot
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


class GuidedLoss:
    """Labs 04-06: the DDPM loss with context ``y`` (class labels or embeddings), randomly dropped.

    Class labels are checked against ``n_classes`` once per data set (:meth:`check_labels`, which
    :func:`train` calls with its loader's labels), not on every batch: on a GPU each check would
    wait for the device. Batches from a loader whose labels were not checked are checked one by
    one, so a bad label is always an error that names it.
    """

    def __init__(self, ddpm: DDPM, drop_prob: float = 0.1, n_classes: Optional[int] = None):
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1], got {drop_prob}")
        self.ddpm, self.drop_prob, self.n_classes = ddpm, drop_prob, n_classes
        self._checked: Optional[torch.Tensor] = None   # the labels tensor already checked

    def check_labels(self, labels: torch.Tensor) -> None:
        """Check a whole data set's class labels once (one host sync); later batches drawn from
        it skip the check."""
        if is_class_labels(labels):
            if self.n_classes is None:
                raise ValueError("integer class labels need n_classes= to build one-hot context")
            one_hot(labels[:0], self.n_classes)            # dtype check, no device work
            if labels.numel():
                lo, hi = torch.stack((labels.min(), labels.max())).tolist()
                if lo < 0 or hi >= self.n_classes:
                    raise ValueError(f"class labels must lie in [0, {self.n_classes}), got "
                                     f"[{lo}, {hi}]")
        self._checked = labels

    def __call__(self, model, x, y):
        if is_class_labels(y) and self._checked is not None:
            # Checked with the data set: one-hot without another look at the values.
            c = F.one_hot(y.long(), num_classes=self.n_classes).float()
            c_mask = torch.bernoulli(torch.full_like(c, 1.0 - self.drop_prob))
        else:
            c, c_mask = get_context_mask(y, self.drop_prob, self.n_classes)
        return self.ddpm.get_loss(model, x, self.ddpm.timesteps(len(x)), c, c_mask)


def guided_ddpm_loss(ddpm: DDPM, drop_prob: float = 0.1,
                     n_classes: Optional[int] = None) -> GuidedLoss:
    """Labs 04-06: the DDPM loss with context ``y`` (class labels or embeddings), randomly dropped."""
    return GuidedLoss(ddpm, drop_prob, n_classes)


# --- the GPU's fast paths ---------------------------------------------------------------------

def enable_cuda_speedups() -> None:
    """cuDNN autotuning (the labs' shapes are fixed) and TF32 matrix multiplies on Ampere+."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True   # CUDA only: CPU matmuls stay fp32


# Steps between reads of the losses on a GPU (each read waits for the device): the NaN/inf check,
# the progress bar and ``on_log`` run at this cadence. On a CPU reading is free: every step.
CUDA_LOG_EVERY = 25


# --- the loop ------------------------------------------------------------------------------------

def train(model: torch.nn.Module, loss_fn: LossFn, loader, optimizer: torch.optim.Optimizer,
          epochs: int, *, start_step: int = 0, amp: Optional[bool] = None, progress: bool = True,
          desc: str = "train", on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None,
          on_epoch_end: Optional[Callable[[int, int], None]] = None,
          should_stop: Optional[Callable[[], bool]] = None, log_every: Optional[int] = None,
          on_log: Optional[Callable[[List[Tuple[int, int, float]]], None]] = None,
          reduce_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> TrainResult:
    """Train for ``epochs`` epochs of ``loader``, resuming at global step ``start_step``.

    The losses stay on the device and are read every ``log_every`` steps (default: every step on
    a CPU, :data:`CUDA_LOG_EVERY` on a GPU), at every epoch end and when the run ends: a GPU never
    waits for the host in between. At each read the window of losses is (optionally) passed
    through ``reduce_loss`` (torchrun: the mean over ranks), checked for NaN/inf, appended to
    ``TrainResult.losses`` and handed to ``on_log([(step, epoch, loss), ...])``.

    ``on_step(step, epoch, loss)`` runs after every optimiser step with the step's loss as a
    0-dim tensor (``float(loss)`` or ``f"{loss:.4f}"`` reads it, which on a GPU waits for the
    step); ``on_epoch_end(epoch, step)`` after every epoch (epochs counted from 0);
    ``should_stop()`` is asked after every step and ends the run early when true. Raises
    :class:`NonFiniteLossError` on a NaN/inf loss, naming its step; with ``log_every=1`` before
    that step updates the weights or any hook sees it, else at the next read (up to
    ``log_every - 1`` steps later: weights and checkpoints are checked separately).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the data loader yields no batches (fewer images than one batch?)")
    device = next(model.parameters()).device
    if log_every is None:
        log_every = CUDA_LOG_EVERY if device.type == "cuda" else 1
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if device.type == "cuda":
        enable_cuda_speedups()
    check_labels = getattr(loss_fn, "check_labels", None)
    if check_labels is not None and getattr(loader, "labels", None) is not None:
        check_labels(loader.labels)           # once per data set, not per batch
    amp = use_bf16(device) if amp is None else amp
    result = TrainResult(step=start_step, epoch=start_step // steps_per_epoch)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * steps_per_epoch, initial=start_step, desc=desc,
                   dynamic_ncols=True, leave=True)
    pending: List[torch.Tensor] = []          # this window's losses, still on the device
    window: List[Tuple[int, int]] = []        # their (step, epoch)

    def read_losses() -> None:
        """One host sync for the whole window: check, record and report its losses."""
        if not pending:
            return
        losses = torch.stack(pending)
        if reduce_loss is not None:
            losses = reduce_loss(losses)
        values = losses.tolist()
        records = [(step, epoch, value) for (step, epoch), value in zip(window, values)]
        pending.clear()
        window.clear()
        for step, epoch, value in records:
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss is {value} at step {step} (epoch {epoch}); stopping. "
                    "The last checkpoint is the last good state: try a lower learning rate.")
        result.losses.extend(value for _, _, value in records)
        if bar is not None:
            bar.set_postfix(epoch=records[-1][1], loss=f"{records[-1][2]:.4f}", refresh=False)
        if on_log is not None:
            on_log(records)

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
                value = loss.detach().float()
                pending.append(value)
                window.append((result.step + 1, epoch))
                if len(pending) >= log_every:   # before backward: a NaN here updates nothing
                    read_losses()
                loss.backward()
                optimizer.step()
                result.step += 1
                result.images += len(x)
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(result.step, epoch, value)
                if should_stop is not None and should_stop():
                    read_losses()
                    result.stopped_early = True
                    return result
            read_losses()
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
