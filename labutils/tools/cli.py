"""The ``labutils`` command (also ``python -m labutils``).

Subcommands: ``run-labs`` (execute the notebooks), ``lab`` (JupyterLab on 127.0.0.1 with
a token, and the SSH tunnel command to reach it), ``train`` (one lab as a batch job, with
checkpoints, resume and torchrun multi-GPU), ``sample`` (grids and GIFs from a checkpoint),
``eval`` (a checkpoint's samples scored by an offline judge),
``exercises`` (the learner edition of the notebooks, exercises as ``FIXME``),
``doctor`` (what this machine has, what to install) and ``prepare`` (stage data and weights
for offline compute nodes).

Exit codes: 0 done; 1 something failed (``prepare``: a requested item; ``train``: ranks
disagree; a write failed); 2 bad arguments, unusable input or output (message on stderr, no
traceback; also a full disk, a run folder another ``train`` holds, a bad on/off switch); 3
training stopped on a NaN/inf loss or NaN/inf weights (no checkpoint with them is written; the
last good one is kept; try a lower ``--lr``); 130 / 143 stopped by SIGINT / SIGTERM after saving
a checkpoint (``--resume`` continues; a second signal stops at once with the same code).
"""
from __future__ import annotations

import argparse
import errno
import math
import sys
from pathlib import Path
from typing import List, Optional

from ..config import LABS, PROFILES, ConfigError, check_switches, set_threads
from ..diffusion import SAMPLERS

EXIT_BAD_INPUT = 2
_BAD_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                    errno.EEXIST, errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT}


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


# torch, Python and (reduced mod 2**32) NumPy all take a seed in this range.
SEED_MAX = 2**63 - 1


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"--seed must be in 0 ... 2^63-1 ({SEED_MAX}), got "
                                         f"{value}")
    return value


def _finite_float(what: str, positive: bool = False, at_most: Optional[float] = None):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{what} must be a finite number, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be > 0, got {text!r}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"{what} must be at most {at_most:g}, got {text!r}")
        return value
    return parse


def _prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a prompt is empty: give some text, e.g. "
                                         "--prompts \"A red rose bud\"")
    return text


# --- sample -------------------------------------------------------------------------------------

def _cmd_train(args) -> int:
    from .train_job import run_train
    return run_train(args)


def _cmd_eval(args) -> int:
    from .eval_job import run_eval
    return run_eval(args)


def _cmd_sample(args) -> int:
    from ..config import LabSettings, get_device
    from .checkpoint import find_checkpoint
    from ..files import check_writable, image_format

    # Every output is checked before any work: a bad --gif must not cost the sampled grid.
    check_writable(args.out, "--out")
    out_format = image_format(args.out, "--out")
    if args.gif:
        if Path(args.gif).suffix.lower() != ".gif":
            raise ConfigError(f"--gif {args.gif}: the name must end in .gif")
        check_writable(args.gif, "--gif")
    device = get_device(args.device)
    path, state, _ = find_checkpoint(args.checkpoint, "sample")
    settings = LabSettings(**state["settings"])
    return _sample_from(args, settings, path, state, device, out_format)


def _sample_from(args, settings, path, state, device, out_format) -> int:
    from ..config import seeded
    from ..labs import Lab
    from ..plotting import make_grid, save_animation, trajectory_frames
    from ..files import grid_scale, save_png

    lab = Lab(settings, device, clip_model=args.clip_model)
    spec = lab.spec
    if args.gif and spec.picture == "denoise":
        raise ConfigError(f"lab {settings.lab} has no sampling trajectory to animate (drop --gif)")
    if spec.conditioning == "clip-text":  # CLIP and prompts first: no model is built in vain
        lab.check_clip(state.get("clip"), "pass --clip-model with the same weights")
        if args.prompts:
            _check_prompt_lengths(args.prompts, lab.encoder())
    model = lab.build_model()
    from ..ema import load_for_sampling
    which = load_for_sampling(model, state, args.ema)
    with seeded(args.seed, device):
        samples = lab.sample(model, classes=args.classes, prompts=args.prompts,
                             weights=args.w, steps=args.steps, sampler=args.sampler,
                             eta=args.eta, n=args.n, frames=15 if args.gif else 0)
    scale = grid_scale(settings.img_size)
    out = save_png(make_grid(samples.images, samples.ncols, scale=scale), Path(args.out),
                   format=out_format)
    print(f"{settings.lab} (checkpoint {path}, step {state['step']}, {which} weights, "
          f"{args.sampler or settings.sampler} sampler, {args.thread_info['threads']} threads): "
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


def _check_prompt_lengths(prompts, encoder) -> None:
    """The command line has no way to cut a prompt: a too-long one is an error saying so."""
    from ..clip.encoder import _n_tokens
    limit = encoder.context_length
    for i, prompt in enumerate(prompts, 1):
        n = _n_tokens(prompt)
        if n > limit:
            raise ConfigError(f"--prompts: prompt {i} is {n} tokens, longer than CLIP's "
                              f"{limit}-token context ({prompt[:40]!r}...): shorten it")


# --- doctor, prepare, run-labs ------------------------------------------------------------------

def _cmd_doctor(args) -> int:
    from .doctor import run_doctor
    return run_doctor(args.data_dir)


def _cmd_prepare(args) -> int:
    from .doctor import run_prepare
    return run_prepare(Path(args.dest), args.only, args.flowers_archive, args.clip_model)


def _cmd_bench(args) -> int:
    import shlex

    from .bench import BenchOptions, run_bench
    opts = BenchOptions(
        labs=args.labs, device=args.device, threads=args.threads, reps=args.reps,
        warmup=args.warmup, batch_size=args.batch_size, epoch_steps=args.epoch_steps,
        full_epoch=args.full_epoch, sample_steps=args.sample_steps,
        exact_sampling=args.exact_sampling, what=args.what, knobs=args.knobs, smoke=args.smoke,
        out=args.out, data_dir=args.data_dir, flowers_dir=args.flowers_dir)
    parts = ["labutils", "bench", "--labs", *args.labs]
    for flag, value in (("--device", args.device), ("--threads", args.threads),
                        ("--reps", args.reps), ("--warmup", args.warmup),
                        ("--batch-size", args.batch_size), ("--epoch-steps", args.epoch_steps),
                        ("--sample-steps", args.sample_steps), ("--out", args.out),
                        ("--data-dir", args.data_dir), ("--flowers-dir", args.flowers_dir)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f"--{flag.replace('_', '-')}" for flag in ("full_epoch", "exact_sampling",
                                                         "knobs", "smoke") if getattr(args, flag)]
    if args.what != "all":
        parts += ["--what", args.what]
    command = " ".join(shlex.quote(a) for a in parts)
    return run_bench(opts, getattr(args, "thread_info", None), command=command)


def _cmd_run_labs(args) -> int:
    from .runner import NOTEBOOK_DIR, NotebooksFailed, run_notebooks
    try:
        run_notebooks(args.out, args.profile, args.labs,
                      Path(args.notebooks) if args.notebooks else NOTEBOOK_DIR)
    except NotebooksFailed as err:
        print(f"labutils run-labs: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_exercises(args) -> int:
    from .exercises import run_exercises
    return run_exercises(args.out_dir, args.notebooks, args.labs)


def _check_port(ip: str, port: int) -> None:
    """:class:`ConfigError` (exit 2) when ``--port`` is taken on ``ip``, before JupyterLab
    starts (it would exit 1 after a few seconds)."""
    import socket
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as Jupyter binds
        try:
            probe.bind((ip, port))
        except (OSError, OverflowError) as err:   # taken, not ours, or not a port number
            why = getattr(err, "strerror", None) or str(err)
            raise ConfigError(f"--port {port}: cannot listen on {ip} ({why}): choose "
                              "another port, or leave out --port for a free one") from None


def _cmd_lab(args) -> int:
    from .jupyter import run_lab
    if args.port is not None:
        _check_port(args.ip, args.port)
    return run_lab(ip=args.ip, port=args.port, root=args.notebooks, login=args.login,
                   log_level=args.log_level, show_token=args.show_token or None)


def _compute_args(p) -> None:
    """Where a command computes: ``--device`` and ``--threads``."""
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=_int_at_least(1, "--threads"),
                   help="CPU threads (default: OMP_NUM_THREADS, else the CPUs this process may "
                        "use: affinity, cgroup quota, SLURM_CPUS_PER_TASK, shared among "
                        "torchrun's local processes)")


def _sampling_args(p) -> None:
    """What ``sample`` and ``eval`` share: the checkpoint and how to sample it."""
    p.add_argument("checkpoint", help="a checkpoint file, or a run folder (its newest checkpoint)")
    p.add_argument("--w", type=_finite_float("--w"), nargs="+",
                   help="guidance weights (default: sample -2 ... 2; eval 0 1 2)")
    p.add_argument("--steps", type=_int_at_least(1, "--steps"),
                   help="reverse steps (default: the profile's sample_steps, else T)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="ddpm (the course's) or ddim (deterministic; 50 steps do what DDPM "
                        "needs T for); default: the profile's")
    p.add_argument("--eta", type=_finite_float("--eta", at_most=1.0),
                   help="DDIM's noise, 0 (deterministic) ... 1 (as much as DDPM); default 0 "
                        "where the schedule ends in pure noise (T=400), else 1 (T=150: see "
                        "README)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed, 0 ... 2^63-1 (default 0)")
    p.add_argument("--clip-model", help="flowers-clip: CLIP name or checkpoint file")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="sample with the EMA weights (default when the checkpoint has them) or "
                        "the raw ones (--no-ema)")
    _compute_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labutils", description="Diffusion-model labs: run the notebooks, train, sample.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad input, 3 NaN/inf loss or weights, 75/143/130 "
               "stopped by SIGUSR1 (requeue)/SIGTERM/SIGINT after a checkpoint (continue with "
               "--resume).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run-labs", help="execute the lab notebooks; copies go to runs/<time>/")
    p.add_argument("--profile", choices=PROFILES, help="default: full with a GPU, else quick")
    p.add_argument("--out", type=Path, help="output folder (default runs/<timestamp>)")
    p.add_argument("--labs", nargs="*", help="only these notebooks, by number prefix (01 02 ...)")
    p.add_argument("--notebooks", help="the notebook folder (default: the checkout's notebooks/)")
    p.set_defaults(func=_cmd_run_labs)

    p = sub.add_parser(
        "lab", help="JupyterLab on 127.0.0.1 with a fresh token; prints the SSH tunnel command",
        description="Start JupyterLab on 127.0.0.1, a free port and a fresh token, serving the "
                    "notebooks; print the SSH tunnel command for this node and the line to "
                    "paste in the browser (the token in ~/.labutils-lab-<job>.url, mode 600). "
                    "Ctrl-C or SIGTERM stops it (exit 0).")
    p.add_argument("--ip", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else is reachable "
                        "from the network: a warning is printed)")
    p.add_argument("--port", type=_int_at_least(1, "--port"),
                   help="port (default: a free one)")
    p.add_argument("--notebooks", type=Path,
                   help="folder to serve (default: the checkout's notebooks/)")
    p.add_argument("--login", help="login host for the tunnel's -J (default: LABUTILS_LOGIN_HOST, "
                                   "else SLURM_SUBMIT_HOST when it is another host)")
    p.add_argument("--show-token", action="store_true",
                   help="print the token even when stdout is not a terminal (default: only "
                        "in ~/.labutils-lab-<job>.url, mode 600, and on a terminal)")
    p.add_argument("--log-level", default="WARN",
                   choices=("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"),
                   help="Jupyter's log level (default WARN)")
    p.set_defaults(func=_cmd_lab)

    p = sub.add_parser(
        "train", help="train one lab with checkpoints (torchrun for several GPUs)",
        description="Train one lab. Several GPUs: torchrun --nproc_per_node=N -m labutils "
                    "train LAB ... SIGUSR1/SIGTERM/SIGINT save a checkpoint and exit 75 (requeue: "
                    "slurm/*.sbatch)/143/130.")
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
    p.add_argument("--seed", type=_seed,
                   help="random seed, 0 ... 2^63-1 (default 0, or the checkpoint's)")
    _compute_args(p)
    p.add_argument("--checkpoint-every", type=_int_at_least(0, "--checkpoint-every"),
                   default=500, help="steps between checkpoints, 0: none by steps (default "
                                     "500); a checkpoint is also written at the end and on "
                                     "SIGTERM/SIGINT")
    p.add_argument("--checkpoint-minutes", type=_finite_float("--checkpoint-minutes"),
                   help="also a checkpoint after this many minutes without one, 0: none by "
                        "time (default: 15 for the flowers labs, whose checkpoints are 0.5 GB; "
                        "5 for the others)")
    p.add_argument("--sample-every", type=_int_at_least(0, "--sample-every"),
                   help="epochs between sample grids, 0: none (default: the profile's "
                        "sample_every; the last epoch always draws one unless 0)")
    p.add_argument("--keep", type=_int_at_least(1, "--keep"), default=3,
                   help="readable checkpoints kept (default 3)")
    # Adam's first step is lr / (1 - 0.9): beyond 1e37 it does not fit a float32 weight.
    p.add_argument("--lr", type=_finite_float("--lr", positive=True, at_most=1e37),
                   help="learning rate (default: the profile's; on --resume the checkpoint's, "
                        "or this one: how a run stopped by NaN/inf continues)")
    p.add_argument("--data-dir", help="data folder (default: the data modules' search order)")
    p.add_argument("--clip-model", help="flowers-clip: CLIP name or checkpoint file "
                                        "(default LABUTILS_CLIP_MODEL, else ViT-B/32)")
    p.add_argument("--ema-decay", type=_finite_float("--ema-decay", at_most=0.999999),
                   default=None, help="decay of the EMA of the weights kept for sampling "
                                      "(default 0.999, warm-up aware; 0: none; on --resume: "
                                      "the checkpoint's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step (default: the profile's; on for the "
                        "flowers labs under full, where it pays)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="sample a grid (and GIF) from a checkpoint")
    _sampling_args(p)
    p.add_argument("--classes", nargs="+", help="class names or indices (class-guided labs)")
    p.add_argument("--prompts", nargs="+", type=_prompt,
                   help="text prompts (flowers-clip), at most 77 CLIP tokens each")
    p.add_argument("--n", type=_int_at_least(1, "--n"), default=16,
                   help="images for unguided labs (default 16)")
    p.add_argument("--out", default="samples.png",
                   help="the grid: .png or .jpg (default samples.png)")
    p.add_argument("--gif", help="also write the denoising trajectory as a GIF")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "eval", help="score a checkpoint's samples with an offline judge (accuracy, Frechet)",
        description="Sample a trained lab model and score the samples with a small classifier "
                    "(the judge) trained once on the lab's real data and cached in data/judges/: "
                    "conditional accuracy per class and guidance weight (best w named), Frechet "
                    "distance on the judge's features with the real-vs-real floor at the same "
                    "count, and for unguided labs the class histogram. Writes a table and "
                    "eval-step<N>-<ema|raw>.json in the run folder.")
    _sampling_args(p)
    p.add_argument("--n", type=_int_at_least(2, "--n"), default=100,
                   help="samples per guidance weight (unguided labs: in all; default 100)")
    p.add_argument("--json", help="where to write the report (default: in the run folder)")
    p.add_argument("--data-dir", help="the lab's data folder for the judge (default: the data "
                                      "modules' search order)")
    p.set_defaults(func=_cmd_eval)

    from ..config import lab_settings   # labs with diffusion (T) can be benched
    bench_labs = [lab for lab in LABS if lab_settings(lab, "full").T]
    bench_default = ["fmnist-optimized", "fmnist-cfg", "flowers-clip"]   # labs 03, 04, 05
    p = sub.add_parser(
        "bench", help="time training and sampling: the course's way vs labutils', same run",
        description="Measure each lab twice in the same run, the course's way (fp32, eager, "
                    "plain Adam, a DataLoader transforming each item, DDPM over all T steps) "
                    "and labutils' (BatchLoader, train(), bf16 where native, DDIM 50): training "
                    "step (median and spread), an epoch incl. data (est. from K steps), data "
                    "preparation, peak memory, sampling the course's grids. Each measurement "
                    "runs in its own process. Writes bench.json and bench.md. Defaults: 2 "
                    "warm-up + 5 timed steps; on a CPU, models over 10M parameters (flowers) "
                    "1 + 2 steps, K = 2 and 3 timed reverse steps (an fp32 step at batch 128 "
                    "takes ~30 s on 2 cores). A benchmark: nothing is asserted.")
    p.add_argument("--labs", nargs="+", choices=bench_labs, default=bench_default,
                   metavar="LAB", help="labs to measure, any with diffusion: "
                                       f"{', '.join(bench_labs)} (default: "
                                       f"{' '.join(bench_default)})")
    _compute_args(p)
    p.add_argument("--reps", type=_int_at_least(1, "--reps"),
                   help="timed training steps (default 5; 2 for >10M-parameter models on a CPU)")
    p.add_argument("--steps", dest="reps", type=_int_at_least(1, "--steps"),
                   help=argparse.SUPPRESS)   # the old name of --reps
    p.add_argument("--warmup", type=_int_at_least(0, "--warmup"),
                   help="untimed steps first (default 2; 1 for >10M-parameter models on a CPU)")
    p.add_argument("--batch-size", type=_int_at_least(1, "--batch-size"),
                   help="default: the course's batch (128)")
    p.add_argument("--epoch-steps", type=_int_at_least(1, "--epoch-steps"),
                   help="K: steps incl. data timed to estimate an epoch (default: --reps on a "
                        "CPU, 50 on a GPU)")
    p.add_argument("--full-epoch", action="store_true", help="time a whole epoch instead")
    p.add_argument("--sample-steps", type=_int_at_least(1, "--sample-steps"),
                   help="reverse steps timed to estimate a sampling chain (default on a CPU: "
                        "10; 3 for >10M-parameter models; on a GPU: all)")
    p.add_argument("--exact-sampling", action="store_true",
                   help="run every reverse step (DDPM T=400 on a CPU takes many minutes)")
    p.add_argument("--what", choices=("train", "sample", "all"), default="all")
    p.add_argument("--knobs", action="store_true",
                   help="also ours with channels_last and with torch.compile (training step; "
                        "compile time reported apart)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes (batch 8, 1+2 steps, 2 timed reverse steps, a 2 x 2 "
                        "grid): checks the mechanics in seconds; the numbers mean nothing")
    p.add_argument("--out", type=Path,
                   help="folder for bench.json and bench.md (default runs/bench-<timestamp>)")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual search)")
    p.add_argument("--flowers-dir",
                   help="flower photos <dir>/<class>/*.jpg (default LABUTILS_FLOWERS_DIR, "
                        "else data/cropped_flowers)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "exercises", help="write the learner edition of the notebooks (exercises as FIXME)",
        description="Write the learner edition of the lab notebooks into OUT_DIR: every region "
                    "from '# BEGIN EXERCISE' to '# END EXERCISE' becomes its '# LEARNER: ' lines "
                    "(or one 'FIXME' line), outputs cleared. The checkout's notebooks are the "
                    "solutions and are never changed (see notebooks/README.md).")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write the notebooks to")
    p.add_argument("--labs", nargs="*", help="only these notebooks, by number prefix (01 02 ...)")
    p.add_argument("--notebooks", type=Path,
                   help="the solution notebooks (default: the checkout's notebooks/)")
    p.set_defaults(func=_cmd_exercises)

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
        check_switches()   # a bad LABUTILS_BF16=... is refused before any work
        if hasattr(args, "threads"):   # commands that compute: threads fit the allocation
            args.thread_info = set_threads(args.threads)
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        # CheckpointError, DataNotFoundError and bad settings land here: a message, no traceback.
        print(f"labutils {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        print(f"labutils {args.command}: interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)   # train's StopNow: 128 + the signal's number
    except OSError as err:
        # A folder that cannot be written, a full disk...: one line, no traceback. Unusable
        # paths are bad input (2); anything else failed (1).
        print(f"labutils {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if err.errno in _BAD_PATH_ERRNOS else 1
