"""Two CPU processes (gloo) under torchrun train one model: their weights must agree."""
import json
import os
import subprocess
import sys
from pathlib import Path

from labutils import lab_settings, seed_everything
from labutils.tools.checkpoint import CheckpointDir
from labutils.tools.distributed import DistContext, loss_reducer, params_digest
from labutils.labs import build_model

ROOT = Path(__file__).resolve().parent.parent


def torchrun(*args, timeout=300):
    env = dict(os.environ, LABUTILS_PROFILE="ci", TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "labutils", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_single_process_helpers_are_no_ops():
    ctx = DistContext()
    assert not ctx.enabled and ctx.any(True) and not ctx.any(False)
    assert ctx.gather(5) == [5] and ctx.broadcast("x") == "x"
    assert ctx.agree(True, False) == (True, False)
    assert loss_reducer(ctx) is None
    assert ctx.main_first(lambda: 7) == 7


def test_two_gloo_processes_train_the_same_weights_and_resume(tmp_path):
    run = tmp_path / "ddp"
    common = ["train", "fmnist-ddpm", "--profile", "ci", "--out", run, "--batch-size", "16",
              "--device", "cpu", "--sample-every", "0", "--quiet"]
    done = torchrun(*common, "--epochs", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    digests = summary["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]

    # Rank 0's checkpoint holds those very weights, and training changed them.
    _, state = CheckpointDir(run / "checkpoints").latest()
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    settings = lab_settings("fmnist-ddpm", "ci")
    seed_everything(0)
    model = build_model(settings)
    initial = params_digest(model)
    model.load_state_dict(state["model"])
    assert params_digest(model) == digests[0] != initial
    # Only rank 0 logs: every step appears once.
    steps = [json.loads(l)["step"] for l in (run / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    more = torchrun(*common, "--epochs", "2", "--resume")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["step"] == 8
    assert summary["param_digests"][0] == summary["param_digests"][1]
