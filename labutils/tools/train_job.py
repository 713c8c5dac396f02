"""``labutils train``: one lab as a batch job, in the order a reader would do it by hand.

1. :func:`resume_state`   find the newest readable checkpoint (``--resume``) or refuse to overwrite
2. :func:`run_settings`   the profile's settings, or the checkpoint's, with the command's changes
3. :class:`TrainJob`      build model, optimiser and data (rank 0 first: it may write caches),
                          then train with hooks that log, checkpoint and draw sample grids
4. ``TrainJob.finish``    ``summary.json`` and a check that every rank ends with the same weights

Every rank runs the same code; collectives (``ctx.gather``, ``ctx.any``) are called on every
rank, and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .. import __version__
from ..config import (ConfigError, LabSettings, lab_settings, seed_everything, seeded, set_threads,
                      use_bf16)
from ..data import BatchLoader
from ..ema import DEFAULT_DECAY, EMA
from ..labs import Lab
from ..modules import compiled
from ..plotting import make_grid
from ..training import NonFiniteLossError, train
from . import distributed
from .checkpoint import (CheckpointDir, CheckpointError, NoSpaceError, check_free_space,
                         checkpoint_bytes, load_checkpoint, out_of_space, rng_state, set_rng_state)
from .run_lock import RunLock
from ..files import check_writable, grid_scale, save_png, write_text_atomic

EXIT_NONFINITE = 3
EXIT_NO_SPACE = 2   # unusable output, as for other bad input
FINITE_CHECK_EVERY = 50   # steps between checks of the weights for NaN/inf (and at every save)
# Minutes between checkpoints by wall time, unless --checkpoint-minutes says otherwise. A flowers
# checkpoint (model + Adam state) is 0.53 GB: 1.4-2.0 s to write and fsync on a local disk, so
# one every 15 min costs about 0.2% of the run; the Fashion-MNIST labs' are 3-24 MB.
CHECKPOINT_MINUTES = {"flowers-cfg": 15.0, "flowers-clip": 15.0}
DEFAULT_CHECKPOINT_MINUTES = 5.0


class NonFiniteWeightsError(FloatingPointError):
    """A parameter or buffer holds NaN/inf; nothing with it was written."""


def nonfinite_names(model: torch.nn.Module, optimizer=None) -> list:
    """Names of the floating-point parameters, buffers (and optimiser state) holding NaN/inf.

    One device sync for the whole model: cheap enough for every checkpoint and every
    :data:`FINITE_CHECK_EVERY` steps.
    """
    named = [(k, t) for k, t in model.state_dict().items() if t.is_floating_point()]
    if optimizer is not None:
        named += [(f"optimizer state {k}", t) for group in optimizer.state.values()
                  for k, t in group.items()
                  if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(ok.all()):
        return []
    return [named[i][0] for i in (~ok).nonzero().flatten().tolist()]


def say(ctx, *parts, **kw) -> None:
    """Print on rank 0 only."""
    if ctx is None or ctx.is_main:
        print(*parts, **kw, flush=True)


# --- stop on a signal: SIGUSR1 (requeue), SIGTERM / SIGINT (stop) ------------------------------

EXIT_REQUEUE = 75     # stopped on SIGUSR1 after a checkpoint: "requeue me" (sysexits' EX_TEMPFAIL)
# The same signal again within this many seconds is the same request: `scancel` signals every
# process of a job and the job script forwards the signal too; torchrun forwards Ctrl-C that the
# terminal also delivered. Never a reason to skip the checkpoint.
SAME_REQUEST_S = 5.0
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1")
                     if hasattr(signal, name))


class StopNow(KeyboardInterrupt):
    """A second signal: stop at once; ``exit_code`` is 128 + that signal's number."""

    def __init__(self, signum: int, first: int):
        name = signal.Signals(signum).name
        super().__init__(f"{name} again" if signum == first
                         else f"{name} after {signal.Signals(first).name}")
        self.signum, self.exit_code = signum, 128 + signum


class StopRequest:
    """Remembers the first stop signal; the loop stops after its current step and saves.

    SIGUSR1 (Slurm's ``--signal`` before a time limit, a preemption notice) ends with
    :data:`EXIT_REQUEUE`, which the job scripts in ``slurm/`` answer with ``scontrol requeue``;
    SIGTERM (``scancel``, the hard time limit) and SIGINT end with 143 / 130, never requeued.
    A different signal, or the same one after :data:`SAME_REQUEST_S`, interrupts at once
    (:class:`StopNow`), for a user who cannot wait. Entering it again (nested ``with``) is a
    no-op, so the handlers can be installed before the job is built.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._at = 0.0
        self._previous = {}
        self._depth = 0

    def __enter__(self):
        if self._depth == 0:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            if signum == self.signum and time.monotonic() - self._at < SAME_REQUEST_S:
                print(f"labutils: {name} again within {SAME_REQUEST_S:g} s: the same request, "
                      "still saving", file=sys.stderr, flush=True)
                return
            raise StopNow(signum, self.signum)
        self.signum, self._at = signum, time.monotonic()
        then = (f"exiting with {EXIT_REQUEUE} (requeue)" if signum == getattr(signal, "SIGUSR1", 0)
                else f"exiting with {128 + signum}")
        print(f"\nlabutils: {name} received: saving a checkpoint at this step, then {then} "
              f"(another signal stops at once; the same one within {SAME_REQUEST_S:g} s counts as "
              "this request)", file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        if not self.signum:
            return 0
        return EXIT_REQUEUE if self.signum == getattr(signal, "SIGUSR1", 0) else 128 + self.signum


# --- 1. and 2.: where to start from, with which settings ----------------------------------------

def resume_state(args, ckpts: CheckpointDir, ctx):
    """``(path, state)`` of the checkpoint to continue from, or ``(None, None)``.

    Rank 0 picks the newest readable checkpoint; every rank loads that same file.
    """
    if not args.resume:
        if ckpts.list():
            raise ConfigError(f"{ckpts.directory} already holds checkpoints: pass --resume to "
                              "continue that run, or choose another --out")
        return None, None
    choice, problem, state = None, None, None
    if ctx.is_main:
        try:
            found = ckpts.latest(report=lambda m: print(f"labutils train: {m}", file=sys.stderr,
                                                        flush=True))
            if found is not None:
                choice, state = str(found[0]), found[1]
        except CheckpointError as err:
            problem = str(err)
    choice, problem = ctx.broadcast((choice, problem))
    if problem:
        raise CheckpointError(problem)
    if choice and not ctx.is_main:
        state = load_checkpoint(choice)
    if choice is None:
        say(ctx, f"labutils train: no checkpoint in {ckpts.directory}: starting from scratch")
    elif state.get("world_size", 1) != ctx.world_size:
        raise ConfigError(f"the checkpoint was written by {state.get('world_size', 1)} "
                          f"process(es); resume with the same number (now {ctx.world_size})")
    return choice, state


def run_settings(args, state, out: Path) -> LabSettings:
    """The profile's settings (a new run) or the checkpoint's (a resumed one), with the
    command's ``--epochs`` / ``--batch-size`` / ``--lr``; anything that would break exact resume
    is refused. (A new ``--lr`` on resume is allowed: it is how a diverged run continues.)"""
    if state is None:
        settings = lab_settings(args.lab, args.profile)
    else:
        settings = LabSettings(**state["settings"])
        if settings.lab != args.lab:
            raise ConfigError(f"the checkpoints in {out} are of lab {settings.lab!r}, "
                              f"not {args.lab!r}")
        if args.profile and args.profile != settings.profile:
            raise ConfigError(f"the checkpoints in {out} were made with profile "
                              f"{settings.profile!r}; resume without --profile or use a new --out")
    changes = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.batch_size is not None:
        if state is not None and args.batch_size != settings.batch_size:
            raise ConfigError(f"the checkpoints in {out} use batch size "
                              f"{settings.batch_size}; resuming with {args.batch_size} would "
                              "change the schedule (drop --batch-size or use a new --out)")
        changes["batch_size"] = args.batch_size
    if getattr(args, "lr", None) is not None:
        changes["lr"] = args.lr
    if getattr(args, "compile", None) is not None:   # speed only: may change on resume
        changes["compile"] = args.compile
    return dataclasses.replace(settings, **changes) if changes else settings


def run_seed(args, state, out: Path) -> int:
    seed = args.seed if args.seed is not None else (state["seed"] if state else 0)
    if state is not None and seed != state["seed"]:
        raise ConfigError(f"the checkpoints in {out} use seed {state['seed']} (it fixes the "
                          "data order); resume without --seed or use a new --out")
    return seed


def rewrite_log(path: Path, upto_step: int) -> None:
    """Keep the loss log's lines up to the resumed step (later steps are trained again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= upto_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    write_text_atomic(path, "".join(k + "\n" for k in kept))


# --- 3. and 4.: the run --------------------------------------------------------------------------

class TrainJob:
    """One training run of one lab: built in ``__init__``, trained by :meth:`run`."""

    def __init__(self, args, ctx):
        self.args, self.ctx = args, ctx
        self.out = run_folder(args)
        self.ckpts = CheckpointDir(self.out / "checkpoints", keep=args.keep)
        if ctx.is_main:
            self.ckpts.clean_temporaries()
        self.resumed_from, state = resume_state(args, self.ckpts, ctx)
        self.state = state
        self.settings = run_settings(args, state, self.out)
        self.seed = run_seed(args, state, self.out)

        seed_everything(self.seed)          # the same initial weights on every rank
        self.lab = Lab(self.settings, ctx.device, self.seed, clip_model=args.clip_model,
                       data_dir=args.data_dir)
        self.model = self.lab.build_model()
        self.optimizer = self.lab.optimizer(self.model)
        self.data = self._dataset()
        if state is not None and self.lab.spec.conditioning == "clip-text":
            # One embedding space per model: resume with the CLIP it was trained with.
            self.lab.check_clip(state.get("clip"), "resume with --clip-model naming the same "
                                                   "weights, or use a new --out")
        self.loader = BatchLoader(self.data, self.settings.batch_size, augment=self.lab.augment(),
                                  device=ctx.device, max_batches=self.settings.steps_per_epoch,
                                  rank=ctx.rank, world_size=ctx.world_size, seed=self.seed)
        self.start_step = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # --lr (or the settings') wins
                group["lr"] = self.settings.lr
                if "fused" in group:   # this device's choice, not the checkpoint's (CUDA <-> CPU)
                    group["fused"] = self.optimizer.defaults.get("fused")
            self.start_step = int(state["step"])
        self.ema = self._make_ema(state)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.settings.epochs * self.steps_per_epoch
        if self.start_step > self.total_steps:
            raise ConfigError(f"the checkpoint {self.resumed_from} is at step {self.start_step}, "
                              f"past the end of {self.settings.epochs} epoch(s) "
                              f"({self.total_steps} steps): give a larger --epochs, or drop it")
        self.sample_every = (self.settings.sample_every if args.sample_every is None
                             else args.sample_every)
        self.saved = {"step": None, "path": self.resumed_from}
        minutes = getattr(args, "checkpoint_minutes", None)
        if minutes is None:
            minutes = CHECKPOINT_MINUTES.get(self.settings.lab, DEFAULT_CHECKPOINT_MINUTES)
        if minutes < 0:
            raise ConfigError(f"--checkpoint-minutes must be >= 0, got {minutes:g}")
        self.checkpoint_seconds = 60.0 * minutes
        self.last_save = time.monotonic()
        self.stop: Optional[StopRequest] = None
        self.stopping = False
        self.log_file = None
        self.t0 = time.time()
        # Sized by the CLI (labutils.config.set_threads); a job built elsewhere sizes it here.
        self.threads = getattr(args, "thread_info", None) or set_threads(
            getattr(args, "threads", None))

    def continue_command(self) -> str:
        """The command that continues this run, with every option that must stay the same."""
        a = self.args
        parts = ["labutils", "train", self.settings.lab, "--out", str(self.out), "--resume"]
        for flag, value, default in (("--clip-model", a.clip_model, None),
                                     ("--data-dir", a.data_dir, None),
                                     ("--sample-every", a.sample_every, None),
                                     ("--checkpoint-every", a.checkpoint_every, 500),
                                     ("--checkpoint-minutes",
                                      getattr(a, "checkpoint_minutes", None), None),
                                     ("--keep", a.keep, 3), ("--device", a.device, None)):
            if value is not None and value != default:
                parts += [flag, str(value)]
        return " ".join(shlex.quote(p) for p in parts)

    def _make_ema(self, state):
        """The EMA of the weights used for sampling (None with ``--ema-decay 0``); on resume the
        checkpoint's, exactly, with its decay."""
        decay = getattr(self.args, "ema_decay", None)
        if state is not None and "ema" in state:
            saved = state["ema"]
            if decay is not None and (saved is None and decay > 0
                                      or saved is not None and decay != saved["decay"]):
                raise ConfigError(f"the checkpoints in {self.out} use EMA decay "
                                  f"{saved['decay'] if saved else 0:g}; resume without "
                                  "--ema-decay or use a new --out")
            if saved is None:
                return None
            ema = EMA(self.model, saved["decay"], saved["warmup"])
            ema.load_state_dict(saved)
            return ema
        decay = DEFAULT_DECAY if decay is None else decay
        if state is not None and decay > 0:
            say(self.ctx, "labutils train: the checkpoint holds no EMA weights (an older "
                          "run): the EMA starts from its weights now")
        return EMA(self.model, decay) if decay > 0 else None

    def _dataset(self):
        # Rank 0 first: it may write caches (CLIP embeddings, a stand-in CLIP) the others read.
        # The others wait on torchrun's store, not on a NCCL barrier that could time out.
        return self.ctx.main_first(self.lab.dataset)

    # --- files -----------------------------------------------------------------------------------

    def write_header(self) -> None:
        s, ctx = self.settings, self.ctx
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            rewrite_log(self.out / "loss.jsonl", self.start_step)
            write_text_atomic(self.out / "settings.json", json.dumps(
                dict(dataclasses.asdict(s), seed=self.seed, world_size=ctx.world_size), indent=2))
        threads = self.threads
        say(ctx, f"labutils train {s.lab}: profile {s.profile}, {ctx.world_size} process(es) on "
                 f"{ctx.device}, batch {s.batch_size} per process, {s.epochs} epochs x "
                 f"{self.steps_per_epoch} steps, lr {s.lr:g} -> {self.out}/")
        say(ctx, f"model: {self.lab.spec.describe_model(s)}")
        say(ctx, f"{threads['threads']} CPU threads per process ({threads['reason']}); bf16 "
                 f"autocast {'on' if use_bf16(ctx.device) else 'off'}; torch.compile "
                 f"{'on (the first steps compile)' if s.compile else 'off'}")
        if distributed.slurm_job_note():   # a requeued job says which start this is
            say(ctx, distributed.slurm_job_note())
        if self.resumed_from:
            say(ctx, f"resuming from {self.resumed_from} (step {self.start_step} of "
                     f"{self.total_steps})")

    def check_finite(self, step: int, when: str) -> None:
        """:class:`NonFiniteWeightsError` when any rank's weights hold NaN/inf (a collective)."""
        bad = nonfinite_names(self.model, self.optimizer)
        if self.ctx.any(bool(bad)):
            where = (f"{', '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if len(bad) > 3
                                                else "")) if bad else "another rank's weights"
            raise NonFiniteWeightsError(f"NaN/inf in {where} at step {step} ({when}): the run "
                                        "diverged")

    def save(self, step: int) -> None:
        """A checkpoint at ``step`` (a collective: every rank calls it; rank 0 writes).

        Never writes weights holding NaN/inf: :meth:`check_finite` stops the run first."""
        self.check_finite(step, "before writing a checkpoint")
        rngs = self.ctx.gather(rng_state(self.ctx.device))
        self.last_save = time.monotonic()   # on every rank: the time cadence is agreed on
        full = None
        if self.ctx.is_main and self.saved["step"] != step:
            try:
                self._write_checkpoint(step, rngs)
            except NoSpaceError as err:
                full = err
        if self.ctx.any(full is not None):   # every rank stops here, not at its next collective
            raise full or NoSpaceError(self.ckpts.directory, "on rank 0")

    def _write_checkpoint(self, step: int, rngs) -> None:
        s = self.settings
        ckpt = {"format": 1, "labutils_version": __version__,
                "torch_version": str(torch.__version__), "lab": s.lab,
                "settings": dataclasses.asdict(s), "seed": self.seed,
                "world_size": self.ctx.world_size, "step": step,
                "epoch": step // self.steps_per_epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rngs,
                "ema": self.ema.state_dict() if self.ema is not None else None}
        if self.lab.clip_info() is not None:
            ckpt["clip"] = self.lab.clip_info()
        self.saved["path"] = str(self.ckpts.save(ckpt, step))
        self.saved["step"] = step

    def check_space(self) -> None:
        """Refuse to start (or resume) a run whose checkpoints' file system has no room for one
        more: the size of the checkpoint resumed from, else an estimate. Rank 0 decides."""
        problem = None
        if self.ctx.is_main:
            need = (Path(self.resumed_from).stat().st_size if self.resumed_from else
                    checkpoint_bytes(self.model, self.ema.shadow if self.ema else None))
            try:
                check_free_space(self.ckpts.directory, need + 2**20)   # + the logs
            except NoSpaceError as err:
                problem = err
        problem = self.ctx.broadcast(problem)
        if problem is not None:
            raise problem

    def no_space(self, err: OSError) -> int:
        """The one-line message of a full disk, with the last good checkpoint and the way on."""
        folder = err.folder if isinstance(err, NoSpaceError) else self.out
        detail = f" ({err.detail})" if isinstance(err, NoSpaceError) and err.detail else ""
        say(self.ctx, f"labutils train: error: {folder}: no space left on device{detail}\n"
                      f"Last good checkpoint: {self.saved['path'] or 'none yet'} (not "
                      "overwritten). Free some space, then continue with: "
                      f"{self.continue_command()}", file=sys.stderr)
        return EXIT_NO_SPACE

    def draw(self, epoch: int) -> None:
        """The lab's sample grid into ``samples/epochNNN.png`` (rank 0, a fixed seed)."""
        if not self.ctx.is_main:
            return
        examples = self.data.images[:8] if self.lab.spec.picture == "denoise" else None
        with seeded(self.seed, self.ctx.device):
            if self.ema is not None:   # grids show the EMA weights, as `sample` does
                with self.ema.applied(self.model):
                    samples = self.lab.sample(self.model, examples=examples)
            else:
                samples = self.lab.sample(self.model, examples=examples)
        path = save_png(make_grid(samples.images, samples.ncols,
                                  scale=grid_scale(self.settings.img_size)),
                        self.out / "samples" / f"epoch{epoch:03d}.png")
        print(f"epoch {epoch}: sample grid {path}", flush=True)

    # --- hooks -----------------------------------------------------------------------------------

    def on_log(self, records) -> None:
        """Loss log lines for a window of steps (every step on a CPU, every few on a GPU)."""
        if self.log_file is not None:
            now = round(time.time() - self.t0, 3)
            self.log_file.write("".join(json.dumps({"step": step, "epoch": epoch, "loss": loss,
                                                    "time": now}) + "\n"
                                        for step, epoch, loss in records))
            self.log_file.flush()

    def on_step(self, step: int, epoch: int, loss) -> None:
        """Checkpoint cadence: every ``--checkpoint-every`` steps, or when ``--checkpoint-minutes``
        passed since the last one; a signal stops the loop (``run`` then saves)."""
        if self.ema is not None:   # first: a checkpoint of this step holds its EMA
            self.ema.update(self.model)
        every = self.args.checkpoint_every
        due = bool(every) and step % every == 0
        timed = (self.checkpoint_seconds > 0
                 and time.monotonic() - self.last_save >= self.checkpoint_seconds)
        signalled = self.stop is not None and self.stop.signum is not None
        # One CPU-side collective under torchrun (no GPU sync): every rank stops and saves at
        # the same step.
        self.stopping, timed = self.ctx.agree(signalled, timed)
        due = due or timed
        if self.stopping:
            return             # run() saves this step once the loop has stopped
        if due:
            self.save(step)
        elif step % FINITE_CHECK_EVERY == 0:
            self.check_finite(step, "periodic check")

    def on_epoch_end(self, epoch: int, step: int) -> None:
        # The course's epochs: 0, every, 2 * every, ... and the last one.
        every = self.sample_every
        if every and (epoch % every == 0 or epoch + 1 == self.settings.epochs):
            self.draw(epoch)

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> int:
        """:meth:`train`, with a full disk reported in one line (exit 2), before training when
        there is no room for a checkpoint."""
        try:
            self.check_space()
            return self.train()
        except OSError as err:
            if not out_of_space(err):
                raise
            return self.no_space(err)

    def train(self) -> int:
        """Train to the end (0), or stop on a signal after a checkpoint (:class:`StopRequest`:
        75 for SIGUSR1, 143 / 130 for SIGTERM / SIGINT; a second signal stops at once), or on a NaN/inf loss or weights without touching the
        last good checkpoint (3)."""
        self.write_header()
        ctx, s = self.ctx, self.settings
        ddp_model = distributed.wrap_model(self.model, ctx, self.lab.spec.find_unused_parameters)
        if s.compile:   # the step only: checkpoints, EMA and samples use self.model
            ddp_model = compiled(ddp_model)
        loss_fn = self.lab.loss_fn()
        self.log_file = open(self.out / "loss.jsonl", "a") if ctx.is_main else None
        try:
            with StopRequest() as stop:
                self.stop = stop
                if self.state is not None:  # last, so data loading cannot shift the streams
                    set_rng_state(self.state["rng"][ctx.rank], ctx.device)
                else:
                    seed_everything(self.seed + ctx.rank)   # ranks draw different noise
                try:
                    result = train(ddp_model, loss_fn, self.loader, self.optimizer, s.epochs,
                                   start_step=self.start_step,
                                   progress=ctx.is_main and not self.args.quiet, desc=s.lab,
                                   on_step=self.on_step, on_epoch_end=self.on_epoch_end,
                                   on_log=self.on_log, should_stop=lambda: self.stopping,
                                   reduce_loss=distributed.loss_reducer(ctx))
                except (NonFiniteLossError, NonFiniteWeightsError) as err:
                    say(ctx, f"labutils train: error: {str(err).splitlines()[0]}\n"
                             f"Last good checkpoint: {self.saved['path'] or 'none yet'} (not "
                             f"overwritten). Try a lower learning rate (now {s.lr:g}): "
                             f"{self.continue_command()} --lr {s.lr / 10:g}", file=sys.stderr)
                    return EXIT_NONFINITE
                if result.stopped_early:
                    self.save(result.step)
                    say(ctx, f"stopped at step {result.step} of {self.total_steps}; checkpoint "
                             f"{self.saved['path']}. Continue with: {self.continue_command()}")
                    return stop.exit_code or 0
                if result.step > self.start_step:
                    self.save(result.step)   # always at the end (a no-op if just saved)
        except StopNow as err:
            say(ctx, f"labutils train: {err}: stopped at once; last checkpoint: "
                     f"{self.saved['path'] or 'none yet'}. Continue with: "
                     f"{self.continue_command()}", file=sys.stderr)
            return err.exit_code
        finally:
            if self.log_file is not None:
                self.log_file.close()
        return self.finish(result)

    def finish(self, result) -> int:
        """Write ``summary.json``; 1 when the ranks' weights differ, else 0."""
        ctx, s = self.ctx, self.settings
        digests = ctx.gather(distributed.params_digest(self.model))
        summary = {
            "lab": s.lab, "profile": s.profile, "device": str(ctx.device),
            "world_size": ctx.world_size, "step": result.step, "total_steps": self.total_steps,
            "epochs": s.epochs, "resumed_from_step": self.start_step,
            "steps_this_run": len(result.losses),
            "final_loss": result.losses[-1] if result.losses else None,
            "wall_time_s": round(result.wall_time, 3), "cpu_time_s": round(result.cpu_time, 3),
            "images_per_second": round(result.images_per_second * ctx.world_size, 1),
            "epoch_times_s": [round(t, 3) for t in result.epoch_times],
            "seconds_per_epoch": (round(sum(result.epoch_times) / len(result.epoch_times), 3)
                                  if result.epoch_times else None),
            "param_digests": digests, "checkpoint": self.saved["path"],
            "threads": self.threads, "bf16": use_bf16(ctx.device),
        }
        if ctx.is_main:
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
            print(f"done: {result.summary()}; cpu time is rank 0's process"
                  + (f", images/s summed over {ctx.world_size} ranks" if ctx.enabled else "")
                  + f"\nsummary: {self.out / 'summary.json'}", flush=True)
        if len(set(digests)) > 1:
            say(ctx, "labutils train: error: the ranks' weights differ after training",
                file=sys.stderr)
            return 1
        return 0


def run_folder(args) -> Path:
    """The run folder (``--out``, default ``runs/train-LAB``), refused if it cannot be written."""
    out = Path(args.out) if args.out else Path("runs") / f"train-{args.lab}"
    return check_writable(out, "--out", folder=True)   # before any work that could be lost


@contextlib.contextmanager
def holding(folder: Path, ctx):
    """Rank 0 holds ``folder``'s :class:`RunLock` around the job (another live job there: every
    rank gets its refusal). Taken before anything in the folder is touched."""
    lock, problem = RunLock(folder), None
    if ctx.is_main:
        try:
            lock.acquire()
        except ConfigError as err:
            problem = str(err)
    problem = ctx.broadcast(problem)
    if problem:
        raise ConfigError(problem)
    try:
        yield lock
    finally:
        lock.release()


def run_train(args) -> int:
    """The ``train`` command: set up the process group (torchrun) around one :class:`TrainJob`,
    holding the run folder's lock."""
    ctx = distributed.init(args.device)
    try:
        with holding(run_folder(args), ctx):
            return distributed.report_exit(TrainJob(args, ctx).run(), ctx)
    finally:
        distributed.shutdown(ctx)
