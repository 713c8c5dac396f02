"""Faults and bad input -> what labutils does: the probe of issue 12, kept as a table.

Each row of FAULTS is one fault a user can cause or suffer: how it is set up, the command, the
exit code, the one-line message, and (for every failure) that no file that was there before
changed and nothing was left behind. Rows run ``labutils`` in-process (``main``): an exception
would fail the row, so "no traceback" is part of every row; a few run as real processes too.
Further down: faults that need their own choreography (SIGKILL during a checkpoint write,
doctor's check of the data, the fixture's privacy, the CLIP trust rule, the Slurm token).
"""
import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pytest
import torch

from labutils import labs
from labutils.config import lab_settings
from labutils.data import flowers as flowers_mod
from labutils.data import fashion_mnist as fm
from labutils.tools import checkpoint as ckpt_mod
from labutils import files as files_mod
from labutils.tools import train_job
from labutils.tools.checkpoint import CheckpointDir, load_checkpoint
from labutils.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, LABUTILS_PROFILE="ci", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
TRAIN = ["--batch-size", "16", "--quiet", "--sample-every", "0"]   # fast ci runs


# --- helpers ------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_main(args, capsys):
    """``main(args)``: (exit code, stdout, stderr); argparse errors exit through SystemExit."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_fmnist(folder: Path, n: int = 64) -> Path:
    """Four small, valid Fashion-MNIST IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("t10k", n // 4)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return folder


def tiny_clip_file(path: Path) -> Path:
    """A small CLIP (clip.model.CLIP, 512-d outputs, 32 px) saved as a plain state dict."""
    from clip.model import CLIP
    torch.manual_seed(0)
    model = CLIP(512, 32, 1, 64, 16, 77, 49408, 64, 1, 1)
    torch.save(model.state_dict(), path)
    return path


def fake_checkpoint(path: Path, lab: str, clip: Optional[dict] = None, step: int = 1) -> Path:
    """A loadable checkpoint of ``lab`` (ci) with no weights: enough for checks that come first."""
    state = {"format": 1, "lab": lab, "settings": dataclasses.asdict(lab_settings(lab, "ci")),
             "seed": 0, "world_size": 1, "step": step, "model": {}, "optimizer": {},
             "rng": []}
    if clip is not None:
        state["clip"] = clip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def bad_image_files(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def good_flowers(folder: Path, classes=("daisy", "sunflowers", "roses"), per_class=3) -> Path:
    flowers_mod.make_flowers_fixture(folder, classes, per_class=per_class, size=40)
    return folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished fmnist-ddpm ci run: 4 steps, checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("base") / "run"
    old = os.environ.get("LABUTILS_PROFILE")
    assert main(["train", "fmnist-ddpm", "--profile", "ci", "--out", str(run), "--epochs", "1",
                 "--checkpoint-every", "2", *TRAIN]) == 0
    assert os.environ.get("LABUTILS_PROFILE") == old   # the run's profile pin is undone
    assert [s for s, _ in CheckpointDir(run / "checkpoints").list()] == [2, 4]
    return run


@dataclasses.dataclass
class Case:
    """What a row's setup may use: a private folder, the base run, monkeypatch."""

    tmp: Path
    base: Path
    monkeypatch: pytest.MonkeyPatch

    def run_copy(self) -> Path:
        shutil.copytree(self.base, self.tmp / "run")
        return self.tmp / "run"

    def ckpt(self, step: int) -> Path:
        return self.tmp / "run" / "checkpoints" / f"ckpt-step{step:08d}.pt"


@dataclasses.dataclass
class Fault:
    description: str
    setup: Callable[[Case], Sequence]        # prepares files, returns the command's arguments
    code: int                                # expected exit code
    message: str                             # expected on one line of the stream
    stream: str = "err"
    may_change: Sequence[str] = ()           # files (relative to the case folder) it may write
    then: Optional[Callable[[Case], None]] = None   # further checks of the outcome


# --- the setups -----------------------------------------------------------------------------------

def resume_with_other_clip(c: Case):
    """A flowers-clip run trained with one CLIP, resumed with another (a tiny CLIP file)."""
    c.monkeypatch.setenv("LABUTILS_CLIP_CACHE", str(c.tmp / "clip-cache"))
    c.monkeypatch.setattr(flowers_mod, "_default_dirs", lambda: [c.tmp / "no-photos"])
    fake_checkpoint(c.tmp / "run" / "checkpoints" / "ckpt-step00000001.pt", "flowers-clip",
                    clip={"model_id": "ViT-B/32", "fingerprint": "ab" * 32})
    other = tiny_clip_file(c.tmp / "other-clip.pt")
    return ["train", "flowers-clip", "--out", c.tmp / "run", "--resume", "--clip-model", other,
            "--device", "cpu", "--quiet"]


def zero_byte_newest_sample(c: Case):
    c.run_copy()
    c.ckpt(4).write_bytes(b"")
    return ["sample", c.tmp / "run", "--n", "2", "--steps", "2", "--out", c.tmp / "s.png"]


def zero_byte_newest_resume(c: Case):
    c.run_copy()
    c.ckpt(4).write_bytes(b"")
    return ["train", "fmnist-ddpm", "--out", c.tmp / "run", "--resume", *TRAIN]


def garbage_newer_with_keep_1(c: Case):
    c.run_copy()
    c.ckpt(99).write_bytes(b"garbage, not a checkpoint")
    return ["train", "fmnist-ddpm", "--out", c.tmp / "run", "--resume", "--keep", "1",
            "--epochs", "2", *TRAIN]


def after_keep_1(c: Case):
    ckpts = CheckpointDir(c.tmp / "run" / "checkpoints")
    assert [s for s, _ in ckpts.list()] == [8, 99]           # garbage left, not counted
    assert load_checkpoint(c.ckpt(8))["step"] == 8
    # ... and the next resume finds the readable one.
    assert main(["train", "fmnist-ddpm", "--out", str(c.tmp / "run"), "--resume",
                 "--keep", "1", *TRAIN]) == 0


def out_is_a_file(c: Case):
    (c.tmp / "notes.txt").write_text("my notes")
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "notes.txt", *TRAIN]


def read_only(c: Case, folder: Path):
    """Simulate a read-only file system at ``folder`` (the tests may run as root)."""
    real = os.access
    c.monkeypatch.setattr(files_mod.os, "access", lambda p, mode, **kw: (
        False if Path(p).resolve() == folder.resolve() and mode & os.W_OK
        else real(p, mode, **kw)))


def out_read_only(c: Case):
    (c.tmp / "ro").mkdir()
    read_only(c, c.tmp / "ro")
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "ro" / "run", *TRAIN]


def sample_out_is_a_folder(c: Case):
    c.run_copy()
    (c.tmp / "pictures").mkdir()
    (c.tmp / "pictures" / "holiday.png").write_bytes(b"a user's picture")
    return ["sample", c.tmp / "run", "--out", c.tmp / "pictures"]


def gif_read_only(c: Case):
    c.run_copy()
    (c.tmp / "ro").mkdir()
    read_only(c, c.tmp / "ro")
    return ["sample", c.tmp / "run", "--n", "2", "--steps", "2", "--out", c.tmp / "s.png",
            "--gif", c.tmp / "ro" / "s.gif"]


def truncated_fmnist(c: Case):
    data = tiny_fmnist(c.tmp / "fmnist")
    f = data / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run",
            "--data-dir", data, *TRAIN]


def garbage_fmnist(c: Case):
    data = tiny_fmnist(c.tmp / "fmnist")
    (data / "train-labels-idx1-ubyte.gz").write_bytes(b"<html>proxy error</html>")
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run",
            "--data-dir", data, *TRAIN]


def huge_lr(c: Case):
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run", "--lr", "1e36",
            "--checkpoint-every", "1", *TRAIN]


def only_finite_checkpoints(c: Case):
    ckpts = CheckpointDir(c.tmp / "run" / "checkpoints").list()
    assert ckpts and not (c.tmp / "run" / "summary.json").exists()
    for _, path in ckpts:
        state = load_checkpoint(path)
        tensors = list(state["model"].values()) + [
            t for s in state["optimizer"]["state"].values() for t in s.values()]
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def no_checkpoint_written(c: Case):
    assert CheckpointDir(c.tmp / "run" / "checkpoints").list() == []
    assert not (c.tmp / "run" / "summary.json").exists()


def corrupt_buffer_at(c: Case, at_step: int):
    """The loss stays finite, but a BatchNorm running_var becomes inf at ``at_step``."""
    original = labs.Lab.loss_fn
    calls = {"n": 0}

    def loss_fn(self):
        inner = original(self)

        def loss(model, x, y):
            calls["n"] += 1
            if calls["n"] == at_step:
                with torch.no_grad():
                    dict(model.named_buffers())["down0.1.running_var"].fill_(float("inf"))
            return inner(model, x, y)
        return loss
    c.monkeypatch.setattr(labs.Lab, "loss_fn", loss_fn)


def inf_buffer_before_checkpoint(c: Case):
    corrupt_buffer_at(c, 3)
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run",
            "--checkpoint-every", "1", *TRAIN]


def good_checkpoints_1_2(c: Case):
    ckpts = CheckpointDir(c.tmp / "run" / "checkpoints")
    assert [s for s, _ in ckpts.list()] == [1, 2]
    for _, path in ckpts.list():
        assert all(torch.isfinite(t).all() for t in load_checkpoint(path)["model"].values()
                   if t.is_floating_point())
    # The suggested way on: resume with a lower --lr (the optimiser takes it).
    assert main(["train", "fmnist-ddpm", "--out", str(c.tmp / "run"), "--resume",
                 "--lr", "1e-5", "--checkpoint-every", "0", *TRAIN]) == 0
    _, state = ckpts.latest()
    assert state["step"] == 4 and state["settings"]["lr"] == 1e-5
    assert {g["lr"] for g in state["optimizer"]["param_groups"]} == {1e-5}


def inf_buffer_between_checkpoints(c: Case):
    corrupt_buffer_at(c, 1)
    c.monkeypatch.setattr(train_job, "FINITE_CHECK_EVERY", 2)
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run",
            "--checkpoint-every", "0", *TRAIN]


def profile_flag_without_env(c: Case):
    c.monkeypatch.delenv("LABUTILS_PROFILE", raising=False)
    c.monkeypatch.delenv("LABUTILS_FLOWERS_DIR", raising=False)
    c.monkeypatch.setattr(flowers_mod, "_default_dirs", lambda: [c.tmp / "no-photos"])
    return ["train", "flowers-cfg", "--profile", "ci", "--out", c.tmp / "run", "--epochs", "0",
            "--device", "cpu", *TRAIN]


def data_dir_env_empty_folder(c: Case):
    (c.tmp / "empty").mkdir()
    c.monkeypatch.setenv("LABUTILS_DATA_DIR", str(c.tmp / "empty"))
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run", *TRAIN]


def data_dir_env_blank(c: Case):
    c.monkeypatch.setenv("LABUTILS_DATA_DIR", "")
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run", *TRAIN]


def flower_class_all_unreadable(c: Case):
    photos = good_flowers(c.tmp / "photos", ("daisy", "sunflowers"))
    bad_image_files(photos / "roses")
    return ["train", "flowers-cfg", "--profile", "ci", "--out", c.tmp / "run", "--epochs", "0",
            "--data-dir", photos, "--device", "cpu", *TRAIN]


def second_sigterm_during_save(c: Case, same_request_s: float = 0.0):
    """SIGTERM twice while the second checkpoint's bytes are being written; with the default
    window, the two are one request (as scancel's TERM plus the job script's forwarded one)."""
    c.monkeypatch.setattr(train_job, "SAME_REQUEST_S", same_request_s)
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(obj, f, *args, **kwargs)
    c.monkeypatch.setattr(ckpt_mod.torch, "save", save)
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run",
            "--checkpoint-every", "1", *TRAIN]


def only_the_first_checkpoint(c: Case):
    folder = c.tmp / "run" / "checkpoints"
    assert [s for s, _ in CheckpointDir(folder).list()] == [1]
    assert load_checkpoint(folder / "ckpt-step00000001.pt")["step"] == 1
    assert not list(folder.glob(".*.tmp"))


def empty_prompt(c: Case):
    return ["sample", c.tmp / "none.pt", "--prompts", "A red rose", ""]


def long_prompt(c: Case):
    fake_checkpoint(c.tmp / "clip-run.pt", "flowers-clip")
    c.monkeypatch.setenv("LABUTILS_CLIP_CACHE", str(c.tmp / "clip-cache"))
    return ["sample", c.tmp / "clip-run.pt", "--clip-model", tiny_clip_file(c.tmp / "clip.pt"),
            "--device", "cpu", "--out", c.tmp / "s.png", "--prompts", "rose " * 80]


def nan_weight(c: Case):
    c.run_copy()
    return ["sample", c.tmp / "run", "--classes", "Top", "--w", "nan"]


def jpeg_name(c: Case):
    c.run_copy()
    return ["sample", c.tmp / "run", "--n", "2", "--steps", "2", "--out", c.tmp / "grid.jpg"]


def is_jpeg(c: Case):
    assert (c.tmp / "grid.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def unknown_image_suffix(c: Case):
    c.run_copy()
    return ["sample", c.tmp / "run", "--out", c.tmp / "grid.txt"]


def fewer_epochs_than_done(c: Case):
    c.run_copy()
    return ["train", "fmnist-ddpm", "--out", c.tmp / "run", "--resume", "--epochs", "0",
            *TRAIN]


def failed_download(c: Case):
    import torchvision

    def no_network(root, train=True, download=False, **kwargs):
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b half")
        raise ConnectionError("no network in this test")
    c.monkeypatch.delenv("LABUTILS_DATA_DIR", raising=False)
    c.monkeypatch.setattr(fm, "SYSTEM_DIR", c.tmp / "no-system-copy")
    c.monkeypatch.setattr(fm, "DOWNLOAD_DIR", c.tmp / "project" / "data")
    c.monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    (c.tmp / "project").mkdir()
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run", *TRAIN]


def nothing_left_by_download(c: Case):
    assert list((c.tmp / "project").iterdir()) == []



# --- issue 20: a full disk, a held run folder, on/off switches, unbounded sampling, odd numbers --

def enospc(f):
    """What ``torch.save`` raises on a full disk: its zip writer's RuntimeError from the OSError."""
    try:
        f.write(b"PK\x03\x04 part of a checkpoint")
        raise OSError(28, "No space left on device")
    except OSError as err:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from err


def disk_full_at_third_checkpoint(c: Case):
    """Simulated ENOSPC (the real tmpfs: test_disk_full_on_a_real_tmpfs): the third write fails."""
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            enospc(f)
        return real_save(obj, f, *args, **kwargs)
    c.monkeypatch.setattr(files_mod.torch, "save", save)
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run",
            "--checkpoint-every", "1", *TRAIN]


def two_checkpoints_no_temporaries(c: Case):
    folder = c.tmp / "run" / "checkpoints"
    assert [s for s, _ in CheckpointDir(folder).list()] == [1, 2]
    assert all(load_checkpoint(p)["step"] == s for s, p in CheckpointDir(folder).list())
    assert not list(folder.glob(".*.tmp"))


def resume_without_room(c: Case):
    """Simulated: the file system reports 1 MB free, less than a 4 MB checkpoint."""
    c.run_copy()
    usage = shutil.disk_usage(c.tmp)
    c.monkeypatch.setattr(ckpt_mod.shutil, "disk_usage",
                          lambda p: usage._replace(free=2**20))
    return ["train", "fmnist-ddpm", "--out", c.tmp / "run", "--resume", "--epochs", "2",
            *TRAIN]


def sample_n_over_the_memory_limit(c: Case):
    """The limit lowered to 1 MB: 500 images of 16 x 16 need about 5 MB (nothing sampled)."""
    from labutils import sample_limits
    c.run_copy()
    c.monkeypatch.setattr(sample_limits, "PICTURE_MEMORY_LIMIT", 2**20)
    return ["sample", c.tmp / "run", "--n", "500", "--steps", "1", "--out", c.tmp / "s.png"]


def bf16_switch(value: str):
    def setup(c: Case):
        c.monkeypatch.setenv("LABUTILS_BF16", value)
        return ["train", "fmnist-ddpm", "--profile", "ci", "--out", c.tmp / "run", *TRAIN]
    return setup


def sample_steps_over_T(c: Case):
    c.run_copy()
    return ["sample", c.tmp / "run", "--n", "2", "--steps", "1000", "--sampler", "ddim",
            "--out", c.tmp / "s.png"]


RESUMED = ["run/checkpoints/ckpt-step00000004.pt", "run/loss.jsonl", "run/settings.json",
           "run/summary.json", "run/checkpoints/ckpt-step00000002.pt"]

FAULTS = [
    # 1. CLIP of a resumed flowers-clip run
    Fault("1 resume flowers-clip with another --clip-model", resume_with_other_clip, 2,
          "was trained with CLIP ViT-B/32", may_change=["clip-cache"]),
    # 2. a 0-byte newest checkpoint
    Fault("2 0-byte newest checkpoint: sample falls back", zero_byte_newest_sample, 0,
          "empty file (0 bytes", may_change=["s.png"]),
    Fault("2 0-byte newest checkpoint: --resume falls back", zero_byte_newest_resume, 0,
          "resuming from", stream="out", may_change=RESUMED),
    # 3. clean-up keeps readable checkpoints
    Fault("3 unreadable newer checkpoint with --keep 1", garbage_newer_with_keep_1, 0,
          "skipping", may_change=RESUMED, then=after_keep_1),
    # 4. messages, not tracebacks
    Fault("4 train --out is an existing file", out_is_a_file, 2, "exists and is not a folder"),
    Fault("4 train --out on a read-only file system", out_read_only, 2, "read-only"),
    Fault("4 sample --out is a folder", sample_out_is_a_folder, 2, "is a folder"),
    Fault("4 sample --gif on a read-only file system", gif_read_only, 2,
          "--gif"),   # checked before sampling: no PNG written either
    Fault("4 truncated Fashion-MNIST .gz", truncated_fmnist, 2,
          "unreadable (truncated or corrupt?)"),
    Fault("4 garbage Fashion-MNIST .gz", garbage_fmnist, 2, "BadGzipFile"),
    # 5. NaN/inf weights
    Fault("5 --lr 1e36: the run diverges", huge_lr, 3, "Try a lower learning rate (now 1e+36)",
          may_change=["run"], then=only_finite_checkpoints),
    Fault("5 inf BatchNorm running_var, finite loss", inf_buffer_before_checkpoint, 3,
          "NaN/inf in down0.1.running_var at step 3 (before writing a checkpoint)",
          may_change=RESUMED + ["run/checkpoints/ckpt-step00000001.pt"],
          then=good_checkpoints_1_2),
    Fault("5 inf buffer between checkpoints", inf_buffer_between_checkpoints, 3,
          "at step 2 (periodic check)", may_change=["run/loss.jsonl", "run/settings.json"],
          then=no_checkpoint_written),
    Fault("5 --lr 0", lambda c: ["train", "fmnist-ddpm", "--lr", "0"], 2, "--lr must be > 0"),
    Fault("5 --lr nan", lambda c: ["train", "fmnist-ddpm", "--lr", "nan"], 2,
          "--lr must be a finite number"),
    Fault("5 --lr 1e39", lambda c: ["train", "fmnist-ddpm", "--lr", "1e39"], 2,
          "--lr must be at most 1e+37"),
    # 6. --profile ci == LABUTILS_PROFILE=ci
    Fault("6 --profile ci without LABUTILS_PROFILE: flowers fixture", profile_flag_without_env,
          0, "SYNTHETIC FIXTURE", stream="out",
          may_change=["run/settings.json", "run/summary.json", "run/loss.jsonl"]),
    # 7. an explicit LABUTILS_DATA_DIR is used or refused
    Fault("7 LABUTILS_DATA_DIR is an empty folder", data_dir_env_empty_folder, 2,
          "(from LABUTILS_DATA_DIR) has no complete set of the four IDX files"),
    Fault("7 LABUTILS_DATA_DIR is set but blank", data_dir_env_blank, 2,
          "LABUTILS_DATA_DIR is set but empty"),
    # 8. a flower class never drops out silently
    Fault("8 every file of a flower class unreadable", flower_class_all_unreadable, 2,
          "no readable images for ['roses']"),
    # 9. odds and ends
    Fault("9 second SIGTERM during the save", second_sigterm_during_save, 143,
          "SIGTERM again: stopped at once",
          may_change=["run/loss.jsonl", "run/settings.json",
                      "run/checkpoints/ckpt-step00000001.pt"], then=only_the_first_checkpoint),
    Fault("9 the same SIGTERM twice at once is one request",
          lambda c: second_sigterm_during_save(c, train_job.SAME_REQUEST_S), 143,
          "SIGTERM again within 5 s: the same request",
          may_change=["run/loss.jsonl", "run/settings.json", "run/checkpoints"],
          then=lambda c: CheckpointDir(c.tmp / "run" / "checkpoints").latest()[1]["step"] >= 2
          or pytest.fail("the checkpoint being written was not completed")),
    Fault("9 sample --prompts ''", empty_prompt, 2, "a prompt is empty"),
    Fault("9 sample prompt over 77 tokens", long_prompt, 2, "longer than CLIP's 77-token "
          "context", may_change=["clip-cache"]),
    Fault("9 sample --w nan", nan_weight, 2, "--w must be a finite number"),
    Fault("9 sample --out x.jpg writes a JPEG", jpeg_name, 0, "grid.jpg", stream="out",
          may_change=["grid.jpg"], then=is_jpeg),
    Fault("9 sample --out x.txt", unknown_image_suffix, 2, "must end in .png, .jpg, .jpeg"),
    Fault("9 resume with --epochs below the steps done", fewer_epochs_than_done, 2,
          "past the end of 0 epoch(s)"),
    # 11. nothing left behind
    Fault("11 failed Fashion-MNIST download", failed_download, 2, "Fashion-MNIST not found",
          then=nothing_left_by_download),
    # 20. a full disk, a held run folder, switches, unbounded --n, odd numbers (issue 20)
    Fault("20.1 disk full at a checkpoint write (simulated ENOSPC)",
          disk_full_at_third_checkpoint, 2, "run/checkpoints: no space left on device",
          may_change=["run/loss.jsonl", "run/settings.json",
                      "run/checkpoints/ckpt-step00000001.pt",
                      "run/checkpoints/ckpt-step00000002.pt"],
          then=two_checkpoints_no_temporaries),
    Fault("20.1 the same: the last good checkpoint and the way on",
          disk_full_at_third_checkpoint, 2,
          "ckpt-step00000002.pt (not overwritten). Free some space, then continue with: "
          "labutils train fmnist-ddpm", may_change=["run"]),
    Fault("20.1 --resume without room for a checkpoint: refused before training",
          resume_without_room, 2, "no space left on device (a checkpoint needs about 4.8 MB, "
          "1.0 MB free)"),
    Fault("20.3 LABUTILS_BF16=off", bf16_switch("off"), 0, "bf16 autocast off", stream="out",
          may_change=["run"]),
    Fault("20.3 LABUTILS_BF16=maybe", bf16_switch("maybe"), 2,
          "LABUTILS_BF16='maybe' is not an on/off value: use 1/true/yes/on (on) or "
          "0/false/no/off (off)"),
    Fault("20.4 sample --n over the memory limit: refused up front", sample_n_over_the_memory_limit,
          2, "a picture of 500 images would need about 4.9 MB of memory, over the limit of "
          "1.0 MB"),
    Fault("20.6 --seed -1", lambda c: ["train", "fmnist-ddpm", "--seed", "-1"], 2,
          "--seed must be in 0 ... 2^63-1 (9223372036854775807), got -1"),
    Fault("20.6 sample --seed 2^63", lambda c: ["sample", c.tmp, "--seed", str(2**63)], 2,
          "--seed must be in 0 ... 2^63-1"),
    Fault("20.6 sample --steps above T: said once", sample_steps_over_T, 0,
          "1000 sampling steps asked for, more than the model's T = 150 diffusion steps: "
          "sampling 150", may_change=["s.png"]),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.description for f in FAULTS])
def test_fault(fault, tmp_path, base_run, monkeypatch, capsys):
    monkeypatch.setenv("LABUTILS_PROFILE", "ci")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    case = Case(tmp_path, base_run, monkeypatch)
    args = fault.setup(case)
    before = snapshot(tmp_path)

    code, out, err = run_main(args, capsys)

    assert code == fault.code, f"stdout:\n{out}\nstderr:\n{err}"
    text = out if fault.stream == "out" else err
    assert any(fault.message in line for line in text.splitlines()), text
    assert "Traceback" not in err and "truncate=True" not in err
    if fault.code == 2:   # one line: "labutils CMD: error: ..." (or argparse's usage + error)
        errors = [l for l in err.splitlines() if "error:" in l]
        assert len(errors) == 1, err
    after = snapshot(tmp_path)
    allowed = lambda rel: any(rel == m or rel.startswith(m + "/") for m in fault.may_change)
    changed = [p for p in before if after.get(p) != before[p] and not allowed(p)]
    assert not changed, f"user files lost or changed: {changed}"
    if fault.code != 0:   # a failure leaves nothing behind either
        new = [p for p in after if p not in before and not allowed(p)]
        assert not new, f"left behind: {new}"
    if fault.then is not None:
        fault.then(case)


# --- the same, as real processes: no traceback reaches the terminal ----------------------------

@pytest.mark.parametrize("setup,message", [
    (out_is_a_file, "exists and is not a folder"),
    (truncated_fmnist, "unreadable (truncated or corrupt?)"),
])
def test_real_process_prints_one_line_no_traceback(setup, message, tmp_path, base_run,
                                                   monkeypatch):
    args = setup(Case(tmp_path, base_run, monkeypatch))
    done = subprocess.run([sys.executable, "-m", "labutils", *map(str, args)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and message in done.stderr
    assert "Traceback" not in done.stderr


# --- 1. the "Continue with:" hint keeps what must stay the same ---------------------------------

def test_continue_command_keeps_clip_model_data_dir_and_sample_every(tmp_path):
    import argparse
    job = train_job.TrainJob.__new__(train_job.TrainJob)
    job.args = argparse.Namespace(clip_model="/shared/clip/ViT B-32.pt", data_dir="/shared/fl",
                                  sample_every=2, checkpoint_every=500, keep=3, device=None)
    job.settings, job.out = lab_settings("flowers-clip", "ci"), tmp_path / "run"
    command = job.continue_command()
    assert command == (f"labutils train flowers-clip --out {tmp_path / 'run'} --resume "
                       "--clip-model '/shared/clip/ViT B-32.pt' --data-dir /shared/fl "
                       "--sample-every 2")


# --- 2./3. checkpoint clean-up and empty files, unit level -------------------------------------

def test_cleanup_never_counts_or_deletes_for_unreadable_files(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=2)
    state = {"format": 1, "model": {"w": torch.ones(2)}, "step": 0}
    ckpts.save(dict(state, step=1), 1)
    (tmp_path / "ckpt-step00000050.pt").write_bytes(b"")           # 0 bytes, newer
    (tmp_path / "ckpt-step00000060.pt").write_bytes(b"PK\x03\x04")  # a cut zip, newer
    ckpts.save(dict(state, step=2), 2)
    ckpts.save(dict(state, step=3), 3)
    assert [s for s, _ in ckpts.list()] == [2, 3, 50, 60]
    messages = []
    path, found = ckpts.latest(report=messages.append)
    assert found["step"] == 3 and len(messages) == 2
    assert any("empty file (0 bytes" in m for m in messages)


# --- 4. doctor reads the data, not just its names ----------------------------------------------

def test_doctor_calls_a_truncated_fashion_mnist_file_unusable(tmp_path):
    from labutils.tools.doctor import _data_checks
    data = tiny_fmnist(tmp_path / "fmnist")
    row = [r for r in _data_checks(str(data)) if r[0] == "Fashion-MNIST"][0]
    assert row[1] is True
    f = data / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    row = [r for r in _data_checks(str(data)) if r[0] == "Fashion-MNIST"][0]
    assert row[1] is False and "t10k-images-idx3-ubyte.gz" in row[2] and "unreadable" in row[2]


# --- 8. a class that a small subset leaves out is announced -----------------------------------

def test_a_subset_without_some_class_says_so(tmp_path, capsys):
    # Two images for three classes: roses (readable) cannot be in the subset.
    photos = good_flowers(tmp_path / "photos", per_class=2)
    with pytest.warns(UserWarning, match=r"holds no image of \['roses'\]"):
        data = flowers_mod.load_flowers_tensors(16, data_dir=photos, max_images=2)
    assert set(data.labels.tolist()) <= {0, 1}
    assert "holds no image of ['roses']" in capsys.readouterr().err


# --- 10. security ------------------------------------------------------------------------------

def test_flowers_fixture_is_private_and_under_the_project(tmp_path, monkeypatch):
    import tempfile
    root = flowers_mod.fixture_root()
    # Not a fixed name in the shared temp folder (the project itself may live under /tmp).
    assert root.resolve().parent != Path(tempfile.gettempdir()).resolve()
    assert str(root).startswith(str(flowers_mod._PROJECT_ROOT))
    # A fixture folder others can write to is refused, not used.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(flowers_mod, "fixture_root", lambda: shared)
    with pytest.raises(flowers_mod.DataNotFoundError, match="writable by others"):
        flowers_mod._announce_fixture(["daisy"], RuntimeError("no photos"))
    assert list(shared.iterdir()) == []
    # A new one is made private.
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(flowers_mod, "fixture_root", lambda: fresh)
    with pytest.warns(flowers_mod.FlowersFixtureWarning):
        made = flowers_mod._announce_fixture(["daisy"], RuntimeError("no photos"))
    assert made.parent == fresh and not stat.S_IMODE(fresh.stat().st_mode) & 0o077


def test_clip_torchscript_that_is_not_openais_is_refused_unrun(tmp_path, monkeypatch):
    from labutils.clip.encoder import ClipUnavailableError, load_checkpoint as load_clip_file

    class Evil(torch.nn.Module):
        def forward(self, x):
            return x
    scripted = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(Evil()), str(scripted))

    jit_calls = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: jit_calls.append(a))
    with pytest.raises(ClipUnavailableError, match="does not run other TorchScript"):
        load_clip_file(scripted, device="cpu")
    assert jit_calls == []
    # A plain state dict is the safe path and loads.
    enc = load_clip_file(tiny_clip_file(tmp_path / "clip.pt"), device="cpu")
    assert enc.embed_dim == 512 and enc.context_length == 77


def test_slurm_token_file_is_private_whatever_the_umask(tmp_path):
    text = (ROOT / "docs" / "cluster.md").read_text()
    block = re.search(r"export JUPYTER_TOKEN=.*?\n(.*?)jupyter lab", text, re.S)
    assert block, "the Jupyter snippet in docs/cluster.md moved"
    script = "umask 022\n" + block.group(0).rsplit("\n", 1)[0]
    env = dict(os.environ, HOME=str(tmp_path), SLURM_JOB_ID="4242",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / ".jupyter-token-4242"
    token = token_file.read_text().strip()
    assert len(token) == 48
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in done.stdout + done.stderr      # never in the job's output file


# --- SIGKILL while a checkpoint is being written ---------------------------------------------

DYING_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from labutils.tools.cli import main
    real_save, calls = torch.save, {"n": 0}
    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:                    # the third checkpoint: half written, then kill -9
            f.write(b"PK\\x03\\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_during_a_checkpoint_write_resumes_to_the_same_weights(tmp_path):
    def args(run):
        return ["train", "fmnist-ddpm", "--profile", "ci", "--out", str(run), "--epochs", "2",
                "--checkpoint-every", "1", "--keep", "2", *TRAIN]
    run = tmp_path / "killed"
    done = subprocess.run([sys.executable, "-c", DYING_SAVE, *args(run)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    folder = run / "checkpoints"
    assert len(list(folder.glob(".ckpt-step00000003.pt.*.tmp"))) == 1   # killed mid-write
    assert [s for s, _ in CheckpointDir(folder).list()] == [1, 2]

    resumed = subprocess.run([sys.executable, "-m", "labutils", *args(run), "--resume"],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "ckpt-step00000002.pt (step 2 of 8)" in resumed.stdout
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    straight = tmp_path / "straight"   # the same way (a process, same threads) uninterrupted
    done = subprocess.run([sys.executable, "-m", "labutils", *args(straight)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads((run / "summary.json").read_text())
    want = json.loads((straight / "summary.json").read_text())
    assert got["step"] == want["step"] == 8 and got["resumed_from_step"] == 2
    assert got["param_digests"] == want["param_digests"]
    a = load_checkpoint(folder / "ckpt-step00000008.pt")["model"]
    b = load_checkpoint(straight / "checkpoints" / "ckpt-step00000008.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


# --- issue 20, beside the table: real processes, a real tmpfs, each switch -------------------------

def _train_args(run: Path, *extra) -> list:
    return [sys.executable, "-m", "labutils", "train", "fmnist-ddpm", "--profile", "ci",
            "--out", str(run), *TRAIN, *extra]


def _wait_for(predicate, proc, what: str, limit_s: float = 240) -> None:
    """Poll until ``predicate()`` (no timing asserted: the limit only ends a hung test)."""
    import time
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert proc.poll() is None, f"the holder ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} within {limit_s} s"
        time.sleep(0.2)


def test_a_second_train_on_a_held_run_folder_is_refused_until_the_holder_is_killed(tmp_path):
    """Two real ``labutils train`` processes on one --out; then the holder gets SIGKILL."""
    import socket
    from labutils.tools.run_lock import LOCK_NAME
    run = tmp_path / "run"
    holder = subprocess.Popen(_train_args(run, "--epochs", "100000", "--checkpoint-every", "0",
                                          "--checkpoint-minutes", "0"),
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        lock, log = run / LOCK_NAME, run / "loss.jsonl"
        _wait_for(lambda: log.is_file() and log.stat().st_size > 0, holder, "training")
        assert json.loads(lock.read_text())["pid"] == holder.pid
        # What the second job's start-up would have destroyed: a checkpoint being written.
        writing = run / "checkpoints" / ".ckpt-step00000099.pt.x1.tmp"
        writing.parent.mkdir(exist_ok=True)
        writing.write_bytes(b"half a checkpoint")
        log_inode = log.stat().st_ino

        second = subprocess.run(_train_args(run, "--epochs", "1"), cwd=ROOT, env=ENV,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().count("\n") == 0, second.stderr   # one line
        assert f"pid {holder.pid} on host {socket.gethostname()}, started" in second.stderr
        assert "in use by another labutils train" in second.stderr
        assert writing.is_file() and log.stat().st_ino == log_inode   # nothing touched
        assert holder.poll() is None

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert lock.is_file()   # left by the killed holder: not a PID file, the kernel freed it
    third = subprocess.run(_train_args(run, "--epochs", "1"), cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert not writing.exists()        # its start-up clean-up ran, under the lock
    assert not lock.exists()           # a clean exit removes the file


def test_the_lock_is_refused_within_one_process_too_and_released(tmp_path):
    from labutils.tools.run_lock import RunFolderBusy, RunLock
    folder = tmp_path / "new" / "run"
    with RunLock(folder):
        with pytest.raises(RunFolderBusy, match=rf"pid {os.getpid()} on host .*choose another"):
            RunLock(folder).acquire()
    assert not folder.exists()   # made for the lock, left empty: removed
    with RunLock(folder):
        (folder / "keep.txt").write_text("x")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


TMPFS_RUN = """
set -u
mount -t tmpfs -o size=14m tmpfs "$1" || exit 97
shift
"$@" --epochs 3 --checkpoint-every 2; echo "first=$?"
ls -a "$OUT/checkpoints"
"$@" --epochs 3 --checkpoint-every 2 --resume; echo "resume=$?"
"""


def test_disk_full_on_a_real_tmpfs(tmp_path):
    """A real 14 MB tmpfs (room for three 4 MB checkpoints, not four), mounted in a private
    mount namespace (``unshare -m``; ``-r`` as well when not root), so it disappears with the
    test's processes. The simulated ENOSPC rows of the table cover machines without it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    unshare = ["unshare", "-m"] + ([] if os.geteuid() == 0 else ["-r"])
    env = dict(ENV, OUT=str(mnt / "run"))
    try:
        done = subprocess.run([*unshare, "bash", "-c", TMPFS_RUN, "tmpfs", str(mnt),
                               *_train_args(mnt / "run")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        done = None
    if done is None or done.returncode == 97 or (done.returncode != 0 and "first=" not in
                                                 done.stdout):
        why = "no unshare" if done is None else done.stderr.strip()[-300:]
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs here ({why})")
        pytest.skip(f"cannot mount a tmpfs here ({why}): run as root, or where unprivileged "
                    "user namespaces are allowed; the simulated ENOSPC rows still run")
    out, err = done.stdout, done.stderr
    assert "first=2" in out, err
    assert "resume=2" in out, err
    errors = [l for l in err.splitlines() if "error:" in l]
    assert len(errors) == 2 and "Traceback" not in err, err
    assert "run/checkpoints: no space left on device (writing the checkpoint of step 8)" in errors[0]
    assert "Last good checkpoint: " + str(mnt / "run/checkpoints/ckpt-step00000006.pt") in err
    assert "continue with: labutils train fmnist-ddpm" in err
    # The resume says so before training: no step of it ran.
    assert "no space left on device (a checkpoint needs about" in errors[1]
    listing = out.split("first=2", 1)[1].split("resume=", 1)[0].split()
    assert sorted(n for n in listing if n.endswith(".pt")) == [
        "ckpt-step00000002.pt", "ckpt-step00000004.pt", "ckpt-step00000006.pt"]
    assert not [n for n in listing if n.endswith(".tmp")]


@pytest.mark.parametrize("value,expected", [
    ("1", True), ("ON", True), (" yes ", True), ("True", True),
    ("0", False), ("off", False), ("OFF", False), ("False", False), ("no", False),
    ("", None), ("  ", None),
])
def test_each_switch_reads_every_accepted_value(value, expected, monkeypatch):
    from labutils.config import SWITCHES, env_switch
    for name, (default, _) in SWITCHES.items():
        monkeypatch.setenv(name, value)
        assert env_switch(name) == (default if expected is None else expected), name


@pytest.mark.parametrize("name", ["LABUTILS_BF16", "LABUTILS_CLIP_OFFLINE",
                                  "LABUTILS_MNIST_DOWNLOAD"])
@pytest.mark.parametrize("value", ["maybe", "n", "2", "offf"])
def test_each_switch_refuses_other_values_by_name(name, value, monkeypatch):
    from labutils.config import ConfigError, SWITCHES, check_switches
    assert name in SWITCHES
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"^{name}='{value}' is not an on/off value: use "
                                          r"1/true/yes/on \(on\) or 0/false/no/off \(off\)"):
        check_switches()


def test_switch_bf16_off_means_off(monkeypatch):
    from labutils.config import use_bf16
    for value in ("off", "OFF", "False", " no "):
        monkeypatch.setenv("LABUTILS_BF16", value)
        assert use_bf16(torch.device("cpu")) is False
    monkeypatch.setenv("LABUTILS_BF16", "On")
    assert use_bf16(torch.device("cpu")) is True


def test_switch_clip_offline_off_allows_the_download(monkeypatch, tmp_path):
    from labutils.clip import encoder as encoder_mod
    from labutils.clip.encoder import ClipUnavailableError
    tried = []

    def download(url, root):
        tried.append(url)
        raise OSError("no network (test)")
    monkeypatch.setattr(encoder_mod.clip.clip, "_download", download)
    monkeypatch.setenv("LABUTILS_CLIP_OFFLINE", "off")
    with pytest.raises(OSError, match="no network"):
        encoder_mod.fetch_model("ViT-B/32", tmp_path)
    assert len(tried) == 1
    monkeypatch.setenv("LABUTILS_CLIP_OFFLINE", "Yes")
    with pytest.raises(ClipUnavailableError, match="LABUTILS_CLIP_OFFLINE"):
        encoder_mod.fetch_model("ViT-B/32", tmp_path)
    assert len(tried) == 1
    monkeypatch.setenv("LABUTILS_CLIP_OFFLINE", "maybe")   # an error, not the stand-in
    from labutils.clip import load_clip
    from labutils.config import ConfigError
    with pytest.raises(ConfigError, match="LABUTILS_CLIP_OFFLINE='maybe'"):
        load_clip("ViT-B/32", download_root=tmp_path)


def test_switch_mnist_download_off_means_no_download(monkeypatch, tmp_path):
    from labutils.data import mnist
    tried = []
    monkeypatch.delenv("LABUTILS_MNIST_DIR", raising=False)
    monkeypatch.setattr(mnist, "DOWNLOAD_DIR", tmp_path)
    monkeypatch.setattr(mnist, "_FAILED_DOWNLOADS", {})
    monkeypatch.setattr(mnist, "_download", lambda dest: tried.append(dest) or False)
    for value in ("off", "FALSE", "no", "0"):
        monkeypatch.setenv("LABUTILS_MNIST_DOWNLOAD", value)
        assert mnist.find_mnist()[0] is None and tried == []
    monkeypatch.setenv("LABUTILS_MNIST_DOWNLOAD", "on")
    mnist.find_mnist()
    assert tried == [tmp_path]


def test_sample_n_is_drawn_in_chunks(tmp_path, base_run, monkeypatch, capsys):
    """--n 10 with chunks of 4: three model batches of 4, 4 and 2; the grid holds all 10."""
    from labutils import diffusion
    monkeypatch.setattr(labs, "sampling_chunk", lambda device: 4)
    sizes, real = [], diffusion.DDPM.sample

    def sample(self, model, shape, *args, **kwargs):
        sizes.append(shape[0])
        return real(self, model, shape, *args, **kwargs)
    monkeypatch.setattr(diffusion.DDPM, "sample", sample)
    code, out, err = run_main(["sample", base_run, "--n", "10", "--steps", "1",
                               "--out", tmp_path / "s.png", "--gif", tmp_path / "s.gif"], capsys)
    assert code == 0, err
    assert sizes == [4, 4, 2] and "10 images" in out
    from PIL import Image
    assert Image.open(tmp_path / "s.png").size == (4 * (8 * 17 + 1), 4 * (2 * 17 + 1))  # x4
    assert Image.open(tmp_path / "s.gif").n_frames >= 1


def test_steps_over_T_is_said_once_per_command(capsys):
    lab = labs.Lab(lab_settings("fmnist-ddpm", "ci"), "cpu")
    assert lab.sampler(1000).T == 150 and lab.sampler(999, "ddim").T == 150
    err = capsys.readouterr().err
    assert err.count("more than the model's T = 150") == 1


def test_lab_port_in_use_exits_2(capsys):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_main(["lab", "--port", port], capsys)
    assert code == 2 and f"--port {port}: cannot listen on 127.0.0.1" in err
    assert "Address already in use" in err and err.count("\n") == 1


def test_train_takes_a_seed_up_to_2_63_minus_1(tmp_path, capsys):
    code, out, err = run_main(["train", "fmnist-ddpm", "--profile", "ci", "--out", tmp_path / "r",
                               "--epochs", "0", "--seed", 2**63 - 1, *TRAIN], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "settings.json").read_text())["seed"] == 2**63 - 1
