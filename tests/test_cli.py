"""`labutils train` / `sample` end to end on the ci profile, and bad arguments."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from labutils import LABS
from labutils.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=120):
    """`python -m labutils ARGS` in a fresh process; returns the CompletedProcess."""
    env = dict(os.environ, LABUTILS_PROFILE="ci", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "labutils", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def fast_train(lab, out, *extra):
    return main(["train", lab, "--profile", "ci", "--out", str(out), "--batch-size", "16",
                 "--quiet", *map(str, extra)])


def test_train_checkpoint_then_sample_png_and_gif(tmp_path, capsys):
    run = tmp_path / "run"
    # No grid while training here (a 7 x 10 guided grid is slow on 2 cores); `sample` draws one.
    assert fast_train("fmnist-cfg", run, "--epochs", "1", "--checkpoint-every", "1",
                      "--sample-every", "0") == 0
    ckpts = sorted((run / "checkpoints").glob("ckpt-step*.pt"))
    assert [p.name for p in ckpts] == [f"ckpt-step{s:08d}.pt" for s in (1, 2, 3)]
    assert not (run / "samples").exists()
    lines = [json.loads(l) for l in (run / "loss.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 3 and summary["wall_time_s"] > 0 and summary["cpu_time_s"] > 0
    assert summary["images_per_second"] > 0 and len(summary["epoch_times_s"]) == 1
    assert "images/s" in capsys.readouterr().out

    png, gif = tmp_path / "s.png", tmp_path / "s.gif"
    assert main(["sample", str(run), "--classes", "Top", "bag", "--w", "0", "1", "--steps", "3",
                 "--out", str(png), "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "step 3" in out and "columns: Top, Bag" in out and "rows: w=0, w=1" in out
    img = Image.open(png)
    assert img.size == ((2 * 17 + 1) * 4, (2 * 17 + 1) * 4)  # 2 weights x 2 classes
    img.verify()
    anim = Image.open(gif)
    assert anim.n_frames > 1


def test_sample_prompts_and_gif_draw_lab05s_closing_picture(tmp_path, capsys):
    """`sample RUN --prompts ... --gif` on a flowers-clip run: the grid notebook 05 ends on
    (rows w, columns prompts; the same pixels as the notebook's lab.sample of load_run's model)."""
    from labutils import lab_settings, load_run, make_grid
    from labutils.config import seeded
    from labutils.labs import Lab
    run = tmp_path / "run"
    assert main(["train", "flowers-clip", "--profile", "ci", "--out", str(run), "--quiet",
                 "--epochs", "1", "--sample-every", "0", "--checkpoint-every", "0"]) == 0
    prompts = ["A red rose bud", "A round white flower"]
    png, gif = tmp_path / "s.png", tmp_path / "s.gif"
    assert main(["sample", str(run), "--prompts", *prompts, "--w", "0", "2", "--steps", "2",
                 "--out", str(png), "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "columns: A red rose bud, A round white flower" in out and "rows: w=0, w=2" in out
    assert Image.open(gif).n_frames > 1

    settings = lab_settings("flowers-clip", "ci")
    lab = Lab(settings, "cpu")
    model = load_run(run, settings, "cpu", encoder=lab.encoder())   # CLIP loaded before seeding
    with seeded(0, "cpu"):
        mine = lab.sample(model, prompts=prompts, weights=[0, 2], steps=2)
    drawn = make_grid(mine.images, mine.ncols, scale=2)     # 32 px cells drawn 2x: about 64 px
    assert drawn.size == Image.open(png).size == ((2 * 33 + 1) * 2, (2 * 33 + 1) * 2)
    assert drawn.convert("RGB").tobytes() == Image.open(png).convert("RGB").tobytes()


def test_sample_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert fast_train("fmnist-ddpm", run, "--epochs", "1", "--checkpoint-every", "2") == 0
    # 16 samples, 8 a row, of 16 px images, 1 px padding, drawn 4x larger.
    grid = Image.open(run / "samples" / "epoch000.png")
    assert grid.size == ((8 * 17 + 1) * 4, (2 * 17 + 1) * 4)
    grid.verify()
    newest = run / "checkpoints" / "ckpt-step00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert main(["sample", str(run), "--steps", "2", "--n", "4",
                 "--out", str(tmp_path / "s.png")]) == 0
    captured = capsys.readouterr()
    assert "ckpt-step00000004.pt" in captured.err and "skipping" in captured.err
    assert "ckpt-step00000002.pt, step 2" in captured.out
    Image.open(tmp_path / "s.png").verify()


def test_lab01_grid_shows_original_noised_predicted(tmp_path):
    run = tmp_path / "run"
    assert fast_train("fmnist-unet", run, "--epochs", "1") == 0
    # 3 rows (original / noised / predicted) of 8 images.
    assert Image.open(run / "samples" / "epoch000.png").size == ((8 * 17 + 1) * 4,
                                                                 (3 * 17 + 1) * 4)


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert fast_train("fmnist-ddpm", run, "--epochs", "1", "--sample-every", "0") == 0
    assert fast_train("fmnist-ddpm", run, "--epochs", "1") == 2
    assert "--resume" in capsys.readouterr().err


def test_help_lists_every_lab(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # help text wraps lines
    for lab in LABS:
        assert lab in text


def _garbage(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    return path


BAD = {
    "unknown lab": (lambda tmp: ["train", "no-such-lab"], "invalid choice"),
    "unreadable checkpoint": (lambda tmp: ["sample", _garbage(tmp)], "unreadable"),
    "missing checkpoint": (lambda tmp: ["sample", tmp / "nothing.pt"], "no such checkpoint"),
    "batch size 0": (lambda tmp: ["train", "fmnist-ddpm", "--batch-size", "0"],
                     "--batch-size must be >= 1"),
    "negative epochs": (lambda tmp: ["train", "fmnist-ddpm", "--epochs", "-1"],
                        "--epochs must be >= 0"),
    "cuda without a GPU": (lambda tmp: ["train", "fmnist-ddpm", "--device", "cuda",
                                        "--out", tmp / "run"], "no usable CUDA GPU"),
}


def _run_in_process(args, capsys):
    """``main(args)``'s exit code and stderr; argparse errors exit through SystemExit."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_give_a_message_and_exit_2(case, tmp_path, capsys):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make_args, message = BAD[case]
    code, err = _run_in_process(make_args(tmp_path), capsys)  # an exception would fail here
    assert code == 2, err
    assert message in err


@pytest.mark.parametrize("case", ["unknown lab", "unreadable checkpoint"])
def test_bad_arguments_print_no_traceback_from_the_command(case, tmp_path):
    make_args, message = BAD[case]
    done = run_cli(*make_args(tmp_path))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


COURSE_PARAMETERS = {"fmnist-unet": 234_977, "fmnist-ddpm": 240_385,
                     "fmnist-optimized": 1_979_777, "fmnist-cfg": 2_002_561,
                     "flowers-cfg": 44_509_443, "flowers-clip": 44_900_355,
                     "mnist-assessment": 2_547_457}


@pytest.mark.parametrize("lab", LABS)
def test_each_recipe_builds_the_course_model(lab):
    from labutils import count_parameters, lab_settings
    from labutils.labs import build_model
    assert count_parameters(build_model(lab_settings(lab, "ci"))) == COURSE_PARAMETERS[lab]


def test_threads_and_ddim_from_the_command_line(tmp_path):
    # In fresh processes: --threads changes torch's global thread count.
    run = tmp_path / "run"
    done = run_cli("train", "fmnist-ddpm", "--out", run, "--threads", "1", "--quiet",
                   "--sample-every", "0")
    assert done.returncode == 0, done.stderr
    assert "1 CPU threads per process (--threads)" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["threads"] == {"threads": 1, "reason": "--threads"}
    assert isinstance(summary["bf16"], bool)

    pngs = [tmp_path / f"ddim{i}.png" for i in range(2)]
    for png in pngs:
        done = subprocess.run(
            [sys.executable, "-m", "labutils", "sample", str(run), "--sampler", "ddim",
             "--steps", "5", "--n", "4", "--out", str(png)], cwd=ROOT, capture_output=True,
            text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1"))
        assert done.returncode == 0, done.stderr
        assert "ddim sampler, 1 threads" in done.stdout
    assert pngs[0].read_bytes() == pngs[1].read_bytes()   # same seed, same picture

    bad = run_cli("sample", run, "--sampler", "ddpm", "--eta", "0.5", "--out", tmp_path / "x.png")
    assert bad.returncode == 2 and "eta applies to the DDIM sampler only" in bad.stderr
    bad = run_cli("sample", run, "--threads", "0", "--out", tmp_path / "x.png")
    assert bad.returncode == 2 and "--threads must be >= 1" in bad.stderr
