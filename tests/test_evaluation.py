"""Judges, metrics, `evaluate` and `labutils eval`, on tiny data (seconds, not the real judges)."""
import dataclasses
import gzip
import json
import struct
import warnings

import numpy as np
import pytest
import torch

from labutils.config import ConfigError, lab_settings
from labutils.data import TensorImageDataset, load_fashion_mnist_tensors
from labutils.evaluation import judges as J
from labutils.evaluation.evaluate import (class_prompts, evaluate, evaluate_denoiser,
                                          format_denoiser_report, format_report, heldout_floor,
                                          judged_prompts)
from labutils.evaluation.metrics import (best_weight, class_histogram, conditional_accuracy,
                                         frechet_distance, histogram_entropy, real_floor)
from labutils.labs import Lab, get_spec
from labutils.tools.cli import main

TINY = J.Recipe(epochs=4, batch_size=64, lr=3e-3, width=8, augment=lambda x: x)


@pytest.fixture(scope="module")
def tiny_splits():
    """1,500 train and 500 test images of Fashion-MNIST at 16px (a fixed draw)."""
    train = load_fashion_mnist_tensors(16, splits=("train",)).subset(1500, seed=1)
    test = load_fashion_mnist_tensors(16, splits=("test",)).subset(500, seed=2)
    return J.JudgeData(train, test, tuple(train.classes), "tiny Fashion-MNIST")


@pytest.fixture(scope="module")
def tiny_judge(tiny_splits, tmp_path_factory):
    return J.get_judge("fashion-mnist", 16, splits=tiny_splits, recipe=TINY,
                       directory=tmp_path_factory.mktemp("judges"), progress=None)


# --- judges ------------------------------------------------------------------------------------

def test_a_judge_on_tiny_data_is_far_above_chance(tiny_judge, tiny_splits):
    assert tiny_judge.test_accuracy > 0.55          # chance is 0.10
    assert tiny_judge.accuracy(tiny_splits.test) == pytest.approx(tiny_judge.test_accuracy)
    feats = tiny_judge.features(tiny_splits.test.images[:7])
    assert feats.shape == (7, J.FEATURE_DIM) and feats.dtype == torch.float64


def test_judges_are_cached_with_the_data_fingerprint(tiny_splits, tmp_path):
    said = []
    first = J.get_judge("fashion-mnist", 16, splits=tiny_splits, recipe=TINY,
                        directory=tmp_path, progress=said.append)
    files = list(tmp_path.glob("fashion-mnist-16px-*.pt"))
    assert len(files) == 1 and J.fingerprint(tiny_splits, TINY)[:16] in files[0].name
    # The cache is plain tensors and containers: it loads with weights_only=True.
    state = torch.load(files[0], weights_only=True)
    assert state["meta"]["fingerprint"] == J.fingerprint(tiny_splits, TINY)
    said.clear()
    again = J.get_judge("fashion-mnist", 16, splits=tiny_splits, recipe=TINY,
                        directory=tmp_path, progress=said.append)
    assert not any("training" in s for s in said)   # loaded, not trained
    x = tiny_splits.test.images[:20]
    assert torch.equal(first.logits(x), again.logits(x))
    # Changed data (one label) -> another fingerprint -> a new judge replaces the old file.
    labels = tiny_splits.train.labels.clone()
    labels[0] = (labels[0] + 1) % 10
    changed = J.JudgeData(TensorImageDataset(tiny_splits.train.images, labels),
                          tiny_splits.test, tiny_splits.classes, "changed")
    assert J.fingerprint(changed, TINY) != J.fingerprint(tiny_splits, TINY)
    J.get_judge("fashion-mnist", 16, splits=changed, recipe=TINY, directory=tmp_path,
                progress=said.append)
    assert any("training" in s for s in said)
    assert [p.name for p in tmp_path.glob("*.pt")] == [
        f"fashion-mnist-16px-v{J.JUDGE_VERSION}-{J.fingerprint(changed, TINY)[:16]}.pt"]
    # A changed recipe (one more epoch) is another judge too: the cache is not reused.
    longer = J.Recipe(epochs=TINY.epochs + 1, batch_size=TINY.batch_size, lr=TINY.lr,
                      width=TINY.width, augment=TINY.augment)
    assert J.fingerprint(changed, longer) != J.fingerprint(changed, TINY)
    said.clear()
    J.get_judge("fashion-mnist", 16, splits=changed, recipe=longer, directory=tmp_path,
                progress=said.append)
    assert any("training" in s for s in said)
    assert [p.name for p in tmp_path.glob("*.pt")] == [
        f"fashion-mnist-16px-v{J.JUDGE_VERSION}-{J.fingerprint(changed, longer)[:16]}.pt"]


def test_a_corrupt_cache_is_retrained_not_trusted(tiny_splits, tmp_path):
    path = tmp_path / f"fashion-mnist-16px-v{J.JUDGE_VERSION}-{J.fingerprint(tiny_splits, TINY)[:16]}.pt"
    path.write_bytes(b"not a torch file")
    judge = J.get_judge("fashion-mnist", 16, splits=tiny_splits, recipe=TINY,
                        directory=tmp_path, progress=None)
    assert judge.test_accuracy > 0.5
    assert torch.load(path, weights_only=True)["meta"]["fingerprint"] == J.fingerprint(tiny_splits, TINY)


def test_no_flower_quality_on_the_generated_fixture(tmp_path, monkeypatch):
    from labutils.data import flowers
    root = tmp_path / "fixture-root"
    root.mkdir()
    monkeypatch.setattr(flowers, "fixture_root", lambda: root)
    fixture = flowers.make_flowers_fixture(root / "daisy-sunflowers-roses", per_class=3)
    with pytest.raises(J.JudgeUnavailable, match="fixture"):
        J.get_judge("flowers", 32, data_dir=str(fixture))
    # And with no photos anywhere (the ci profile's case), no judge either.
    monkeypatch.delenv("LABUTILS_FLOWERS_DIR", raising=False)
    monkeypatch.setattr(flowers, "_default_dirs", lambda: [tmp_path / "none"])
    with pytest.raises(J.JudgeUnavailable, match="no flower photos"):
        J.get_judge("flowers", 32)


def test_stratified_split_is_fixed_and_holds_out_every_class():
    labels = torch.arange(100) % 3
    a = J.stratified_split(labels, 0.2, seed=0)
    b = J.stratified_split(labels, 0.2, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    train, test = a
    assert len(set(train.tolist()) & set(test.tolist())) == 0 and len(train) + len(test) == 100
    assert sorted(labels[test].unique().tolist()) == [0, 1, 2]


# --- metrics -----------------------------------------------------------------------------------

def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g,
                                                                              dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(a.shape, generator=g, dtype=torch.float64)
    values = [frechet_distance(a, a + s * noise) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] > 0
    # Exact case: b = 2a + 3 has mean 2mu + 3 and covariance 4S, so the distance is
    # |mu + 3|^2 + tr(S + 4S - 2 * 2S) = |mu + 3|^2 + tr(S).
    b = 2 * a + 3
    mu, cov = a.mean(0), torch.cov(a.T)
    assert frechet_distance(a, b) == pytest.approx(float((mu + 3).pow(2).sum() + cov.trace()),
                                                   rel=1e-6)


def test_judge_features_move_away_from_real_images_as_noise_is_added(tiny_judge, tiny_splits):
    real = tiny_splits.test.images
    floor = real_floor(tiny_judge.features(real), 200, seed=0)
    assert floor["n"] == 200 and floor["floor"] > 0
    g = torch.Generator().manual_seed(0)
    fds = []
    for sigma in (0.0, 0.3, 1.0):
        noisy = (real + sigma * torch.randn(real.shape, generator=g)).clamp(-1, 1)
        fds.append(frechet_distance(tiny_judge.features(noisy[-200:]), floor["reference"]))
    assert fds == sorted(fds) and fds[-1] > 3 * fds[0]


def test_real_floor_uses_disjoint_halves_when_there_are_few_images():
    feats = torch.randn(30, 4, dtype=torch.float64)
    out = real_floor(feats, 100)
    assert out["n"] == 15 and out["reference"].shape == (15, 4)
    with pytest.raises(ValueError):
        real_floor(feats[:3], 10)


@pytest.mark.parametrize("n", [30, 10_000])
def test_the_heldout_floor_featurises_only_what_it_uses_and_changes_nothing(tiny_judge, n):
    full = real_floor(tiny_judge.features(tiny_judge.heldout.images), n, seed=3)
    fast = heldout_floor(tiny_judge, n, seed=3)
    assert fast["n"] == full["n"] == min(n, len(tiny_judge.heldout) // 2)
    assert fast["floor"] == full["floor"] and torch.equal(fast["reference"], full["reference"])


def test_conditional_accuracy_of_real_labelled_images_is_the_judges_accuracy(tiny_judge,
                                                                              tiny_splits):
    test = tiny_splits.test
    acc = conditional_accuracy(tiny_judge.predict(test.images), test.labels, tiny_judge.classes)
    assert acc["overall"] == pytest.approx(tiny_judge.test_accuracy)
    assert acc["n"] == len(test) and sum(acc["n_per_class"].values()) == len(test)


def test_conditional_accuracy_per_class_and_best_weight():
    classes = ["a", "b", "c"]
    acc = conditional_accuracy(torch.tensor([0, 0, 1, 2, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]),
                               classes)
    assert acc["per_class"] == {"a": 1.0, "b": 0.5, "c": 0.5}
    assert acc["overall"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        conditional_accuracy(torch.tensor([0]), torch.tensor([0, 1]), classes)
    per_w = {0.0: {"accuracy": {"overall": 0.3}}, 1.0: {"accuracy": {"overall": 0.8}},
             2.0: {"accuracy": {"overall": 0.8}}}
    assert best_weight(per_w) == 1.0   # ties go to the smaller w


def test_class_histogram_shows_a_mode_collapse():
    classes = [str(i) for i in range(4)]
    varied = class_histogram(torch.tensor([0, 1, 2, 3] * 5), classes)
    collapsed = class_histogram(torch.full((20,), 2), classes)
    assert varied == {c: 5 for c in classes} and collapsed["2"] == 20
    assert histogram_entropy(varied) == pytest.approx(2.0)
    assert histogram_entropy(collapsed) == pytest.approx(0.0)


# --- evaluate, the CLI -------------------------------------------------------------------------

def test_evaluate_a_guided_lab_reports_every_weight(tiny_judge):
    lab = Lab(lab_settings("fmnist-cfg", "ci"), "cpu")
    model = lab.build_model()
    report = evaluate(lab, model, n=20, weights=[0, 2], steps=2, judge=tiny_judge, progress=None)
    assert [r["w"] for r in report["weights"]] == [0.0, 2.0]
    assert report["best_w"] in (0.0, 2.0) and report["sampling_steps"] == 2
    for row in report["weights"]:
        assert row["accuracy"]["n"] == 20 and len(row["accuracy"]["per_class"]) == 10
        assert row["n"] == report["real_floor"]["n"] == 20 and row["frechet"] >= 0
    json.dumps(report)   # JSON-ready
    table = format_report(report)
    assert "best w" in table and "floor" in table and "Ankle b" in table


def test_evaluate_an_unguided_lab_gives_a_histogram(tiny_judge):
    lab = Lab(lab_settings("fmnist-ddpm", "ci"), "cpu")
    report = evaluate(lab, lab.build_model(), n=12, steps=2, judge=tiny_judge, progress=None)
    assert sum(report["unguided"]["histogram"].values()) == 12
    assert "entropy" in format_report(report)


def test_evaluate_refuses_a_lab_without_a_sampler(tiny_judge):
    lab = Lab(lab_settings("fmnist-unet", "ci"), "cpu")
    with pytest.raises(ConfigError, match="no T"):
        evaluate(lab, lab.build_model(), n=10, judge=tiny_judge, progress=None)


class _Oracle(torch.nn.Module):
    """A perfect denoiser: it saw each noised image made (``noise``) and returns its original."""

    def __init__(self):
        super().__init__()
        self.noised, self.clean = [], []

    def noise(self, x):
        from labutils.labs import lab01_noise
        y = lab01_noise(x)
        self.noised.append(y.flatten(1))
        self.clean.append(x)
        return y

    def forward(self, y):
        seen, clean = torch.cat(self.noised), torch.cat(self.clean)
        idx = torch.cdist(y.flatten(1), seen).argmin(1)
        return clean[idx]


def test_evaluate_denoiser_brackets_a_model_between_noised_and_clean(tiny_judge, tiny_splits):
    lab = Lab(lab_settings("fmnist-unet", "ci"), "cpu")
    n = len(tiny_splits.test)   # all held-out images: clean accuracy is the judge's own
    ident = evaluate_denoiser(lab, torch.nn.Identity(), n=n, judge=tiny_judge, progress=None)
    assert ident["n"] == n and ident["clean"]["accuracy"] == pytest.approx(tiny_judge.test_accuracy)
    assert ident["clean"]["mse"] == 0 and ident["noised"]["mse"] > 0.2
    assert ident["noised"]["accuracy"] < ident["clean"]["accuracy"] - 0.1
    # The identity "denoiser" undoes nothing; an oracle undoes everything.
    assert ident["denoised"] == ident["noised"]
    perfect = _Oracle()
    oracle = evaluate_denoiser(lab, perfect, n=n, noise=perfect.noise, judge=tiny_judge,
                               progress=None)
    assert oracle["noised"] == ident["noised"]                    # the same seeded noise
    assert oracle["denoised"]["mse"] == pytest.approx(0, abs=1e-6)
    assert oracle["denoised"]["accuracy"] == pytest.approx(oracle["clean"]["accuracy"])
    json.dumps(oracle)
    assert "wins back 100%" in format_denoiser_report(oracle)
    assert "wins back 0%" in format_denoiser_report(ident)
    # A diffusion lab is scored by its samples, not here.
    with pytest.raises(ConfigError, match="evaluate"):
        evaluate_denoiser(Lab(lab_settings("fmnist-ddpm", "ci"), "cpu"), torch.nn.Identity(),
                          n=10, judge=tiny_judge, progress=None)


def test_class_prompts_name_one_flower_each():
    assert class_prompts(["daisy", "sunflowers", "roses"]) == [
        "a photo of a daisy", "a photo of a sunflower", "a photo of a rose"]


def test_eval_prompts_are_the_labs_own_where_the_registry_says_which_class_each_names():
    spec = get_spec("flowers-clip")
    assert judged_prompts(spec) == ["A round white flower",
                                    "A round orange sunflower with a big brown center",
                                    "A red rose bud"]
    # Matched by class, not by position; a class no prompt names gets the plain one.
    shuffled = dataclasses.replace(spec, prompts=("A red rose bud", "A round white flower"),
                                   prompt_classes=("roses", "daisy"))
    assert judged_prompts(shuffled) == ["A round white flower", "a photo of a sunflower",
                                        "A red rose bud"]
    assert judged_prompts(dataclasses.replace(spec, prompt_classes=())) == class_prompts(
        spec.classes)


def test_labutils_eval_writes_a_table_and_json_in_the_run_folder(tmp_path, monkeypatch, capsys,
                                                                 tiny_splits):
    # The judge of the lab's data, replaced by the tiny one (the real one trains for minutes).
    monkeypatch.setitem(J.SPLITS, "fashion-mnist", lambda img_size, data_dir: tiny_splits)
    monkeypatch.setitem(J.RECIPES, "fashion-mnist", TINY)
    monkeypatch.setenv("LABUTILS_JUDGE_DIR", str(tmp_path / "judges"))
    run = tmp_path / "run"
    assert main(["train", "fmnist-cfg", "--profile", "ci", "--out", str(run), "--batch-size",
                 "16", "--sample-every", "0", "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "10", "--w", "0", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "ema weights" in out and "best w" in out
    report = json.loads((run / "eval-step00000003-ema.json").read_text())
    assert report["lab"] == "fmnist-cfg" and report["weights_used"] == "ema"
    assert [r["w"] for r in report["weights"]] == [0.0, 1.0]
    assert main(["eval", str(run), "--n", "10", "--w", "1", "--steps", "2", "--no-ema",
                 "--json", str(tmp_path / "raw.json")]) == 0
    assert json.loads((tmp_path / "raw.json").read_text())["weights_used"] == "raw"
    assert main(["eval", str(tmp_path / "nothing-here")]) == 2


# --- MNIST for the assessment ------------------------------------------------------------------

def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                 *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_from_a_named_folder(tmp_path, monkeypatch):
    from labutils.data import mnist
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    monkeypatch.setenv("LABUTILS_MNIST_DIR", str(tmp_path))
    data = mnist.load_mnist_tensors(28)
    assert data.images.shape == (17, 1, 28, 28) and data.stand_in is None
    assert data.classes == mnist.MNIST_CLASSES
    monkeypatch.setenv("LABUTILS_MNIST_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LABUTILS_MNIST_DIR"):
        mnist.load_mnist_tensors(28)


def test_without_mnist_fashion_mnist_stands_in_loudly(tmp_path, monkeypatch, capsys):
    from labutils.data import mnist
    monkeypatch.delenv("LABUTILS_MNIST_DIR", raising=False)
    monkeypatch.setenv("LABUTILS_MNIST_DOWNLOAD", "0")
    monkeypatch.setattr(mnist, "DOWNLOAD_DIR", tmp_path)
    monkeypatch.setattr(mnist, "_ANNOUNCED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = mnist.load_mnist_tensors(28, splits=("test",))
    assert data.stand_in and "FASHION-MNIST" in data.stand_in
    assert any(issubclass(w.category, mnist.MnistStandInWarning) for w in caught)
    assert "NO MNIST FOUND" in capsys.readouterr().out
    assert data.images.shape == (10_000, 1, 28, 28)


def test_the_assessment_lab_has_data_now():
    lab = Lab(lab_settings("mnist-assessment", "ci"), "cpu")
    data = lab.dataset()
    assert data.images.shape[1:] == (1, 28, 28) and len(data) == 1024
    assert sum(p.numel() for p in lab.build_model().parameters()) == 2_547_457


def test_a_judge_trains_even_when_first_needed_under_no_grad(tiny_splits, tmp_path):
    # evaluate_denoiser and the samplers run under no_grad; the judge they ask for may not
    # exist yet (a fresh clone, a new data folder) and must still train.
    with torch.no_grad():
        judge = J.get_judge("fashion-mnist", 16, splits=tiny_splits, recipe=TINY,
                            directory=tmp_path, progress=None)
    assert judge.test_accuracy > 0.55
