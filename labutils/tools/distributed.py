"""Multi-GPU (and multi-process CPU) training with DistributedDataParallel, launched by torchrun.

``torchrun --nproc_per_node=N -m labutils train LAB ...`` starts N processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init` reads
them. GPUs talk over NCCL, CPU processes over gloo. Every rank trains on its own shard of each
epoch (``BatchLoader(rank=, world_size=)``); rank 0 alone logs, samples and writes checkpoints.

Decisions that must be the same on every rank (stop now? was the loss finite?) are agreed
with a collective, so no rank is ever left waiting in an all-reduce that the others skipped.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import os
from typing import Any, Callable, List, Optional

import torch
import torch.distributed as dist

from ..config import ConfigError, get_device


@dataclasses.dataclass
class DistContext:
    """Where this process sits in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    _main_first_calls: int = dataclasses.field(default=0, repr=False)
    # CPU tensors' collectives (gloo): the default group when that is gloo, else a second one.
    control_group: Any = dataclasses.field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives that are no-ops in a single process -------------------------------------

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, *flags: bool) -> tuple:
        """Each flag true on every rank when it is true on at least one: one collective for all
        flags, over the CPU (gloo) control group: the GPU is never waited for, so the training
        loop can ask every step ("stop now?", "checkpoint due?")."""
        if not self.enabled:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group)
        return tuple(bool(v) for v in t.tolist())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def main_first(self, fn: Callable[[], Any], timeout_s: Optional[float] = None) -> Any:
        """``fn()`` on rank 0 first, then on the other ranks (rank 0 may write caches they read).

        The other ranks wait on torchrun's key-value store, not on a NCCL barrier: preparing the
        data (CLIP, a stand-in CLIP to train, ~2,000 photos to encode) can take longer than a
        collective's timeout, and a failure on rank 0 reaches them as a message, not a hang.
        """
        if not self.enabled:
            return fn()
        store = dist.distributed_c10d._get_default_store()
        key = "labutils/main_first/" + str(self._main_first_calls)
        self._main_first_calls += 1
        if self.is_main:
            try:
                result = fn()
            except BaseException as err:
                store.set(key, f"error: {type(err).__name__}: {err}".splitlines()[0])
                raise
            store.set(key, "ok")
            return result
        wait_s = setup_timeout_s() if timeout_s is None else timeout_s
        try:
            store.wait([key], datetime.timedelta(seconds=wait_s))
        except Exception as err:  # the store's timeout or a lost rank 0
            raise RuntimeError(f"rank {self.rank}: rank 0 did not finish preparing within "
                               f"{wait_s:.0f} s (LABUTILS_SETUP_TIMEOUT): {err}") from None
        status = store.get(key).decode()
        if status != "ok":
            raise RuntimeError(f"rank {self.rank}: rank 0 failed while preparing: "
                               f"{status[len('error: '):]}")
        return fn()

    def _object_device(self):
        return self.device if self.device.type == "cuda" else None


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: Optional[str] = None) -> DistContext:
    """Join the process group when torchrun started us; else a single-process context."""
    if not launched_by_torchrun():
        return DistContext(device=get_device(device))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = get_device(device)  # checks an explicit "cuda" against what torch sees
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} but only {torch.cuda.device_count()} "
                              "GPUs visible: use --nproc_per_node <= the GPU count")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(**process_group_kwargs(backend, dev))
    # Small decisions (stop? save?) travel over gloo on the CPU: no GPU sync for them.
    control = (dist.new_group(backend="gloo",
                              timeout=datetime.timedelta(seconds=collective_timeout_s()))
               if dist.get_backend() != "gloo" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                       control_group=control)


# Seconds a collective may wait before NCCL/gloo give up (NCCL's default is 10 minutes). Rank 0
# alone writes checkpoints and draws sample grids, which the others wait for in the next collective.
DEFAULT_COLLECTIVE_TIMEOUT_S = 30 * 60
# Seconds the other ranks wait for rank 0 to prepare the data (main_first): a stand-in CLIP may
# train and ~2,000 photos may be encoded first.
DEFAULT_SETUP_TIMEOUT_S = 2 * 60 * 60


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: give a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{name}={text!r}: give a number of seconds > 0")
    return value


def collective_timeout_s() -> float:
    """``LABUTILS_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_COLLECTIVE_TIMEOUT_S`."""
    return _env_seconds("LABUTILS_DIST_TIMEOUT", DEFAULT_COLLECTIVE_TIMEOUT_S)


def setup_timeout_s() -> float:
    """``LABUTILS_SETUP_TIMEOUT`` seconds, default :data:`DEFAULT_SETUP_TIMEOUT_S`."""
    return _env_seconds("LABUTILS_SETUP_TIMEOUT", DEFAULT_SETUP_TIMEOUT_S)


def process_group_kwargs(backend: str, device: torch.device) -> dict:
    """Arguments of ``init_process_group``: an explicit timeout, and for NCCL the rank's GPU
    (``device_id=``: no guessing which GPU a rank uses, and NCCL connects eagerly)."""
    kwargs = dict(backend=backend,
                  timeout=datetime.timedelta(seconds=collective_timeout_s()))
    if (backend == "nccl" and device.type == "cuda"
            and "device_id" in inspect.signature(dist.init_process_group).parameters):
        kwargs["device_id"] = device   # torch >= 2.3
    return kwargs


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext,
               find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP around ``model`` in a distributed run (rank 0's weights are broadcast); else ``model``."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (for sampling and checkpoints)."""
    return getattr(model, "module", model)


def loss_reducer(ctx: DistContext) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """For :func:`labutils.train`'s ``reduce_loss``: the mean over ranks of a window of losses
    (None in a single process).

    The loop checks its losses for NaN/inf every ``log_every`` steps; reducing the window first
    means every rank sees the same values and stops at the same step, and rank 0 logs the job's
    mean loss. One all-reduce per window, not one per step.
    """
    if not ctx.enabled:
        return None

    def reduce(losses: torch.Tensor) -> torch.Tensor:
        mean = losses.detach().clone().float()
        dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        return mean / ctx.world_size
    return reduce


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes in registration order: equal iff the weights are equal."""
    h = hashlib.sha256()
    for name, p in unwrap(model).named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
