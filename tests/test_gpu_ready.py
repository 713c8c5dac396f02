"""What a first run on a GPU needs, checked without one (issue 13): bf16 only from compute
capability 8.0, the rank's own CUDA RNG in checkpoints, process-group arguments, losses read
every N steps, labels checked once per data set, no host sync per reverse step, the checkpoint
cadence, and the SIGTERM path under torchrun (gloo) with a 0.53 GB checkpoint. The GPU variant
of the SIGTERM + resume test runs only where CUDA is."""
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from labutils import DDPM, BasicUNet, seed_everything, train
from labutils import config
from labutils.data import BatchLoader, TensorImageDataset
from labutils.tools import distributed
from labutils.tools.checkpoint import CheckpointDir, rng_state, set_rng_state
from labutils.tools.cli import main
from labutils.training import ddpm_loss, enable_cuda_speedups, guided_ddpm_loss

ROOT = Path(__file__).resolve().parent.parent


# --- 6. bf16 autocast needs compute capability >= 8.0 --------------------------------------------

@pytest.mark.parametrize("capability, expected", [
    ((6, 1), False), ((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 6), True),
    ((9, 0), True)])
def test_bf16_on_cuda_only_from_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.delenv("LABUTILS_BF16", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # V100/T4 too
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda index=None: asked.append(index) or capability)
    assert config.use_bf16(torch.device("cuda", 1)) is expected
    assert asked == [1]          # the capability of the GPU the run uses
    monkeypatch.setenv("LABUTILS_BF16", "1")
    assert config.use_bf16(torch.device("cuda")) is True


# --- 5. checkpoints hold the rank's own CUDA RNG state --------------------------------------------

class _FakeCudaRng:
    """Eight visible GPUs, each with its own generator state."""

    def __init__(self, monkeypatch, current=0):
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(8)}
        self.current = current
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i="cuda": self.states[i].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: 1 / 0)  # never all GPUs

    def _set(self, state, i="cuda"):
        self.states[i] = state.clone()


def test_rng_state_saves_and_restores_only_the_ranks_gpu(monkeypatch):
    gpus = _FakeCudaRng(monkeypatch)
    state = rng_state(torch.device("cuda", 3))
    assert len(state["cuda"]) == 1 and int(state["cuda"][0][0]) == 3
    # Resumed on a node with another GPU count, as rank 5: that rank's GPU gets the state.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_rng_state(state, torch.device("cuda", 5))
    assert int(gpus.states[5][0]) == 3 and int(gpus.states[0][0]) == 0
    # The older format (every visible GPU's state): the rank's entry is used.
    old = dict(state, cuda=[torch.full((16,), 40 + i, dtype=torch.uint8) for i in range(4)])
    set_rng_state(old, torch.device("cuda", 2))
    assert int(gpus.states[2][0]) == 42


def test_rng_state_warns_when_exactness_cannot_be_kept(monkeypatch):
    _FakeCudaRng(monkeypatch)
    gpu_state = rng_state(torch.device("cuda", 0))
    cpu_state = rng_state(torch.device("cpu"))
    assert cpu_state["cuda"] == []
    with pytest.warns(RuntimeWarning, match="cannot be restored here"):
        set_rng_state(gpu_state, torch.device("cpu"))      # a CUDA checkpoint resumed on a CPU
    with pytest.warns(RuntimeWarning, match="saved without a GPU"):
        set_rng_state(cpu_state, torch.device("cuda", 0))  # and the reverse
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_rng_state(cpu_state, torch.device("cpu"))      # CPU to CPU: exact, silent


# --- 4. the process group: timeout and device_id --------------------------------------------------

def test_process_group_gets_a_timeout_and_the_ranks_gpu(monkeypatch):
    monkeypatch.delenv("LABUTILS_DIST_TIMEOUT", raising=False)
    kw = distributed.process_group_kwargs("nccl", torch.device("cuda", 1))
    assert kw["backend"] == "nccl" and kw["device_id"] == torch.device("cuda", 1)
    assert kw["timeout"] == datetime.timedelta(seconds=distributed.DEFAULT_COLLECTIVE_TIMEOUT_S)
    assert kw["timeout"] > datetime.timedelta(minutes=10)   # NCCL's default
    gloo = distributed.process_group_kwargs("gloo", torch.device("cpu"))
    assert "device_id" not in gloo and gloo["timeout"] == kw["timeout"]
    monkeypatch.setenv("LABUTILS_DIST_TIMEOUT", "90")
    assert distributed.process_group_kwargs("gloo", torch.device("cpu"))["timeout"] == \
        datetime.timedelta(seconds=90)
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("LABUTILS_DIST_TIMEOUT", bad)
        with pytest.raises(config.ConfigError, match="LABUTILS_DIST_TIMEOUT"):
            distributed.process_group_kwargs("gloo", torch.device("cpu"))


# --- host syncs: losses read every N steps, labels once per data set ------------------------------

def _loader(n=32, batch=8, labels=None):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    return BatchLoader(TensorImageDataset(images, torch.zeros(n).long() if labels is None
                                          else labels), batch)


def _ddpm_run(log_every, on_log=None, loss=None):
    seed_everything(0)
    model = BasicUNet(1, 8, (8, 16, 16), T=150)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = loss or ddpm_loss(DDPM.linear(150))
    return train(model, loss, _loader(), optimizer, 2, progress=False, amp=False,
                 log_every=log_every, on_log=on_log)


def test_losses_read_in_windows_are_the_same_losses():
    windows = []
    every_step = _ddpm_run(1).losses
    batched = _ddpm_run(3, on_log=windows.append)
    assert batched.losses == every_step and len(every_step) == 8
    # Windows of 3 steps, cut at the epoch end (4 steps an epoch): 3 + 1, 3 + 1.
    assert [[step for step, _, _ in w] for w in windows] == [[1, 2, 3], [4], [5, 6, 7], [8]]
    assert [w[0][1] for w in windows] == [0, 0, 1, 1]


def test_a_nan_inside_a_window_is_found_and_named():
    calls = {"n": 0}
    inner = ddpm_loss(DDPM.linear(150))

    def nan_at_5(model, x, y):
        calls["n"] += 1
        value = inner(model, x, y)
        return value * math.nan if calls["n"] == 5 else value
    with pytest.raises(FloatingPointError, match="loss is nan at step 5 \\(epoch 1\\)"):
        _ddpm_run(3, loss=nan_at_5)


class _TinyGuided(torch.nn.Module):
    """model(x, t, c, c_mask) of the right shapes, a single weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, t, c, c_mask):
        return x * self.w + (c * c_mask).sum(1).view(-1, 1, 1, 1)


def test_guided_loss_checks_labels_once_per_data_set(monkeypatch):
    loss = guided_ddpm_loss(DDPM.linear(150), 0.1, n_classes=3)
    checked = []
    original = loss.check_labels
    monkeypatch.setattr(loss, "check_labels", lambda labels: checked.append(1) or original(labels))
    seed_everything(0)
    model = _TinyGuided()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    labels = torch.arange(32) % 3
    result = train(model, loss, _loader(labels=labels), optimizer, 2, progress=False, amp=False)
    assert result.step == 8 and checked == [1]
    # A label outside [0, 3) is an error before the first step, naming the range.
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got \[0, 7\]"):
        train(model, guided_ddpm_loss(DDPM.linear(150), 0.1, n_classes=3),
              _loader(labels=labels.clone().index_fill_(0, torch.tensor([4]), 7)), optimizer, 1,
              progress=False, amp=False)
    # Called outside train() (nothing checked), each batch is checked.
    with pytest.raises(ValueError, match="must lie in"):
        guided_ddpm_loss(DDPM.linear(150), 0.1, n_classes=3)(
            model, torch.zeros(2, 1, 8, 8), torch.tensor([0, 9]))


def _no_host_reads(monkeypatch):
    def sync(*args, **kwargs):
        raise AssertionError("a value was read back to the host")
    for name in ("__int__", "__float__", "__bool__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, sync)


def test_reverse_steps_read_nothing_back_and_add_no_noise_at_t0(monkeypatch):
    ddpm = DDPM.linear(10)
    x = torch.randn(4, 1, 2, 2)
    e = torch.randn(4, 1, 2, 2)
    t = torch.tensor([0, 3, 0, 9])
    with monkeypatch.context() as m:
        _no_host_reads(m)
        out = ddpm.reverse_q(x, t, e)
    mean = ddpm.sqrt_a_inv[t].view(-1, 1, 1, 1) * (x - ddpm.pred_noise_coeff[t].view(-1, 1, 1, 1)
                                                   * e)
    assert torch.equal(out[0], mean[0]) and torch.equal(out[2], mean[2])    # t == 0: the mean
    assert not torch.allclose(out[1], mean[1]) and not torch.allclose(out[3], mean[3])


def test_cuda_speedups_switch_on_cudnn_benchmark_and_tf32():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        enable_cuda_speedups()
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


def test_adam_is_fused_on_cuda_only():
    from labutils.labs import fused_adam_kwargs
    assert fused_adam_kwargs("cuda:1") == {"fused": True}
    assert fused_adam_kwargs(torch.device("cpu")) == {}


# --- checkpoint cadence: by steps or wall time, always at the end -----------------------------------

TRAIN = ["--profile", "ci", "--batch-size", "16", "--sample-every", "0", "--quiet",
         "--device", "cpu"]


def _steps_saved(run):
    return [s for s, _ in CheckpointDir(run / "checkpoints").list()]


def test_no_checkpoint_per_epoch_only_at_the_end(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "fmnist-ddpm", "--out", str(run), "--epochs", "3",
                 "--checkpoint-every", "0", *TRAIN]) == 0
    assert _steps_saved(run) == [12]           # 3 epochs of 4 steps: no epoch-end files


def test_checkpoint_every_steps_and_at_the_end(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "fmnist-ddpm", "--out", str(run), "--epochs", "2",
                 "--checkpoint-every", "3", "--keep", "5", *TRAIN]) == 0
    assert _steps_saved(run) == [3, 6, 8]


def test_checkpoint_by_wall_time(tmp_path, monkeypatch):
    from labutils.tools import train_job
    clock = {"now": 1000.0}

    def monotonic():
        clock["now"] += 40.0          # every call: 40 s later
        return clock["now"]
    monkeypatch.setattr(train_job.time, "monotonic", monotonic)
    run = tmp_path / "run"
    assert main(["train", "fmnist-ddpm", "--out", str(run), "--epochs", "1",
                 "--checkpoint-every", "0", "--checkpoint-minutes", "1", "--keep", "9",
                 *TRAIN]) == 0
    saved = _steps_saved(run)
    assert 4 in saved and len(saved) >= 2      # some by time before the end


def test_checkpoint_minutes_defaults_per_lab_and_refuses_negative(tmp_path, capsys):
    from labutils.tools import train_job
    assert train_job.CHECKPOINT_MINUTES["flowers-cfg"] > train_job.DEFAULT_CHECKPOINT_MINUTES
    assert main(["train", "fmnist-ddpm", "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--checkpoint-minutes", "-1", *TRAIN]) == 2
    assert "--checkpoint-minutes must be >= 0" in capsys.readouterr().err


# --- 3. SIGTERM to torchrun (gloo) with a flowers-size checkpoint -----------------------------------

def _torchrun(*args):
    env = dict(os.environ, LABUTILS_PROFILE="ci", TQDM_DISABLE="1", OMP_NUM_THREADS="1",
               TORCH_ELASTIC_SHUTDOWN_TIMEOUT="100")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "labutils", *map(str, args)], env


def test_sigterm_to_torchrun_saves_a_large_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "fc"
    common = ["train", "flowers-cfg", "--profile", "ci", "--out", run, "--device", "cpu",
              "--sample-every", "0", "--quiet", "--checkpoint-every", "0"]
    cmd, env = _torchrun(*common, "--epochs", "40")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = run / "loss.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None:
        assert time.time() < deadline, "no training step logged within 300 s"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)             # to torchrun, which forwards it to the ranks
    out, err = proc.communicate(timeout=300)
    assert "SIGTERM received" in err and "stopped at step" in out, err[-3000:]
    path, state = CheckpointDir(run / "checkpoints").latest()
    assert path.stat().st_size > 500e6           # model + Adam state of 44.5 M parameters
    stopped = state["step"]
    assert 1 <= stopped < 40 and state["world_size"] == 2 and len(state["rng"]) == 2

    cmd, env = _torchrun(*common, "--epochs", str(stopped + 1), "--resume")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == stopped and summary["step"] == stopped + 1
    assert summary["param_digests"][0] == summary["param_digests"][1]


# --- 2. the GPU variant of SIGTERM + resume: steps and losses, not bits ------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sigterm_and_resume_on_cuda_keep_steps_and_loss_trajectory(tmp_path):
    args = lambda run: ["train", "fmnist-ddpm", "--profile", "ci", "--out", str(run),
                        "--epochs", "250", "--batch-size", "16", "--checkpoint-every", "0",
                        "--sample-every", "0", "--quiet", "--device", "cuda"]
    env = dict(os.environ, LABUTILS_PROFILE="ci", TQDM_DISABLE="1")
    run = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "labutils", *args(run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "loss.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM landed")
    assert proc.returncode == 143, err
    resumed = subprocess.run([sys.executable, "-m", "labutils", *args(run), "--resume"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    assert main(args(straight)) == 0
    a = [json.loads(l) for l in log.read_text().splitlines()]
    b = [json.loads(l) for l in (straight / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 1001))
    mean = lambda rows: sum(r["loss"] for r in rows[-100:]) / 100
    assert abs(mean(a) - mean(b)) < 0.25 * mean(b)
