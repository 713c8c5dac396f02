"""Lab 05's CLIP helpers: checkpoints, the stand-in, prompts, and the embedding CSV cache."""
import dataclasses
import hashlib
import os
import urllib.error
from pathlib import Path

import pytest
import torch

from labutils.clip import cache as cache_mod
from labutils.clip import encoder as encoder_mod
from labutils.clip import standin as standin_mod
from labutils.clip import (CacheFormatError, CacheMismatchError, ClipEncoder,
                                 ClipUnavailableError, PromptError, embedding_cache,
                                 load_checkpoint, load_clip, load_flowers_with_clip,
                                 save_checkpoint, train_standin_clip)
from labutils.data.flowers import load_flowers_tensors, make_flowers_fixture

# Smaller than the ci stand-in: the tests build several.
MICRO = dataclasses.replace(standin_mod.TINY, name="micro-test", max_steps=2, batch_size=8)


@pytest.fixture(scope="module")
def flowers_dir(tmp_path_factory):
    return make_flowers_fixture(tmp_path_factory.mktemp("fx") / "flowers", per_class=6, size=48)


@pytest.fixture(scope="module")
def trained(flowers_dir):
    """A micro stand-in, trained (2 steps) in memory, with the dataset it saw."""
    data = load_flowers_tensors(MICRO.image_resolution, data_dir=flowers_dir)
    model, report = train_standin_clip(data, MICRO, "cpu", progress=False)
    return model, report, data


def _in_memory_encoder(model):
    from clip.clip import _transform
    return ClipEncoder(model, _transform(model.visual.input_resolution), "mem", "", True,
                       torch.device("cpu"))


# --- checkpoints ---------------------------------------------------------------------------------

def test_standin_checkpoint_loads_back_through_the_checkpoint_path(trained, tmp_path,
                                                                   monkeypatch):
    model, report, data = trained
    assert report["steps"] == 2 and report["parameters"] > 0
    path = save_checkpoint(model, tmp_path / "micro.pt", {"model_id": "standin:micro",
                                                          "standin": True})
    # A plain state dict of tensors, nothing else.
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    prompts = ["a photo of a rose", "a white daisy"]
    images = data.paths[:4]
    want_t = _in_memory_encoder(model).encode_text(prompts)
    want_i = _in_memory_encoder(model).encode_images(images)

    by_arg = load_clip(str(path), device="cpu")
    monkeypatch.setenv("LABUTILS_CLIP_MODEL", str(path))
    by_env = load_clip(device="cpu")
    for enc in (by_arg, by_env):
        assert enc.is_standin and enc.model_id == "standin:micro"
        assert enc.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
        assert torch.equal(enc.encode_text(prompts), want_t)
        assert torch.equal(enc.encode_images(images), want_i)


def test_checkpoint_is_read_with_weights_only(trained, tmp_path, monkeypatch):
    model, _, _ = trained
    path = save_checkpoint(model, tmp_path / "m.pt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    enc = load_checkpoint(path, "cpu")
    assert calls == [True]
    assert not enc.is_standin and enc.model_id == "file:m.pt"


def test_sidecar_of_other_weights_is_ignored(trained, tmp_path):
    model, _, _ = trained
    a = save_checkpoint(model, tmp_path / "a.pt", {"model_id": "standin:a", "standin": True})
    b = save_checkpoint(build_model_b(), tmp_path / "b.pt", {"model_id": "b"})
    os.replace(encoder_mod.sidecar_path(a), encoder_mod.sidecar_path(b))
    with pytest.warns(UserWarning, match="other weights"):
        enc = load_checkpoint(b, "cpu")
    assert not enc.is_standin and enc.model_id == "file:b.pt"


def build_model_b():
    torch.manual_seed(1)
    return standin_mod.build_standin(MICRO)


class _NotATensor:
    pass


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"text_projection": torch.zeros(2, 2), "x": _NotATensor()}, path)
    with pytest.raises(ClipUnavailableError, match="safely"):
        load_checkpoint(path, "cpu")


def test_checkpoint_without_clip_weights_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ClipUnavailableError, match="no CLIP weights"):
        load_checkpoint(path, "cpu")


def test_missing_path_or_unknown_name_is_an_error(tmp_path):
    with pytest.raises(ClipUnavailableError, match="neither a CLIP model name"):
        load_clip(str(tmp_path / "nothing.pt"))


# --- encodings and prompts -----------------------------------------------------------------------

def test_encodings_are_float32_n_by_512(trained):
    model, _, data = trained
    enc = _in_memory_encoder(model)
    t = enc.encode_text(["a red rose bud", "a round white flower", "a sunflower"])
    i = enc.encode_images(data.paths[:5])
    assert t.shape == (3, 512) and t.dtype == torch.float32
    assert i.shape == (5, 512) and i.dtype == torch.float32
    sims = enc.similarity(data.paths[:2], ["a rose", "a daisy", "a sunflower"])
    assert sims.shape == (2, 3) and sims.abs().max() <= 1 + 1e-5


def test_prompt_errors(trained):
    enc = _in_memory_encoder(trained[0])
    long_prompt = "a very red rose " * 30
    with pytest.raises(PromptError, match="77-token"):
        enc.encode_text(["a daisy", long_prompt])
    with pytest.raises(PromptError, match="empty"):
        enc.encode_text([])
    with pytest.raises(PromptError, match="strings"):
        enc.encode_text([3])
    with pytest.warns(UserWarning, match="cut"):
        out = enc.encode_text([long_prompt], truncate=True)
    assert out.shape == (1, 512)


# --- offline: the stand-in -----------------------------------------------------------------------

def _offline(monkeypatch):
    def no_network(url, root):
        raise urllib.error.URLError("no network (test)")
    monkeypatch.setattr(encoder_mod.clip.clip, "_download", no_network)


def test_vit_b32_unavailable_without_standin_is_a_clear_error(monkeypatch, tmp_path):
    _offline(monkeypatch)
    monkeypatch.delenv("LABUTILS_CLIP_MODEL", raising=False)
    with pytest.raises(ClipUnavailableError, match="login node"):
        load_clip(download_root=tmp_path, allow_standin=False)


def test_offline_switch_skips_the_download(monkeypatch, tmp_path):
    def must_not_download(url, root):
        raise AssertionError("download attempted although LABUTILS_CLIP_OFFLINE=1")
    monkeypatch.setattr(encoder_mod.clip.clip, "_download", must_not_download)
    monkeypatch.setenv("LABUTILS_CLIP_OFFLINE", "1")
    monkeypatch.delenv("LABUTILS_CLIP_MODEL", raising=False)
    with pytest.raises(ClipUnavailableError, match="LABUTILS_CLIP_OFFLINE"):
        load_clip("ViT-B/32", download_root=tmp_path, allow_standin=False)


def test_standin_is_trained_once_then_cached(monkeypatch, tmp_path, flowers_dir, capsys):
    _offline(monkeypatch)
    monkeypatch.delenv("LABUTILS_CLIP_MODEL", raising=False)
    trainings = []
    real_train = standin_mod.train_standin_clip

    def counting(*args, **kwargs):
        trainings.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(standin_mod, "train_standin_clip", counting)
    kwargs = dict(download_root=tmp_path / "dl", flowers_dir=flowers_dir,
                  cache_dir=tmp_path / "clip", config=MICRO, progress=False)
    with pytest.warns(UserWarning, match="stand-in"):
        first = load_clip(**kwargs)
    assert "LOCAL STAND-IN" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="stand-in"):
        second = load_clip(**kwargs)
    assert trainings == [1]
    assert first.is_standin and first.fingerprint == second.fingerprint
    info = second.info
    assert info["standin"] and 0.0 <= info["zero_shot_accuracy"] <= 1.0
    assert info["heldout_images"] >= 1 and info["train_seconds"] >= 0
    assert info["image_norm"] > 0 and info["text_norm"] > 0
    assert len(list((tmp_path / "clip").glob("*.tmp"))) == 0


def test_heldout_split_is_disjoint_and_stable():
    paths = [f"/x/roses/{i}.jpg" for i in range(400)]
    train, held = standin_mod.split_paths(paths, 0.15)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 400
    assert 30 < len(held) < 90
    assert standin_mod.split_paths([p.replace("/x/", "/y/") for p in paths], 0.15)[1] == held
    # Small sets: each class with two or more images keeps one held out.
    small = ["/x/a/1.jpg", "/x/a/2.jpg", "/x/b/3.jpg", "/x/c/4.jpg", "/x/c/5.jpg"]
    train, held = standin_mod.split_paths(small, 0.0, labels=[0, 0, 1, 2, 2])
    assert held == [0, 3] and train == [1, 2, 4]


def test_captions_use_the_words_people_use_for_each_class():
    from labutils.clip.captions import captions_for
    yellow = {"flower": "yellow", "center": "yellow", "background": ""}
    daisy, sunflower, rose = (" | ".join(captions_for(c, yellow))
                              for c in ("daisy", "sunflowers", "roses"))
    assert "a round white flower" in daisy and "yellow center" in daisy
    assert "a round orange sunflower with a big brown center" in sunflower
    assert "a yellow rose bud" in rose and "a rose bud" in rose
    # Each class's words are its own: no bud on a daisy, no big brown center on a rose.
    assert "bud" not in daisy + sunflower and "brown center" not in daisy + rose
    # A measured centre is not said where the class has a known one (it often misses).
    assert "white center" not in " ".join(captions_for("daisy", {"flower": "yellow",
                                                                 "center": "white"}))
    assert len(set(captions_for("roses", yellow))) == len(captions_for("roses", yellow))


def test_norm_term_holds_both_towers_at_one_scale(trained):
    """The contrastive part ignores feature norms; the norm term is what changes when the image
    tower's output is scaled (so training keeps image and text features at one scale)."""
    model, _, data = trained
    assert float(standin_mod.norm_penalty(torch.full((4, 512), 10.0 / 512 ** 0.5))) < 1e-10
    assert float(standin_mod.norm_penalty(torch.full((4, 512), 30.0 / 512 ** 0.5))) > 1.0
    x = standin_mod.to_clip_input(data.images[:4])
    tokens = standin_mod.clip.tokenize(["a rose", "a daisy"])
    ids = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        img = model.encode_image(x).float()
        txt = model.encode_text(tokens).float()
        base = standin_mod.contrastive_loss(model, x, tokens, ids)
        proj = model.visual.attnpool.c_proj
        proj.weight.mul_(3.0), proj.bias.mul_(3.0)
        try:
            scaled = standin_mod.contrastive_loss(model, x, tokens, ids)
        finally:
            proj.weight.div_(3.0), proj.bias.div_(3.0)
    gained = (standin_mod.NORM_WEIGHT * (standin_mod.norm_penalty(3 * img, txt)
                                         - standin_mod.norm_penalty(img, txt))
              + standin_mod.ALIGN_WEIGHT * (standin_mod.align_penalty(3 * img, txt, ids)
                                            - standin_mod.align_penalty(img, txt, ids)))
    assert float(gained) != 0
    assert float(scaled - base) == pytest.approx(float(gained), rel=1e-3, abs=1e-4)


def test_align_term_pulls_a_caption_to_the_mean_of_its_photos():
    """Zero when each photo's features equal its caption's; for a caption several photos share,
    smallest at their mean (a prompt should land where its photos are, not beside them)."""
    img = torch.randn(6, 512)
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    means = torch.stack([img[:3].mean(0), img[3:].mean(0)])
    assert float(standin_mod.align_penalty(img, img, torch.arange(6))) == 0.0
    at_mean = float(standin_mod.align_penalty(img, means, ids))
    assert at_mean > 0
    for shift in (0.1, -0.3):
        assert float(standin_mod.align_penalty(img, means + shift, ids)) > at_mean
    txt = means.clone().requires_grad_(True)
    standin_mod.align_penalty(img, txt, ids).backward()
    assert float(txt.grad.abs().max()) < 1e-6


# --- the CSV cache -------------------------------------------------------------------------------

class FakeEncoder:
    """Deterministic 'embeddings' from file bytes; counts what it encodes."""

    embed_dim = 512

    def __init__(self, fingerprint="f" * 64, model_id="fake/model"):
        self.fingerprint, self.model_id, self.encoded = fingerprint, model_id, []

    def encode_images(self, paths):
        self.encoded.append(list(paths))
        out = []
        for p in paths:
            seed = int(hashlib.sha256(Path(p).read_bytes()).hexdigest()[:8], 16)
            out.append(torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(5):
        p = folder / f"img,{i}.jpg"   # a comma in the name: the CSV must quote it
        p.write_bytes(os.urandom(100 + i))
        paths.append(p)
    return paths


def test_cache_round_trip_and_reuse(tmp_path, images):
    csv_path, enc = tmp_path / "emb.csv", FakeEncoder()
    first = embedding_cache(csv_path, images, enc)
    assert first.shape == (5, 512) and first.dtype == torch.float32
    assert len(enc.encoded) == 1 and len(enc.encoded[0]) == 5
    assert torch.equal(first, enc.encode_images(images))  # exact float32 round trip
    enc.encoded.clear()
    again = embedding_cache(csv_path, images, enc)
    assert enc.encoded == [] and torch.equal(again, first)
    # The course's layout: path then 512 floats (plus size and mtime), a header naming the model.
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("# labutils clip-embeddings") and enc.fingerprint in lines[0]
    assert lines[-1].startswith("# end rows=5")
    rows = cache_mod.read_cache(csv_path, enc)
    assert len(rows) == 5 and all(len(r[2]) == 512 for r in rows.values())


def test_cache_reencodes_changed_and_added_files_only(tmp_path, images):
    csv_path, enc = tmp_path / "emb.csv", FakeEncoder()
    embedding_cache(csv_path, images[:4], enc)
    images[1].write_bytes(os.urandom(300))          # changed: new size and content
    enc.encoded.clear()
    out = embedding_cache(csv_path, images, enc)       # images[4] is new
    assert sorted(enc.encoded[0]) == sorted(str(p.resolve()) for p in (images[1], images[4]))
    assert torch.equal(out, FakeEncoder().encode_images(images))
    enc.encoded.clear()
    st = images[2].stat()
    os.utime(images[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only
    embedding_cache(csv_path, images, enc)
    assert enc.encoded == [[str(images[2].resolve())]]


@pytest.mark.parametrize("damage", ["truncate_mid_number", "truncate_line", "edit_value",
                                    "garbage", "empty"])
def test_damaged_cache_is_rebuilt_not_misread(tmp_path, images, damage):
    csv_path, enc = tmp_path / "emb.csv", FakeEncoder()
    want = embedding_cache(csv_path, images, enc)
    text = csv_path.read_text()
    if damage == "truncate_mid_number":
        text = text[:len(text) - len(text.splitlines()[-1]) - 7]
    elif damage == "truncate_line":
        text = "\n".join(text.splitlines()[:-2]) + "\n"
    elif damage == "edit_value":
        lines = text.splitlines()
        fields = lines[3].split(",")
        fields[-1] = "123.5"
        lines[3] = ",".join(fields)
        text = "\n".join(lines) + "\n"
    elif damage == "garbage":
        text = "path,a,b\nnot,a,cache\n"
    else:
        text = ""
    csv_path.write_text(text)
    with pytest.raises(CacheFormatError):
        cache_mod.read_cache(csv_path, enc)
    enc.encoded.clear()
    with pytest.warns(UserWarning, match="rebuilding"):
        got = embedding_cache(csv_path, images, enc)
    assert len(enc.encoded[0]) == 5 and torch.equal(got, want)
    assert cache_mod.read_cache(csv_path, enc)  # and the file is whole again


def test_cache_refuses_to_mix_models(tmp_path, images):
    csv_path = tmp_path / "emb.csv"
    embedding_cache(csv_path, images, FakeEncoder("a" * 64, "ViT-B/32"))
    before = csv_path.read_bytes()
    other = FakeEncoder("b" * 64, "standin:flowers")
    with pytest.raises(CacheMismatchError, match="ViT-B/32"):
        embedding_cache(csv_path, images, other)
    assert csv_path.read_bytes() == before and other.encoded == []
    with pytest.warns(UserWarning, match="another model"):
        embedding_cache(csv_path, images, other, on_mismatch="rebuild")
    assert "b" * 64 in csv_path.read_text().splitlines()[0]


def test_cache_needs_paths_and_a_fingerprint(tmp_path, images):
    with pytest.raises(ValueError, match="at least one"):
        embedding_cache(tmp_path / "e.csv", [], FakeEncoder())
    with pytest.raises(ValueError, match="fingerprint"):
        embedding_cache(tmp_path / "e.csv", images, FakeEncoder(fingerprint=""))


# --- the lab-05 dataset --------------------------------------------------------------------------

def test_flowers_with_clip_feed_the_guided_loss(tmp_path, flowers_dir):
    from labutils import DDPM, UNet
    from labutils.training import guided_ddpm_loss
    enc = FakeEncoder()
    data = load_flowers_with_clip(enc, img_size=16, data_dir=flowers_dir,
                                  cache_csv=tmp_path / "c.csv")
    assert data.images.shape == (18, 3, 16, 16)
    assert data.labels.shape == (18, 512) and data.labels.dtype == torch.float32
    assert data.class_labels.dtype == torch.int64 and data.paths
    assert torch.equal(data.labels, enc.encode_images(data.paths))
    model = UNet(10, 3, 16, (32, 32, 64), 8, 512)
    loss = guided_ddpm_loss(DDPM.linear(10), 0.1)(model, data.images[:4], data.labels[:4])
    assert loss.ndim == 0 and torch.isfinite(loss)
