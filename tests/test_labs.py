"""The lab registry: one spec per lab, and every spec's fields point at something real."""
import dataclasses

import pytest
import torch

from labutils import LABS, count_parameters, lab_settings
from labutils.config import ConfigError, LabSettings
from labutils.labs import DATA, LOSSES, PICTURES, REGISTRY, Lab, get_spec


def test_registry_and_settings_name_the_same_labs():
    assert tuple(REGISTRY) == LABS


@pytest.mark.parametrize("name", LABS)
def test_each_spec_is_complete(name):
    spec = get_spec(name)
    assert spec.loss in LOSSES and spec.picture in PICTURES
    assert spec.conditioning in ("none", "classes", "clip-text")
    assert spec.conditional == (spec.conditioning != "none")
    if spec.conditioning == "clip-text":
        assert spec.prompts, "a text-conditioned lab needs default prompts"
    if spec.conditioning == "classes" and spec.data in DATA:
        assert len(spec.classes) == spec.model_args["c_embed_dim"]


@pytest.mark.parametrize("name", [n for n in LABS if REGISTRY[n].params < 3_000_000])
def test_spec_builds_the_course_model(name):
    spec = get_spec(name)
    assert count_parameters(spec.build_model(lab_settings(name, "ci"))) == spec.params


@pytest.mark.parametrize("name", ["flowers-cfg", "flowers-clip"])
def test_quick_trains_the_declared_laptop_variant(name):
    spec, quick, full = get_spec(name), lab_settings(name, "quick"), lab_settings(name, "full")
    assert (full.model, spec.params_for(full)) == ("course", spec.params)
    assert (quick.model, spec.params_for(quick)) == ("laptop", spec.laptop_params)
    assert spec.laptop_params < spec.params / 10
    assert count_parameters(spec.build_model(quick)) == spec.laptop_params
    # What a checkpoint stores (its settings as a dict) rebuilds the same variant.
    again = LabSettings(**dataclasses.asdict(quick))
    assert count_parameters(Lab(again, "cpu").build_model()) == spec.laptop_params
    # The laptop model differs only in width: same design, same context input.
    laptop, course = dict(spec.laptop_model_args), dict(spec.model_args)
    assert laptop.pop("down_chs") != course.pop("down_chs") and laptop == course


def test_a_lab_without_a_laptop_variant_says_so():
    settings = dataclasses.replace(lab_settings("fmnist-cfg", "ci"), model="laptop")
    with pytest.raises(ConfigError, match="no 'laptop' model; it has: course"):
        get_spec("fmnist-cfg").build_model(settings)


def test_unknown_lab_is_a_clear_error():
    with pytest.raises(ConfigError, match="valid labs"):
        get_spec("fmnist-gan")


def test_class_context_from_names_and_indices():
    lab = Lab(lab_settings("fmnist-cfg", "ci"), "cpu")
    c, labels = lab.context(classes=["trouser", "9"])
    assert labels == ["Trouser", "Ankle boot"]
    assert torch.equal(c, torch.eye(10)[[1, 9]])
    with pytest.raises(ConfigError, match="unknown class"):
        lab.context(classes=["Hat"])
    with pytest.raises(ConfigError, match="use --classes"):
        lab.context(prompts=["a red rose"])


def test_unconditioned_lab_refuses_context():
    lab = Lab(lab_settings("fmnist-ddpm", "ci"), "cpu")
    with pytest.raises(ConfigError, match="not conditioned"):
        lab.sample(torch.nn.Identity(), classes=["Bag"])


def test_random_batch_matches_the_model_inputs():
    for name in ("fmnist-cfg", "flowers-clip"):
        lab = Lab(lab_settings(name, "ci"), "cpu")
        x, y = lab.random_batch(2)
        assert x.shape == (2, *lab.image_shape)
        if lab.spec.conditioning == "clip-text":
            assert y.shape == (2, 512) and y.is_floating_point()
        else:
            assert y.dtype == torch.long and int(y.max()) < len(lab.spec.classes)
