"""Checkpoints: atomic files, RNG states, safe loading, fallback, NaN stop, SIGTERM + resume."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from labutils import labs
from labutils.files import save_atomic
from labutils.tools.checkpoint import (CheckpointDir, CheckpointError, load_checkpoint, rng_state,
                                       set_rng_state)
from labutils.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _draws():
    return (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    save_atomic({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    _draws(); _draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert _draws() == expected


def _ckpt(step):
    return {"format": 1, "model": {"w": torch.full((3,), float(step))}, "step": step}


def test_keeps_the_newest_k_and_leaves_no_temporary_files(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpts.save(_ckpt(step), step)
    assert [s for s, _ in ckpts.list()] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-step00000002.pt",
                                                          "ckpt-step00000003.pt"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=3)
    for step in (1, 2):
        ckpts.save(_ckpt(step), step)
    newest = ckpts.path_for(2)
    newest.write_bytes(newest.read_bytes()[:200])
    reports = []
    path, state = ckpts.latest(report=reports.append)
    assert path == ckpts.path_for(1) and state["step"] == 1
    assert len(reports) == 1 and "ckpt-step00000002.pt" in reports[0]
    assert "unreadable" in reports[0]


def test_only_unreadable_checkpoints_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "ckpt-step00000005.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        CheckpointDir(tmp_path).latest()


class _Payload:
    """Unpickling this would touch a file: weights_only loading must refuse it first."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_only_loading_refuses_a_pickled_object(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load.*weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, capsys):
    original = labs.Lab.loss_fn
    calls = {"n": 0}

    def nan_from_step_3(self):
        inner = original(self)

        def loss(model, x, y):
            calls["n"] += 1
            value = inner(model, x, y)
            return value * float("nan") if calls["n"] >= 3 else value
        return loss

    monkeypatch.setattr(labs.Lab, "loss_fn", nan_from_step_3)
    run = tmp_path / "run"
    code = main(["train", "fmnist-ddpm", "--profile", "ci", "--out", str(run), "--epochs", "2",
                 "--batch-size", "16", "--checkpoint-every", "1", "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert "loss is nan at step 3" in err and "ckpt-step00000002.pt" in err
    ckpts = CheckpointDir(run / "checkpoints")
    assert [s for s, _ in ckpts.list()] == [1, 2]
    _, state = ckpts.latest()
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run / "summary.json").exists()


def _train_args(run, epochs, device="cpu"):
    # Pinned to the CPU: bitwise-equal weights need deterministic kernels and fp32 (on a GPU
    # node the default device would be CUDA, with bf16 and cuDNN's choice of kernels);
    # tests/test_gpu_ready.py has the GPU variant, which compares steps and losses instead.
    return ["train", "fmnist-ddpm", "--profile", "ci", "--out", str(run), "--epochs", str(epochs),
            "--batch-size", "16", "--checkpoint-every", "0", "--sample-every", "0", "--quiet",
            "--device", device]


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    # 4 steps an epoch under ci; 25 epochs (100 steps, a few seconds) so that SIGTERM, sent as
    # soon as the first step is logged, always lands mid-run.
    epochs = 25
    env = dict(os.environ, LABUTILS_PROFILE="ci", TQDM_DISABLE="1")
    run = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "labutils", *_train_args(run, epochs)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    log = run / "loss.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None:
        assert time.time() < deadline, "no training step logged within 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err and "Traceback" not in err
    stopped = CheckpointDir(run / "checkpoints").latest()[1]["step"]
    assert 1 <= stopped < epochs * 4
    assert f"stopped at step {stopped}" in out

    resumed = subprocess.run([sys.executable, "-m", "labutils", *_train_args(run, epochs),
                              "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == stopped

    straight = tmp_path / "straight"
    assert main(_train_args(straight, epochs)) == 0
    reference = json.loads((straight / "summary.json").read_text())
    assert summary["step"] == reference["step"] == epochs * 4
    # The loss log lists every step once, and exact RNG/data-order restore gives the very same
    # weights as the uninterrupted run.
    steps = [json.loads(l)["step"] for l in (run / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, epochs * 4 + 1))
    assert summary["param_digests"] == reference["param_digests"]
