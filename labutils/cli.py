"""The ``labutils`` command (also ``python -m labutils``).

Subcommands: ``run-labs`` (execute the notebooks), ``train`` (one lab as a batch job, with
checkpoints, resume and torchrun multi-GPU), ``sample`` (grids and GIFs from a checkpoint),
``doctor`` (what this machine has, what to install) and ``prepare`` (stage data and weights
for offline compute nodes).

Exit codes: 0 done; 1 something failed (``prepare``: a requested item; ``train``: ranks
disagree); 2 bad arguments or unusable input (message on stderr, no traceback); 3 training
stopped on a NaN/inf loss (the last good checkpoint is kept); 130 / 143 stopped by SIGINT /
SIGTERM after saving a checkpoint (``--resume`` continues).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from .checkpoint import umask_mode
from .config import LABS, PROFILES, ConfigError

if TYPE_CHECKING:
    from .config import LabSettings

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


# --- argument types: bad values become argparse errors (usage + message, exit 2) ------------

def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value}")
        return value
    return parse


def _say(ctx, *parts, **kw) -> None:
    if ctx is None or ctx.is_main:
        print(*parts, **kw, flush=True)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, umask_mode())
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_png(image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, umask_mode())
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _grid_scale(img_size: int) -> int:
    return max(1, 64 // img_size)


# --- stop on SIGTERM / SIGINT ----------------------------------------------------------------

class StopRequest:
    """Remembers the first SIGTERM/SIGINT; the loop stops after its current step and saves.

    A second signal interrupts at once (KeyboardInterrupt), for a user who cannot wait.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nlabutils: {signal.Signals(signum).name} received: saving a checkpoint and "
              "stopping after this step (send it again to stop at once)", file=sys.stderr,
              flush=True)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 0


# --- train --------------------------------------------------------------------------------------

def _settings_for(args, state) -> "LabSettings":
    from .config import lab_settings
    if state is None:
        settings = lab_settings(args.lab, args.profile)
    else:
        from .config import LabSettings
        saved = LabSettings(**state["settings"])
        if saved.lab != args.lab:
            raise ConfigError(f"the checkpoints in {args.out} are of lab {saved.lab!r}, "
                              f"not {args.lab!r}")
        if args.profile and args.profile != saved.profile:
            raise ConfigError(f"the checkpoints in {args.out} were made with profile "
                              f"{saved.profile!r}; resume without --profile or use a new --out")
        settings = saved
    changes = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.batch_size is not None:
        if state is not None and args.batch_size != settings.batch_size:
            raise ConfigError(f"the checkpoints in {args.out} use batch size "
                              f"{settings.batch_size}; resuming with {args.batch_size} would "
                              "change the schedule (drop --batch-size or use a new --out)")
        changes["batch_size"] = args.batch_size
    return dataclasses.replace(settings, **changes) if changes else settings


def _find_resume_state(args, ckpts, ctx):
    """Rank 0 picks the newest readable checkpoint; every rank loads that same file."""
    from .checkpoint import CheckpointError, load_checkpoint
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
    return choice, state


def _rewrite_log(path: Path, upto_step: int) -> None:
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
    _write_text_atomic(path, "".join(k + "\n" for k in kept))


def _cmd_train(args) -> int:
    from . import distributed
    ctx = distributed.init(args.device)
    try:
        return _train(args, ctx)
    finally:
        distributed.shutdown(ctx)


def _train(args, ctx) -> int:
    import torch

    from . import __version__, distributed
    from .checkpoint import CheckpointDir, rng_state, set_rng_state
    from .config import seed_everything
    from .data import BatchLoader
    from .labs import Recipe, fixed_rng
    from .plotting import make_grid
    from .training import NonFiniteLossError, train

    out = Path(args.out) if args.out else Path("runs") / f"train-{args.lab}"
    ckpts = CheckpointDir(out / "checkpoints", keep=args.keep)
    if ctx.is_main:
        ckpts.clean_temporaries()
    state, resumed_from = None, None
    if args.resume:
        resumed_from, state = _find_resume_state(args, ckpts, ctx)
        if state is None:
            _say(ctx, f"labutils train: no checkpoint in {ckpts.directory}: starting from scratch")
    elif ckpts.list():
        raise ConfigError(f"{ckpts.directory} already holds checkpoints: pass --resume to "
                          "continue that run, or choose another --out")
    if state is not None and state.get("world_size", 1) != ctx.world_size:
        raise ConfigError(f"the checkpoint was written by {state.get('world_size', 1)} "
                          f"process(es); resume with the same number (now {ctx.world_size})")
    settings = _settings_for(args, state)
    seed = args.seed if args.seed is not None else (state["seed"] if state else 0)
    if state is not None and seed != state["seed"]:
        raise ConfigError(f"the checkpoints in {out} use seed {state['seed']} (it fixes the "
                          "data order); resume without --seed or use a new --out")

    seed_everything(seed)          # the same initial weights on every rank
    recipe = Recipe(settings, ctx.device, seed, clip_model=args.clip_model)
    model = recipe.build_model()
    optimizer = recipe.optimizer(model)
    # Rank 0 first: it may write caches (CLIP embeddings, a stand-in CLIP) the others then read.
    data = recipe.dataset(args.data_dir) if ctx.is_main else None
    ctx.barrier()
    if data is None:
        data = recipe.dataset(args.data_dir)
    loader = BatchLoader(data, settings.batch_size, augment=recipe.augment(), device=ctx.device,
                         max_batches=settings.steps_per_epoch, rank=ctx.rank,
                         world_size=ctx.world_size, seed=seed)
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
    steps_per_epoch = len(loader)
    total_steps = settings.epochs * steps_per_epoch
    examples = data.images[:8] if settings.lab == "fmnist-unet" else None

    log_path = out / "loss.jsonl"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _rewrite_log(log_path, start_step)
        _write_text_atomic(out / "settings.json", json.dumps(
            dict(dataclasses.asdict(settings), seed=seed, world_size=ctx.world_size), indent=2))
    _say(ctx, f"labutils train {settings.lab}: profile {settings.profile}, {ctx.world_size} "
              f"process(es) on {ctx.device}, batch {settings.batch_size} per process, "
              f"{settings.epochs} epochs x {steps_per_epoch} steps, lr {settings.lr:g} -> {out}/")
    if resumed_from:
        _say(ctx, f"resuming from {resumed_from} (step {start_step} of {total_steps})")

    ddp_model = distributed.wrap_model(model, ctx, recipe.find_unused_parameters)
    loss_fn = distributed.agree_on_loss(recipe.loss_fn(), ctx)
    saved = {"step": None, "path": resumed_from}

    def save(step: int) -> None:
        rngs = ctx.gather(rng_state())        # a collective: every rank calls it
        if not ctx.is_main or saved["step"] == step:
            return
        ckpt = {"format": 1, "labutils_version": __version__, "torch_version": str(torch.__version__),
                "lab": settings.lab, "settings": dataclasses.asdict(settings), "seed": seed,
                "world_size": ctx.world_size, "step": step, "epoch": step // steps_per_epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rngs}
        if recipe.clip_info() is not None:
            ckpt["clip"] = recipe.clip_info()
        saved["path"] = str(ckpts.save(ckpt, step))
        saved["step"] = step

    def draw(epoch: int) -> None:
        if not ctx.is_main:
            return
        with fixed_rng(seed, ctx.device):
            samples = recipe.sample(model, examples=examples)
        path = _save_png(make_grid(samples.images, samples.ncols,
                                   scale=_grid_scale(settings.img_size)),
                         out / "samples" / f"epoch{epoch:03d}.png")
        print(f"epoch {epoch}: sample grid {path}", flush=True)

    log_file = open(log_path, "a") if ctx.is_main else None
    t0 = time.time()

    def on_step(step: int, epoch: int, loss: float) -> None:
        if log_file is not None:
            log_file.write(json.dumps({"step": step, "epoch": epoch, "loss": loss,
                                       "time": round(time.time() - t0, 3)}) + "\n")
            log_file.flush()
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save(step)

    sample_every = settings.sample_every if args.sample_every is None else args.sample_every

    def on_epoch_end(epoch: int, step: int) -> None:
        save(step)
        if sample_every and ((epoch + 1) % sample_every == 0 or epoch + 1 == settings.epochs):
            draw(epoch)

    try:
        with StopRequest() as stop:
            if state is not None:   # last, so data loading cannot shift the restored streams
                set_rng_state(state["rng"][ctx.rank])
            else:
                seed_everything(seed + ctx.rank)   # ranks draw different noise
            try:
                result = train(ddp_model, loss_fn, loader, optimizer, settings.epochs,
                               start_step=start_step, progress=ctx.is_main and not args.quiet,
                               desc=settings.lab, on_step=on_step, on_epoch_end=on_epoch_end,
                               should_stop=lambda: ctx.any(stop.signum is not None))
            except NonFiniteLossError as err:
                print(f"labutils train: error: {err}\nLast good checkpoint: "
                      f"{saved['path'] or 'none yet'} (not overwritten)", file=sys.stderr)
                return EXIT_NONFINITE
            if result.stopped_early:
                save(result.step)
                _say(ctx, f"stopped at step {result.step} of {total_steps}; checkpoint "
                          f"{saved['path']}. Continue with: labutils train {settings.lab} "
                          f"--out {out} --resume")
                return stop.exit_code or 0
    finally:
        if log_file is not None:
            log_file.close()

    digests = ctx.gather(distributed.params_digest(model))
    summary = {
        "lab": settings.lab, "profile": settings.profile, "device": str(ctx.device),
        "world_size": ctx.world_size, "step": result.step, "total_steps": total_steps,
        "epochs": settings.epochs, "resumed_from_step": start_step,
        "steps_this_run": len(result.losses),
        "final_loss": result.losses[-1] if result.losses else None,
        "wall_time_s": round(result.wall_time, 3), "cpu_time_s": round(result.cpu_time, 3),
        "images_per_second": round(result.images_per_second * ctx.world_size, 1),
        "epoch_times_s": [round(t, 3) for t in result.epoch_times],
        "seconds_per_epoch": (round(sum(result.epoch_times) / len(result.epoch_times), 3)
                              if result.epoch_times else None),
        "param_digests": digests, "checkpoint": saved["path"],
    }
    if ctx.is_main:
        _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
        print(f"done: {result.summary()}; cpu time is rank 0's process"
              + (f", images/s summed over {ctx.world_size} ranks" if ctx.enabled else "")
              + f"\nsummary: {out / 'summary.json'}", flush=True)
    if len(set(digests)) > 1:
        _say(ctx, "labutils train: error: the ranks' weights differ after training",
             file=sys.stderr)
        return 1
    return 0


# --- sample -------------------------------------------------------------------------------------

def _cmd_sample(args) -> int:
    from .checkpoint import CheckpointDir, CheckpointError, load_checkpoint
    from .config import LabSettings, get_device
    from .labs import Recipe, fixed_rng
    from .plotting import make_grid, save_animation, trajectory_frames

    device = get_device(args.device)
    source = Path(args.checkpoint)
    if source.is_dir():
        folder = source / "checkpoints" if (source / "checkpoints").is_dir() else source
        found = CheckpointDir(folder).latest(
            report=lambda m: print(f"labutils sample: {m}", file=sys.stderr))
        if found is None:
            raise CheckpointError(f"no checkpoint in {folder}")
        path, state = found
    else:
        path, state = source, load_checkpoint(source)
    settings = LabSettings(**state["settings"])
    if args.gif and settings.lab == "fmnist-unet":
        raise ConfigError("lab fmnist-unet has no sampling trajectory to animate (drop --gif)")
    if args.prompts and settings.lab != "flowers-clip":
        raise ConfigError(f"--prompts is for flowers-clip; {settings.lab} takes --classes")
    if args.classes and settings.lab not in ("fmnist-cfg", "flowers-cfg", "mnist-assessment"):
        raise ConfigError(f"{settings.lab} is not class-conditioned; --classes does not apply")
    recipe = Recipe(settings, device, clip_model=args.clip_model)
    model = recipe.build_model()
    model.load_state_dict(state["model"])
    if settings.lab == "flowers-clip":
        recipe.encoder()
        trained_with, now = state.get("clip"), recipe.clip_info()
        if trained_with and trained_with["fingerprint"] != now["fingerprint"]:
            raise ConfigError(
                f"this model was trained with CLIP {trained_with['model_id']} (weights sha256 "
                f"{trained_with['fingerprint'][:12]}), but {now['model_id']} (sha256 "
                f"{now['fingerprint'][:12]}) was loaded: pass --clip-model with the same weights")
    with fixed_rng(args.seed, device):
        samples = recipe.sample(model, classes=args.classes, prompts=args.prompts,
                                weights=args.w, steps=args.steps, n=args.n)
    scale = _grid_scale(settings.img_size)
    out = _save_png(make_grid(samples.images, samples.ncols, scale=scale), Path(args.out))
    print(f"{settings.lab} (checkpoint {path}, step {state['step']}): "
          f"{len(samples.images)} images -> {out}")
    if samples.row_labels:
        print("rows: " + ", ".join(samples.row_labels))
    if samples.col_labels:
        print("columns: " + ", ".join(samples.col_labels))
    if args.gif:
        gif = save_animation(trajectory_frames(samples.frames, samples.ncols, scale=scale),
                             args.gif)
        print(f"animation: {gif}")
    return 0


# --- doctor, prepare, run-labs ------------------------------------------------------------------

def _cmd_doctor(args) -> int:
    from .doctor import run_doctor
    return run_doctor(args.data_dir)


def _cmd_prepare(args) -> int:
    from .doctor import run_prepare
    return run_prepare(Path(args.dest), args.only, args.flowers_archive, args.clip_model)


def _cmd_bench(args) -> int:
    from .bench import run_bench
    run_bench(args.labs, args.device, args.batch_size, args.steps)
    return 0


def _cmd_run_labs(args) -> int:
    from .runner import NOTEBOOK_DIR, run_notebooks
    out = run_notebooks(args.out, args.profile, args.labs,
                        Path(args.notebooks) if args.notebooks else NOTEBOOK_DIR)
    print(f"Executed notebooks and figures: {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labutils", description="Diffusion-model labs: run the notebooks, train, sample.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad input, 3 NaN/inf loss, 130/143 stopped by "
               "SIGINT/SIGTERM after a checkpoint (continue with --resume).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run-labs", help="execute the lab notebooks; copies go to runs/<time>/")
    p.add_argument("--profile", choices=PROFILES, help="default: full with a GPU, else quick")
    p.add_argument("--out", type=Path, help="output folder (default runs/<timestamp>)")
    p.add_argument("--labs", nargs="*", help="only these notebooks, by number prefix (01 02 ...)")
    p.add_argument("--notebooks", help="the notebook folder (default: the checkout's notebooks/)")
    p.set_defaults(func=_cmd_run_labs)

    p = sub.add_parser(
        "train", help="train one lab with checkpoints (torchrun for several GPUs)",
        description="Train one lab. Several GPUs: torchrun --nproc_per_node=N -m labutils "
                    "train LAB ... SIGTERM/SIGINT save a checkpoint and exit 143/130.")
    p.add_argument("lab", choices=LABS, metavar="LAB", help="one of: " + ", ".join(LABS))
    p.add_argument("--profile", choices=PROFILES,
                   help="settings profile (default: LABUTILS_PROFILE, else full with a GPU, "
                        "else quick; on --resume: the checkpoint's)")
    p.add_argument("--epochs", type=_int_at_least(0, "--epochs"),
                   help="total epochs (default: the profile's)")
    p.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"),
                   help="images per step and process (default: the profile's)")
    p.add_argument("--out", help="run folder: checkpoints, samples, loss log, summary "
                                 "(default runs/train-LAB)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest readable checkpoint in --out (none: start)")
    p.add_argument("--seed", type=int, help="random seed (default 0, or the checkpoint's)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--checkpoint-every", type=_int_at_least(0, "--checkpoint-every"),
                   default=500, help="steps between checkpoints, 0: epoch ends only "
                                     "(default 500)")
    p.add_argument("--sample-every", type=_int_at_least(0, "--sample-every"),
                   help="epochs between sample grids, 0: none (default: the profile's "
                        "sample_every; the last epoch always draws one unless 0)")
    p.add_argument("--keep", type=_int_at_least(1, "--keep"), default=3,
                   help="checkpoints kept (default 3)")
    p.add_argument("--data-dir", help="data folder (default: the data modules' search order)")
    p.add_argument("--clip-model", help="flowers-clip: CLIP name or checkpoint file "
                                        "(default LABUTILS_CLIP_MODEL, else ViT-B/32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="sample a grid (and GIF) from a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint file, or a run folder (its newest checkpoint)")
    p.add_argument("--classes", nargs="+", help="class names or indices (class-guided labs)")
    p.add_argument("--prompts", nargs="+", help="text prompts (flowers-clip)")
    p.add_argument("--w", type=float, nargs="+", help="guidance weights (default -2 ... 2)")
    p.add_argument("--steps", type=_int_at_least(1, "--steps"),
                   help="reverse steps (default: the profile's sample_steps, else T)")
    p.add_argument("--n", type=_int_at_least(1, "--n"), default=16,
                   help="images for unguided labs (default 16)")
    p.add_argument("--out", default="samples.png", help="PNG grid (default samples.png)")
    p.add_argument("--gif", help="also write the denoising trajectory as a GIF")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    p.add_argument("--clip-model", help="flowers-clip: CLIP name or checkpoint file")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("bench", help="time training steps of each lab's model, fp32 vs bf16")
    p.add_argument("--labs", nargs="+", choices=[lab for lab in LABS if lab != "mnist-assessment"],
                   default=["fmnist-unet", "fmnist-ddpm", "fmnist-optimized", "fmnist-cfg"],
                   metavar="LAB", help="labs to time (default: the Fashion-MNIST ones)")
    p.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"),
                   help="default: the course's batch of each lab")
    p.add_argument("--steps", type=_int_at_least(1, "--steps"), default=5)
    p.add_argument("--device", help="auto (default), cpu, cuda ...")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("doctor", help="report Python, torch, GPUs, driver, CPU, data; advise")
    p.add_argument("--data-dir", help="data folder to check (default LABUTILS_DATA_DIR or data/)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("prepare", help="download Fashion-MNIST, flowers and CLIP weights into "
                                       "DEST (on a login node with internet)")
    p.add_argument("dest", help="shared folder to fill")
    p.add_argument("--only", nargs="+", choices=("fmnist", "flowers", "clip"),
                   help="only these items (default all three)")
    p.add_argument("--flowers-archive", help="a local flower_photos.tgz (no download)")
    p.add_argument("--clip-model", default="ViT-B/32", help="CLIP model name (default ViT-B/32)")
    p.set_defaults(func=_cmd_prepare)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        # CheckpointError, DataNotFoundError and bad settings land here: a message, no traceback.
        print(f"labutils {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"labutils {args.command}: interrupted", file=sys.stderr)
        return 130
