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
import hashlib
import os
from typing import Any, List, Optional

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

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

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
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


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


def agree_on_loss(loss_fn, ctx: DistContext):
    """``loss_fn`` whose *value* is the mean over ranks while its gradient stays this rank's.

    The training loop stops on a NaN/inf value; making the value global means every rank
    sees the same NaN and stops at the same step, and rank 0 logs the job's mean loss.
    """
    if not ctx.enabled:
        return loss_fn

    def loss(model, x, y):
        local = loss_fn(model, x, y)
        mean = local.detach().clone().float()
        dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        mean /= ctx.world_size
        return local + (mean - local.detach()).to(local.dtype)
    return loss


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes in registration order: equal iff the weights are equal."""
    h = hashlib.sha256()
    for name, p in unwrap(model).named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
