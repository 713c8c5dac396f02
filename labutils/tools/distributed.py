"""Multi-GPU (and multi-process CPU) training with DistributedDataParallel, launched by torchrun
or by Slurm's ``srun``.

``torchrun --nproc_per_node=N -m labutils train LAB ...`` starts N processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init` reads
them. ``srun --ntasks=N labutils train LAB ...`` starts N tasks with ``SLURM_PROCID``,
``SLURM_NTASKS`` and ``SLURM_LOCALID``: :func:`slurm_ranks` turns those into the same, with the
step's first node as the address and a port derived from the job and step ids. GPUs talk over NCCL, CPU processes over gloo. Every rank trains on its own shard of each
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


@dataclasses.dataclass
class Ranks:
    """Where a process sits in a launch and how the ranks find each other."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str = "env://"   # torchrun's MASTER_ADDR / MASTER_PORT


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[03-05,9]`` -> ``gpu03``, ``a,b`` -> ``a``.

    What ``scontrol show hostnames`` would print first, without needing scontrol on the node."""
    nodelist = nodelist.strip()
    head, _, rest = nodelist.partition("[")
    if "," in head:                       # "a,b[1-2]": the first name is plain
        return head.split(",")[0]
    if not rest:
        return head
    first = rest.split(",")[0].split("-")[0].rstrip("]")
    return head + first


# srun's tasks meet on this port range: the port follows from the job and step ids, so every
# rank computes the same one, and two steps (or jobs) on one node rarely pick the same.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000


def slurm_ranks(env=None) -> Optional[Ranks]:
    """The ranks of a task that ``srun`` started as one of several in its step, else None.

    A batch script's own shell also sees ``SLURM_NTASKS`` and ``SLURM_PROCID=0``: only a job
    *step* (``SLURM_STEP_ID``) with several tasks is a distributed launch. ``MASTER_ADDR`` /
    ``MASTER_PORT``, when set, win over the node list and the derived port."""
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" not in env or "SLURM_PROCID" not in env:
        return None
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if world <= 1:
        return None
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else "127.0.0.1")
    ids = int(env.get("SLURM_JOB_ID", "0")) * 7 + int(env.get("SLURM_STEP_ID", "0") or 0)
    port = int(env.get("MASTER_PORT") or SLURM_PORT_BASE + ids % SLURM_PORT_SPAN)
    return Ranks(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", "0")),
                 f"tcp://{addr}:{port}")


def launch_ranks() -> Optional[Ranks]:
    """torchrun's ranks, else srun's, else None (a single process)."""
    if launched_by_torchrun():
        return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                     int(os.environ.get("LOCAL_RANK", "0")))
    return slurm_ranks()


def init(device: Optional[str] = None) -> DistContext:
    """Join the process group when torchrun or srun started us; else a single-process context."""
    ranks = launch_ranks()
    if ranks is None:
        return DistContext(device=get_device(device))
    rank, world_size, local_rank = ranks.rank, ranks.world_size, ranks.local_rank
    dev = get_device(device)  # checks an explicit "cuda" against what torch sees
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} but only {torch.cuda.device_count()} "
                              "GPUs visible: use --nproc_per_node (or srun's --ntasks-per-node)"
                              " <= the GPU count")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(**process_group_kwargs(backend, dev),
                                init_method=ranks.init_method, rank=rank, world_size=world_size)
    # Small decisions (stop? save?) travel over gloo on the CPU: no GPU sync for them.
    control = (dist.new_group(backend="gloo",
                              timeout=datetime.timedelta(seconds=collective_timeout_s()))
               if dist.get_backend() != "gloo" else None)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                       control_group=control)


def slurm_job_note(env=None) -> Optional[str]:
    """"Slurm job 42, start 2 (SLURM_RESTART_COUNT=1)" for the run's log, or None outside Slurm:
    a requeued job's output shows which start each part of the log belongs to."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    restarts = env.get("SLURM_RESTART_COUNT", "0") or "0"
    return (f"Slurm job {job} on {env.get('SLURMD_NODENAME', '?')}, start "
            f"{int(restarts) + 1 if restarts.isdigit() else '?'} "
            f"(SLURM_RESTART_COUNT={restarts})")


def report_exit(code: int, ctx: DistContext) -> int:
    """``code``, written by rank 0 to ``LABUTILS_EXIT_FILE`` when that is set: torchrun exits
    with a code of its own, so its job script reads the workers' outcome (75: requeue) there."""
    path = os.environ.get("LABUTILS_EXIT_FILE")
    if path and ctx.is_main:
        try:
            with open(path, "w") as f:
                f.write(f"{code}\n")
        except OSError as err:
            print(f"labutils: could not write LABUTILS_EXIT_FILE={path}: {err}", flush=True)
    return code


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
