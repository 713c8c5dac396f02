"""`labutils bench`: the report's shape and the course-faithful baseline's data.

A benchmark is not a test of speed: nothing here asserts on a time, only that the numbers are
there, positive, and that both configurations were measured.
"""
import json
import re

import numpy as np
import pytest
import torch

from labutils.tools.cli import main


def _have_fashion_mnist() -> bool:
    from labutils.data.fashion_mnist import DataNotFoundError, find_fashion_mnist
    try:
        find_fashion_mnist(download=False)
        return True
    except DataNotFoundError:
        return False


@pytest.mark.skipif(not _have_fashion_mnist(), reason="needs Fashion-MNIST")
def test_bench_smoke_writes_json_and_markdown_with_baseline_and_ours(tmp_path, capsys):
    out = tmp_path / "bench"
    # One thread: the machine may be shared, and the numbers are not looked at.
    assert main(["bench", "--smoke", "--labs", "fmnist-cfg", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "native bf16:" in printed and "| lab | measure |" in printed

    report = json.loads((out / "bench.json").read_text())
    head = report["header"]
    for key in ("date", "device", "device_name", "torch", "threads", "threads_reason",
                "cpu_flags", "native_bf16", "ours_bf16"):
        assert key in head
    assert head["threads"] == 1 and head["threads_reason"] == "--threads"
    assert {"amx_bf16", "avx512_bf16"} <= set(head["cpu_flags"])

    results = report["results"]["fmnist-cfg"]
    assert set(results) == {"baseline/train", "ours/train", "baseline/sample", "ours/sample"}
    assert not any("error" in r for r in results.values())
    for config in ("baseline", "ours"):
        train = results[f"{config}/train"]
        assert train["step_ms"]["n"] == 2 and train["step_ms"]["median"] > 0
        assert train["images_per_s"] > 0 and train["epoch"]["seconds"] > 0
        assert train["peak_rss_mb"] > 0 and train["threads"]["threads"] == 1
        sample = results[f"{config}/sample"]
        assert sample["picture"] == {"kind": "guided", "rows": 2, "cols": 2, "images": 4,
                                     "batch_per_step": 8}
        assert all(r["seconds"] > 0 and r["timed_steps"] == 2 and not r["exact"]
                   for r in sample["runs"])
    assert results["baseline/train"]["bf16"] is False
    assert [(r["sampler"], r["steps"], r["bf16"]) for r in results["baseline/sample"]["runs"]] \
        == [("ddpm", 150, False)]
    assert [(r["sampler"], r["steps"]) for r in results["ours/sample"]["runs"]] \
        == [("ddpm", 150), ("ddim", 50)]

    measures = [r["measure"] for r in report["rows"]]
    for expected in ("train step", "epoch incl. data", "data preparation", "peak RSS, training",
                     "course DDPM T=150 fp32 vs ours DDIM 50", "precision only",
                     "peak RSS, sampling"):
        assert any(expected in m for m in measures), expected
    for row in report["rows"]:
        assert row["lab"] == "fmnist-cfg"
        assert row["baseline"] > 0 and row["ours"] > 0
        assert (row["ratio"] is None) == (row["unit"] == "%") and (row["ratio"] or 1) > 0

    # The physical limit: the machine's matmul throughput and the step's share of it.
    assert report["peak"]["fp32"]["gflops"] > 0 and report["peak"]["fp32"]["n"] == 256
    assert ("bf16" in report["peak"]) == head["native_bf16"]
    gflop = results["ours/train"]["step_gflop"]
    assert gflop > 0 and "step_gflop" not in results["baseline/train"]
    share = next(r for r in report["rows"] if r["measure"].startswith("arithmetic"))
    step_s = results["ours/train"]["step_ms"]["median"] / 1e3
    peak = report["peak"]["fp32"]["gflops"]
    assert share["ours"] == pytest.approx(100 * gflop / step_s / peak)
    assert re.search(r"= \*\*\d+%\*\* of the fp32 peak", share["ours_text"])
    assert "matmul 256x256: fp32" in printed
    assert any(r["estimated"] for r in report["rows"])   # est. from a few steps

    md = (out / "bench.md").read_text()
    assert "| lab | measure | baseline (course) | ours | baseline/ours |" in md
    assert md.count("| fmnist-cfg |") == len(report["rows"])
    assert "est. from 2 of" in md and head["torch"] in md and "- measured peak: matmul" in md


def test_bench_rejects_an_unknown_lab_and_a_lab_without_diffusion(capsys):
    for lab in ("no-such-lab", "fmnist-unet"):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--labs", lab])
        assert exit_.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_plan_defaults_scale_down_the_big_model_on_a_cpu():
    from labutils.tools.bench import BenchOptions, make_plan
    cpu = torch.device("cpu")
    small, big = make_plan("fmnist-cfg", cpu, BenchOptions()), make_plan("flowers-clip", cpu,
                                                                        BenchOptions())
    assert (small.batch, small.warmup, small.reps, small.sample_steps) == (128, 2, 5, 10)
    assert (big.batch, big.warmup, big.reps, big.epoch_steps, big.sample_steps) == \
        (128, 1, 2, 2, 3)
    forced = make_plan("flowers-clip", cpu, BenchOptions(reps=4, warmup=0, full_epoch=True,
                                                         exact_sampling=True))
    assert (forced.reps, forced.warmup, forced.epoch_steps, forced.sample_steps) == \
        (4, 0, None, None)


def test_time_sampling_cuts_the_chain_short_and_extrapolates():
    from labutils.tools.bench import time_sampling
    model = torch.nn.Linear(2, 2)
    calls = []

    def run(steps=40):
        for _ in range(steps):
            calls.append(1)
            model(torch.zeros(1, 2))

    r = time_sampling(model, run, 40, warmup=1, timed=3, device=torch.device("cpu"))
    assert len(calls) == 5 and not r["exact"] and r["timed_steps"] == 3   # stopped at call 5
    assert r["seconds"] == pytest.approx(r["step_ms"]["mean"] / 1e3 * 40)
    calls.clear()
    r = time_sampling(model, run, 40, warmup=1, timed=None, device=torch.device("cpu"))
    assert len(calls) == 40 and r["exact"] and r["timed_steps"] == 39
    assert not model._forward_pre_hooks    # the hook is gone either way


def test_step_flops_extrapolated_from_two_small_batches_equal_the_direct_count():
    """The count at batch 8 from batches 2 and 4 is the count at batch 8 (lab 03's U-Net,
    guided loss of lab 04 A), and a matmul's throughput is measured at all."""
    from labutils.config import lab_settings
    from labutils.labs import Lab
    from labutils.tools.bench_peak import matmul_throughput, step_flop
    lab = Lab(lab_settings("fmnist-cfg", "ci"), torch.device("cpu"))
    model, loss_fn = lab.build_model(), lab.loss_fn()
    x, y = lab.random_batch(8)
    direct = step_flop(model, loss_fn, x, y, probe=4)      # batch <= 2 probe: counted as is
    assert step_flop(model, loss_fn, x, y, probe=2) == pytest.approx(direct, rel=1e-9)
    assert direct > step_flop(model, loss_fn, x[:4], y[:4], probe=4) > 0
    assert all(p.grad is None for p in model.parameters())   # the count leaves no gradients
    r = matmul_throughput(torch.device("cpu"), torch.float32, n=64, min_seconds=0, min_reps=2)
    assert r["reps"] == 2 and r["gflops"] >= r["gflops_median"] > 0


# --- the course-faithful data sets -------------------------------------------------------------

def test_course_fashion_mnist_items_are_resized_scaled_and_flipped_per_item():
    from labutils.tools.course_baseline import CourseImages, fmnist_transform
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, :, :14] = 255                               # left half white: flips are visible
    data = CourseImages(image, np.array([3]), transform=fmnist_transform(16))
    torch.manual_seed(0)
    lefts = set()
    for _ in range(20):
        x, y = data[0]
        assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and y == 3
        assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
        lefts.add(bool(x[0, :, 0].mean() > 0))           # white on the left: not flipped
    assert lefts == {True, False}                         # both orientations drawn


@pytest.mark.skipif(not _have_fashion_mnist(), reason="needs Fashion-MNIST")
def test_course_fashion_mnist_joins_train_and_test_like_the_course():
    from labutils.tools.course_baseline import course_dataloader, course_fashion_mnist
    data = course_fashion_mnist(16)
    assert len(data) == 70_000 and len(course_dataloader(data)) == 546
    x, y = next(iter(course_dataloader(data, 4)))
    assert x.shape == (4, 1, 16, 16) and y.dtype == torch.int64


def test_course_flowers_crop_each_item_from_aspect_kept_tensors(tmp_path):
    from PIL import Image

    from labutils.tools.course_baseline import CourseFlowers, flower_files
    for k, cls in enumerate(("daisy", "roses")):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (60 + 10 * i, 40), (255 * k, 100, 30 * i)).save(
                tmp_path / cls / f"{i}.jpg")
    files, labels = flower_files(tmp_path, ("daisy", "roses"), max_images=5)
    assert len(files) == 5 and labels == [0, 0, 0, 1, 1]
    data = CourseFlowers(files, labels, img_size=32)
    assert [tuple(t.shape) for t in data.imgs[:3]] == [(3, 32, 48), (3, 32, 56), (3, 32, 64)]
    x, y = data[3]
    assert x.shape == (3, 32, 32) and y == 1 and x.min() >= -1 and x.max() <= 1
    embeddings = torch.randn(5, 512)
    x, c = CourseFlowers(files, embeddings, img_size=32)[4]
    assert x.shape == (3, 32, 32) and torch.equal(c, embeddings[4])
