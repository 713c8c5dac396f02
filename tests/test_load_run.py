"""`load_run`: a trained run (or a course-format state dict) opened for notebooks 04 and 05,
and its refusals (wrong lab, wrong width, wrong CLIP, not weights at all)."""
import dataclasses
import types

import pytest
import torch

from labutils.config import ConfigError, lab_settings
from labutils.files import save_atomic
from labutils.labs import get_spec
from labutils.models.compat import to_course_state_dict
from labutils.tools.cli import main
from labutils.tools.trained_run import load_run


@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    """A flowers-cfg run made by `labutils train` under ci: one step of the course's model."""
    run = tmp_path_factory.mktemp("runs") / "flowers"
    assert main(["train", "flowers-cfg", "--profile", "ci", "--out", str(run), "--quiet",
                 "--epochs", "1", "--sample-every", "0", "--checkpoint-every", "0"]) == 0
    return run


def test_a_run_folder_gives_its_ema_model(flowers_run, capsys):
    settings = lab_settings("flowers-cfg", "ci")
    model = load_run(flowers_run, settings, "cpu")
    said = capsys.readouterr().out
    assert "ema weights" in said and "44,509,443" in said
    assert not model.training
    ckpt = torch.load(next((flowers_run / "checkpoints").glob("*.pt")), weights_only=True)
    shadow = ckpt["ema"]["shadow"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, shadow[key]), key
    raw = load_run(flowers_run, settings, "cpu", ema=False)
    assert torch.equal(raw.state_dict()["down0.conv1.0.weight"],
                       ckpt["model"]["down0.conv1.0.weight"])


def test_a_run_of_another_lab_is_refused(flowers_run):
    with pytest.raises(ConfigError, match="a run of lab flowers-cfg, not flowers-clip: wrong lab"):
        load_run(flowers_run, lab_settings("flowers-clip", "ci"), "cpu")


def test_a_course_format_state_dict_loads_into_the_variant_it_fits(tmp_path, capsys):
    settings = lab_settings("flowers-cfg", "ci")
    spec = get_spec("flowers-cfg")
    torch.manual_seed(1)
    laptop = spec.build_model(settings, "laptop")
    path = tmp_path / "course.pth"
    torch.save(to_course_state_dict(laptop), path)       # the course's layer names
    model = load_run(path, settings, "cpu")
    assert "laptop" in capsys.readouterr().out
    for key, value in laptop.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_weights_of_another_width_or_lab_are_refused(tmp_path):
    settings = lab_settings("flowers-cfg", "ci")
    spec = get_spec("flowers-cfg")
    wide = spec.model(T=settings.T, img_ch=3, img_size=32, down_chs=(64, 64, 128),
                      t_embed_dim=8, c_embed_dim=3)
    path = tmp_path / "wide.pt"
    torch.save(wide.state_dict(), path)
    with pytest.raises(ConfigError, match=r"do not fit lab flowers-cfg's models \(wrong width"):
        load_run(path, settings, "cpu")
    clip_laptop = get_spec("flowers-clip").build_model(lab_settings("flowers-clip", "ci"),
                                                       "laptop")
    torch.save(clip_laptop.state_dict(), path)
    with pytest.raises(ConfigError, match="lab flowers-clip's laptop model, not of flowers-cfg"):
        load_run(path, settings, "cpu")


def _clip_checkpoint(path, fingerprint):
    settings = dataclasses.replace(lab_settings("flowers-clip", "ci"), model="laptop")
    model = get_spec("flowers-clip").build_model(settings)
    save_atomic({"format": 1, "model": model.state_dict(), "settings": dataclasses.asdict(settings),
                 "step": 7, "ema": None, "clip": {"model_id": "ViT-B/32", "fingerprint": fingerprint}},
                path)
    return settings


def test_lab05_checks_the_clip_the_run_trained_with(tmp_path):
    path = tmp_path / "ckpt-step00000007.pt"
    settings = _clip_checkpoint(path, "a" * 64)
    same = types.SimpleNamespace(model_id="ViT-B/32", fingerprint="a" * 64)
    other = types.SimpleNamespace(model_id="stand-in", fingerprint="b" * 64)
    model = load_run(path, settings, "cpu", encoder=same)
    assert model.c_embed1 is not None
    with pytest.raises(ConfigError, match="wrong CLIP"):
        load_run(path, settings, "cpu", encoder=other)
    with pytest.raises(ConfigError, match="pass encoder="):
        load_run(path, settings, "cpu")


def test_what_is_not_a_run_says_so(tmp_path):
    settings = lab_settings("flowers-cfg", "ci")
    with pytest.raises(ConfigError, match="no such run folder"):
        load_run(tmp_path / "nothing", settings, "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint"):
        load_run(tmp_path / "empty", settings, "cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(ConfigError, match="unreadable|refused to load"):
        load_run(junk, settings, "cpu")
    torch.save({"epochs": 3}, junk)
    with pytest.raises(ConfigError, match="neither a labutils checkpoint nor a state dict"):
        load_run(junk, settings, "cpu")
