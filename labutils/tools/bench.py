"""``labutils bench``: labutils' training and sampling against the course's own way, same run.

A benchmark, not a test: it measures and reports, and asserts nothing about time. For each lab
(default: 03 ``fmnist-optimized``, 04 ``fmnist-cfg``, 05 ``flowers-clip``) it measures two
configurations on the same machine, one after the other:

``baseline`` -- the course's way (:mod:`labutils.tools.course_baseline`): fp32, eager, default
    memory format, plain ``torch.optim.Adam``, a ``DataLoader`` whose items are transformed one
    by one (PIL for Fashion-MNIST; ``RandomCrop`` + flip of on-device tensors for flowers), and
    sampling with DDPM over all T steps in fp32.
``ours`` -- labutils' path: :class:`~labutils.labs.Lab`'s model, optimiser (fused Adam on CUDA)
    and loss, :class:`~labutils.data.BatchLoader` over ``lab.dataset()`` with ``lab.augment()``,
    the real :func:`labutils.training.train` loop (bf16 autocast where
    :func:`~labutils.config.use_bf16` says so), and sampling with ``lab.sampler(50, "ddim")``,
    plus DDPM over all T steps with the same settings (so the sampler's gain and the precision's
    gain can be told apart).

What is measured, per lab and configuration:

- training step (forward, backward, optimiser) at the course batch of 128 on one fixed batch:
  ``--warmup`` untimed steps, then ``--reps`` timed ones; median and spread (min-max, IQR) in ms,
  ``torch.cuda.synchronize()`` around each step on CUDA; images/s from the median;
- an epoch's wall time *including data*: K steps through the data path timed as one block and
  scaled to the epoch's steps ("est. from K steps"; ``--full-epoch`` times a real epoch);
- the one-off data preparation (decoding, resizing, moving to the device);
- peak memory: the child process's peak RSS (``ru_maxrss``) and on CUDA
  ``torch.cuda.max_memory_allocated``;
- sampling the course's picture (lab 04: 7 guidance weights x 10 classes; lab 05: 7 x 3 prompts;
  labs 02-03: 16 images): one warm-up reverse step, then a few timed reverse steps scaled to
  the whole chain ("est."), or every step with ``--exact-sampling`` (the default on CUDA).

Before the labs, when training is measured: the machine's own arithmetic limit, a large fp32
(and, where native, bf16) matrix multiply (:mod:`.bench_peak`); each training step is then
also reported as GFLOP a step and the share of that limit it reaches.

This module measures; :mod:`.bench_report` turns the results into rows, ``bench.md`` and
``bench.json``; :mod:`.course_baseline` is the course's own way of doing each thing.

Each (lab, configuration, training|sampling) runs in its own child process (``spawn``) that
sizes its threads like every labutils command (:func:`labutils.config.set_threads`): peak RSS is
that measurement's own and no run warms another's caches. Results go to ``bench.json`` and
``bench.md`` in ``--out`` (default ``runs/bench-<timestamp>/``), written after every measurement.

On a small CPU the 44.9M-parameter flowers model is slow (a course-faithful fp32 step at batch
128 takes ~30 s on 2 cores), so labs whose model has over 10M parameters default, on a CPU, to
1 warm-up step, 2 timed steps, K = 2 and 3 timed reverse steps; ``--reps``/``--warmup``/
``--epoch-steps``/``--sample-steps`` override the defaults of every lab.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import multiprocessing
import platform
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..config import (ConfigError, cpu_flags, cpu_supports_bf16, cuda_supports_bf16, get_device,
                      lab_settings, set_threads, timestamp, use_bf16)
from ..labs import REGISTRY, Lab
from ..modules import compiled
from .bench_peak import machine_peak, step_flop, sync_device
from .bench_report import (BASELINE, CLIP_NOTE, OURS, lab_rows, peak_text, render_markdown,
                           write_report)

DEFAULT_LABS = ("fmnist-optimized", "fmnist-cfg", "flowers-clip")
BENCH_LABS = tuple(name for name in REGISTRY if lab_settings(name, "full").T)
KNOBS = ("ours+channels_last", "ours+compile")
BIG_MODEL_PARAMS = 10_000_000        # on a CPU, fewer steps for models above this
DDIM_STEPS = 50
CLIP_FEATURES = 512
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
GUIDED_FRAMES = 15                   # lab.sample's trajectory frames (store_freq = T // 15)
COURSE_STORE_FREQ = 10               # the course's sample_w default


# --- what to measure ---------------------------------------------------------------------------

@dataclasses.dataclass
class BenchOptions:
    labs: Sequence[str] = DEFAULT_LABS
    device: Optional[str] = None
    threads: Optional[int] = None
    reps: Optional[int] = None
    warmup: Optional[int] = None
    batch_size: Optional[int] = None
    epoch_steps: Optional[int] = None
    full_epoch: bool = False
    sample_steps: Optional[int] = None
    exact_sampling: bool = False
    what: str = "all"                # train | sample | all
    knobs: bool = False
    smoke: bool = False
    out: Optional[Path] = None
    data_dir: Optional[str] = None
    flowers_dir: Optional[str] = None


@dataclasses.dataclass
class Plan:
    """One lab's numbers: batch, steps and picture (the same for baseline and ours)."""

    lab: str
    batch: int
    warmup: int
    reps: int
    epoch_steps: Optional[int]       # None: a whole epoch
    sample_warmup: int
    sample_steps: Optional[int]      # timed reverse steps; None: all of them (exact)
    ddim_steps: int
    max_images: Optional[int]        # None: the whole data set
    weights: Optional[List[float]]   # guidance weights (None: the course's seven)
    n_context: Optional[int]         # context rows (None: every class / the lab's prompts)
    n_unguided: int                  # images of an unguided picture


def make_plan(lab: str, device: torch.device, opts: BenchOptions) -> Plan:
    spec = REGISTRY[lab]
    settings = lab_settings(lab, "full")
    if opts.smoke:   # seconds: the mechanics, not the numbers
        return Plan(lab, opts.batch_size or 8, 1 if opts.warmup is None else opts.warmup,
                    opts.reps or 2, None if opts.full_epoch else (opts.epoch_steps or 2),
                    1, opts.sample_steps or 2, DDIM_STEPS,
                    32 if spec.data == "flowers" else 512, [0.0, 1.0], 2, 4)
    big = device.type == "cpu" and spec.params > BIG_MODEL_PARAMS
    reps = opts.reps or (2 if big else 5)
    warmup = opts.warmup if opts.warmup is not None else (1 if big else 2)
    if opts.full_epoch:
        epoch_steps = None
    else:   # on a GPU steps are quick and overlap the host: a longer block
        epoch_steps = opts.epoch_steps or (reps if device.type == "cpu" else max(reps, 50))
    if opts.exact_sampling or (device.type == "cuda" and opts.sample_steps is None):
        sample_steps = None
    else:
        sample_steps = opts.sample_steps or (3 if big else 10)
    return Plan(lab, opts.batch_size or settings.batch_size, warmup, reps, epoch_steps, 1,
                sample_steps, DDIM_STEPS, None, None, None, 16)


# --- small helpers -----------------------------------------------------------------------------

def stats_ms(seconds: Sequence[float]) -> Dict:
    """Median and spread of durations, in ms."""
    ms = sorted(s * 1e3 for s in seconds)
    if not ms:
        return {"n": 0}
    q1, q3 = (statistics.quantiles(ms, n=4, method="inclusive")[::2] if len(ms) > 1
              else (ms[0], ms[0]))
    return {"n": len(ms), "median": statistics.median(ms), "mean": statistics.fmean(ms),
            "min": ms[0], "max": ms[-1], "q1": q1, "q3": q3,
            "samples": [round(v, 3) for v in ms]}


def _peak_memory(device: torch.device) -> Dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def _clip_embeddings(n: int, seed: int = 0) -> torch.Tensor:
    """Fixed random stand-ins for CLIP's 512-d encodings (no CLIP weights are needed)."""
    return torch.randn(n, CLIP_FEATURES, generator=torch.Generator().manual_seed(seed))


def cpu_model_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header(device: torch.device, thread_info: Dict, command: Optional[str] = None) -> Dict:
    """What the numbers were measured on (printed and stored)."""
    flags = cpu_flags()
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_model_name()),
        "cpu": cpu_model_name(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "threads": thread_info.get("threads"),
        "threads_reason": thread_info.get("reason"),
        "cpu_flags": {f: f in flags for f in BF16_FLAGS},
        "native_bf16": (cuda_supports_bf16(device) if device.type == "cuda"
                        else cpu_supports_bf16()),
        "ours_bf16": use_bf16(device),
        "command": command or "labutils " + " ".join(sys.argv[1:]),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["cuda"] = {"capability": f"{p.major}.{p.minor}", "memory_gib": round(
            p.total_memory / 2 ** 30, 1), "cuda_version": torch.version.cuda}
    return info


# --- the data of each configuration ------------------------------------------------------------

def _flowers_dir(job) -> Path:
    from ..data.flowers import find_flowers
    return find_flowers(job["flowers_dir"])


def _make_lab(job, device: torch.device, plan: Plan) -> Lab:
    settings = lab_settings(job["lab"], "full")
    if plan.max_images is not None:
        settings = dataclasses.replace(settings, max_images=plan.max_images)
    spec = REGISTRY[job["lab"]]
    data_dir = str(_flowers_dir(job)) if spec.data == "flowers" else job["data_dir"]
    return Lab(settings, device, data_dir=data_dir)


def _baseline_data(lab: Lab, plan: Plan, job, device, notes: List[str]):
    from .course_baseline import CourseFlowers, course_fashion_mnist, flower_files
    spec, s = lab.spec, lab.settings
    if spec.data == "fashion-mnist":
        return course_fashion_mnist(s.img_size, job["data_dir"], plan.max_images)
    if spec.data == "mnist":
        from ..data.mnist import find_mnist
        folder, _ = find_mnist(download=False)
        if folder is None:
            notes.append("no MNIST here: Fashion-MNIST at 28x28 stands in (both configurations)")
        return course_fashion_mnist(s.img_size, job["data_dir"], plan.max_images, flip=False,
                                    directory=folder)
    if spec.data == "flowers":
        files, labels = flower_files(_flowers_dir(job), spec.classes, plan.max_images)
        if spec.conditioning == "clip-text":
            labels = _clip_embeddings(len(files))
        return CourseFlowers(files, labels, s.img_size, device)
    raise ConfigError(f"{lab.settings.lab}: no course-faithful data set for {spec.data!r}")


def _ours_data(lab: Lab, plan: Plan, notes: List[str]):
    from ..data import TensorImageDataset, load_flowers_tensors
    if lab.spec.conditioning != "clip-text":
        return lab.dataset()
    # lab.dataset() would encode every photo with CLIP: fixed random embeddings stand in for
    # the encodings (the training step costs the same), with our own flowers loader.
    base = load_flowers_tensors(lab.settings.img_size, lab.data_dir, max_images=plan.max_images,
                                allow_fixture=False, keep_aspect=True)
    return TensorImageDataset(base.images, _clip_embeddings(len(base)), base.classes, base.paths)


class _FixedBatches:
    """``n`` copies of one batch, shaped like a :class:`BatchLoader` for :func:`train`."""

    def __init__(self, x, y, n: int, labels=None):
        self.x, self.y, self.n, self.labels = x, y, n, labels

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([(self.x, self.y)] * self.n)


# --- the measurements (each in a child process) ------------------------------------------------

def _train_phase(job) -> Dict:
    from ..data import BatchLoader
    from ..training import train
    from .course_baseline import course_dataloader, course_step

    device, plan, config = torch.device(job["device"]), Plan(**job["plan"]), job["config"]
    ours = config != BASELINE
    torch.manual_seed(0)
    lab = _make_lab(job, device, plan)
    spec, s = lab.spec, lab.settings
    notes: List[str] = []
    t0 = time.perf_counter()
    if ours:
        dataset = _ours_data(lab, plan, notes)
        loader = BatchLoader(dataset, plan.batch, augment=lab.augment(), device=device, seed=0)
    else:
        dataset = _baseline_data(lab, plan, job, device, notes)
        loader = course_dataloader(dataset, plan.batch)
    full_steps = len(loader)
    sync_device(device)
    prep_s = time.perf_counter() - t0
    model = lab.build_model()
    optimizer = (lab.optimizer(model) if ours
                 else torch.optim.Adam(model.parameters(), lr=s.lr))
    result = {"images": len(dataset), "batch": plan.batch, "steps_per_epoch": full_steps,
              "data_prep_s": prep_s, "params": sum(p.numel() for p in model.parameters()),
              "bf16": use_bf16(device) if ours else False, "notes": notes}

    # 1. the step alone, on one fixed batch
    n = plan.warmup + plan.reps
    if ours:
        x, y = next(iter(loader))
        net = model
        if config == "ours+channels_last":
            net = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        elif config == "ours+compile" or (config == OURS and s.compile):
            # What `labutils train` does where the settings compile (the flowers labs).
            net = compiled(model)
            result["compiled"] = True
        loss_fn = lab.loss_fn()
        marks: List[float] = []

        def on_step(step, epoch, loss):
            sync_device(device)
            marks.append(time.perf_counter())

        sync_device(device)
        start = time.perf_counter()
        train(net, loss_fn, _FixedBatches(x, y, n, labels=loader.labels), optimizer, 1,
              progress=False, on_step=on_step)
        ends = [start, *marks]
        times = [b - a for a, b in zip(ends, ends[1:])]
        if config == OURS:   # the same arithmetic as the baseline's step: counted once
            result["step_gflop"] = step_flop(model, loss_fn, x, y) / 1e9
    else:
        batch = next(iter(loader))
        model.train()
        times = []
        for _ in range(n):
            sync_device(device)
            t = time.perf_counter()
            course_step(model, optimizer, lab.ddpm, batch, T=s.T, device=device,
                        conditioning=spec.conditioning, n_classes=lab.n_classes)
            sync_device(device)
            times.append(time.perf_counter() - t)
    timed = times[plan.warmup:] or times
    result["step_ms"] = stats_ms(timed)
    result["first_step_ms"] = times[0] * 1e3
    result["images_per_s"] = plan.batch / (result["step_ms"]["median"] / 1e3)
    if result.get("compiled"):
        result["compile_s"] = times[0] - result["step_ms"]["median"] / 1e3
        notes.append(f"torch.compile: {result['compile_s']:.0f} s once (the first step's time "
                     "less a steady step's), not in the step time")

    # 2. K steps through the data path, as one block, scaled to the epoch
    if config in (BASELINE, OURS):
        k = full_steps if plan.epoch_steps is None else min(plan.epoch_steps, full_steps)
        sync_device(device)
        t = time.perf_counter()
        if ours:
            loader.max_batches = k
            train(net, loss_fn, loader, optimizer, 1, progress=False)
        else:
            for batch in itertools.islice(loader, k):
                course_step(model, optimizer, lab.ddpm, batch, T=s.T, device=device,
                            conditioning=spec.conditioning, n_classes=lab.n_classes)
        sync_device(device)
        block = time.perf_counter() - t
        result["epoch"] = {"steps_timed": k, "seconds_timed": block,
                           "seconds": block / k * full_steps, "exact": k == full_steps}
    result.update(_peak_memory(device))
    return result


class _StopSampling(Exception):
    """Raised from the model's pre-forward hook once enough reverse steps were timed."""


def time_sampling(model, run: Callable[[], object], total_steps: int, warmup: int,
                  timed: Optional[int], device: torch.device) -> Dict:
    """Time the reverse steps of ``run()`` (one model call each) with a pre-forward hook.

    After ``warmup`` steps, ``timed`` steps are timed and the chain is cut short; its total is
    their mean times ``total_steps`` (``exact: False``). ``timed`` None (or a chain that short)
    runs every step and reports the measured total.
    """
    marks: List[float] = []
    limit = None if timed is None or warmup + timed >= total_steps else warmup + timed

    def hook(module, args):
        sync_device(device)
        marks.append(time.perf_counter())
        if limit is not None and len(marks) > limit:
            raise _StopSampling

    handle = model.register_forward_pre_hook(hook)
    sync_device(device)
    t0 = time.perf_counter()
    exact = True
    try:
        run()
    except _StopSampling:
        exact = False
    finally:
        handle.remove()
    sync_device(device)
    end = time.perf_counter()
    if exact:
        marks.append(end)          # the last step ends when the sampler returns
    steps = [b - a for a, b in zip(marks, marks[1:])]
    timed_steps = steps[warmup:] or steps
    st = stats_ms(timed_steps)
    total = end - t0 if exact else st["mean"] / 1e3 * total_steps
    return {"steps": total_steps, "timed_steps": len(timed_steps), "step_ms": st,
            "seconds": total, "exact": exact}


def _sample_phase(job) -> Dict:
    from ..diffusion import GUIDANCE_WEIGHTS, sample_w

    device, plan, config = torch.device(job["device"]), Plan(**job["plan"]), job["config"]
    torch.manual_seed(0)
    lab = _make_lab(job, device, plan)
    spec, s = lab.spec, lab.settings
    model = lab.build_model()
    notes: List[str] = []
    guided = spec.picture == "guided"
    weights = list(GUIDANCE_WEIGHTS if plan.weights is None else plan.weights)
    if guided:
        if spec.conditioning == "clip-text":
            c = _clip_embeddings(len(spec.prompts), seed=1).to(device)
        else:
            c, _ = lab.context()
        c = c[:plan.n_context] if plan.n_context else c
        picture = {"kind": "guided", "rows": len(weights), "cols": len(c),
                   "images": len(weights) * len(c), "batch_per_step": 2 * len(weights) * len(c)}
    else:
        picture = {"kind": "unguided", "images": plan.n_unguided,
                   "batch_per_step": plan.n_unguided}
    if config == BASELINE:
        variants = [("ddpm", s.T, False, lab.ddpm, COURSE_STORE_FREQ)]
    else:
        variants = []
        for kind, steps in (("ddpm", s.T), ("ddim", plan.ddim_steps)):
            sampler = lab.sampler(steps, kind)
            variants.append((kind, steps, None, sampler, max(1, sampler.T // GUIDED_FRAMES)))
    runs = []
    for kind, steps, bf16, sampler, freq in variants:
        if guided:
            def run(sampler=sampler, bf16=bf16, freq=freq):
                return sample_w(model, sampler, lab.image_shape, sampler.T, c, device, weights,
                                store_freq=freq, bf16=bf16)
        else:
            def run(sampler=sampler, bf16=bf16, freq=freq):
                return sampler.sample(model, (plan.n_unguided, *lab.image_shape),
                                      store_every=freq, bf16=bf16)
        torch.manual_seed(0)
        r = time_sampling(model, run, sampler.T, plan.sample_warmup, plan.sample_steps, device)
        r.update(sampler=kind, bf16=use_bf16(device) if bf16 is None else bf16)
        runs.append(r)
    out = {"picture": picture, "runs": runs, "notes": notes}
    out.update(_peak_memory(device))
    return out


def _peak_phase(job) -> Dict:
    """The machine's matrix-multiply throughput, the yardstick of the training steps."""
    smoke = job["smoke"]   # the mechanics in a fraction of a second
    return machine_peak(torch.device(job["device"]), min_seconds=0.1 if smoke else 1.0,
                        n=256 if smoke else None)


PHASES = {"train": _train_phase, "sample": _sample_phase, "peak": _peak_phase}


def _child(job, conn) -> None:
    """A child process's body: one measurement, its result (or traceback) sent back."""
    try:
        thread_info = set_threads(job["threads"])
        importlib.import_module("torchvision.transforms")   # before, not inside, any timing
        result = PHASES[job["phase"]](job)
        result["threads"] = thread_info
        conn.send(("ok", result))
    except BaseException as err:   # noqa: BLE001 -- everything goes back to the parent
        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_job(job, in_process: bool = False) -> Dict:
    """One measurement in a fresh ``spawn`` child (``in_process``: here, for debugging)."""
    if in_process:
        set_threads(job["threads"])
        return PHASES[job["phase"]](job)
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    # Not a daemon: torch.compile (--knobs) starts worker processes of its own.
    proc = ctx.Process(target=_child, args=(job, send))
    proc.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:
        proc.join()
        return {"error": f"the child process died (exit code {proc.exitcode}; out of memory?)"}
    finally:
        receive.close()
    proc.join()
    return payload if status == "ok" else {"error": payload}


def run_bench(opts: BenchOptions, thread_info: Optional[Dict] = None,
              in_process: bool = False, command: Optional[str] = None) -> int:
    """Measure, print and write the report; 0 when every measurement ran, else 1."""
    from ..files import check_writable
    for lab in opts.labs:
        if lab not in BENCH_LABS:
            raise ConfigError(f"bench: lab {lab!r} has no diffusion (T) to measure; choose from "
                              f"{', '.join(BENCH_LABS)}")
    if opts.what not in ("train", "sample", "all"):
        raise ConfigError(f"--what must be train, sample or all, got {opts.what!r}")
    device = get_device(opts.device)
    # The data first: a missing folder is one message here, not a failure in every child.
    if any(REGISTRY[lab].data == "flowers" for lab in opts.labs):
        from ..data.flowers import find_flowers
        find_flowers(opts.flowers_dir)
    if any(REGISTRY[lab].data == "fashion-mnist" for lab in opts.labs):
        from ..data.fashion_mnist import find_fashion_mnist
        find_fashion_mnist(opts.data_dir)
    thread_info = thread_info or set_threads(opts.threads)
    out = Path(opts.out) if opts.out else Path("runs") / f"bench-{timestamp()}"
    check_writable(out, "--out", folder=True)
    head = header(device, thread_info, command)
    print(f"labutils bench on {head['device']} ({head['device_name']}), torch {head['torch']}, "
          f"{head['threads']} threads ({head['threads_reason']}); native bf16: "
          f"{'yes' if head['native_bf16'] else 'no'} ("
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in head["cpu_flags"].items())
          + f"); ours in bf16: {'yes' if head['ours_bf16'] else 'no'}", flush=True)
    plans = {lab: make_plan(lab, device, opts) for lab in opts.labs}
    phases = ("train", "sample") if opts.what == "all" else (opts.what,)
    configs = [BASELINE, OURS]
    # The yardstick first, on the machine as every measurement finds it.
    jobs = ([{"lab": "machine", "config": "matmul", "phase": "peak", "device": str(device),
              "threads": opts.threads, "smoke": opts.smoke}] if "train" in phases else [])
    for lab in opts.labs:
        for phase in phases:
            for config in configs + (list(KNOBS) if opts.knobs and phase == "train" else []):
                jobs.append({"lab": lab, "config": config, "phase": phase, "device": str(device),
                             "threads": opts.threads, "plan": dataclasses.asdict(plans[lab]),
                             "data_dir": opts.data_dir, "flowers_dir": opts.flowers_dir})
    report = {"header": head, "options": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in dataclasses.asdict(opts).items()},
              "plans": {lab: dataclasses.asdict(p) for lab, p in plans.items()},
              "results": {lab: {} for lab in opts.labs}, "rows": [],
              "notes": [CLIP_NOTE] if "flowers-clip" in opts.labs else []}
    results: Dict[str, Dict] = {lab: {} for lab in opts.labs}
    failed = 0
    for i, job in enumerate(jobs, 1):
        t = time.perf_counter()
        print(f"[{i}/{len(jobs)}] {job['lab']} {job['config']} {job['phase']} ...", end=" ",
              flush=True)
        res = run_job(job, in_process)
        if job["phase"] == "peak":
            report["peak"] = res
        else:
            results[job["lab"]][(job["config"], job["phase"])] = res
            report["results"][job["lab"]][f"{job['config']}/{job['phase']}"] = res
        if "error" in res:
            failed += 1
            print(f"FAILED ({res['error'].splitlines()[0]})", flush=True)
        else:
            print(f"{time.perf_counter() - t:.1f} s"
                  + (f": {peak_text(res)}" if job["phase"] == "peak" else ""), flush=True)
            for note in res.get("notes", []):
                note = f"{job['lab']}: {note}"
                if note not in report["notes"]:
                    report["notes"].append(note)
        report["rows"] = [r for lab in opts.labs
                          for r in lab_rows(lab, results[lab], device, report.get("peak"))]
        write_report(out, report)
    text = render_markdown(report)
    print("\n" + text[text.index("| lab |"):text.index("\nPlans")], flush=True)
    print(f"report: {out / 'bench.md'} and {out / 'bench.json'}", flush=True)
    return 1 if failed else 0
