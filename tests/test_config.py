"""Profiles: names are checked, and a profile never changes a model's shape or T."""
import dataclasses

import pytest

from labutils import LABS, PROFILES, ConfigError, get_profile, lab_settings


def test_unknown_profile_lists_valid_ones(monkeypatch):
    with pytest.raises(ConfigError) as err:
        get_profile("fast")
    for name in PROFILES:
        assert name in str(err.value)
    monkeypatch.setenv("LABUTILS_PROFILE", "turbo")
    with pytest.raises(ConfigError, match="turbo"):
        lab_settings("fmnist-ddpm")


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("LABUTILS_PROFILE", " Quick ")
    assert get_profile() == "quick"
    assert lab_settings("fmnist-unet").profile == "quick"
    assert get_profile("ci") == "ci"   # an argument wins over the environment


def test_unknown_lab_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        lab_settings("fmnist-gan", "full")
    for lab in LABS:
        assert lab in str(err.value)


@pytest.mark.parametrize("lab", LABS)
def test_profiles_only_shrink(lab):
    full = lab_settings(lab, "full")
    for profile in PROFILES:
        s = lab_settings(lab, profile)
        assert (s.T, s.img_size, s.img_ch) == (full.T, full.img_size, full.img_ch), profile
        assert s.epochs <= full.epochs and s.batch_size <= full.batch_size
        if s.sample_steps is not None:
            assert 1 <= s.sample_steps <= (full.T or s.sample_steps)


def test_full_profile_is_the_course():
    s = lab_settings("fmnist-optimized", "full")
    assert (s.T, s.img_size, s.batch_size, s.lr, s.epochs) == (150, 16, 128, 1e-3, 5)
    assert s.max_images is None and s.steps_per_epoch is None and s.sample_steps is None
    assert s.preview_every == 100
    assert lab_settings("fmnist-unet", "full").T is None


def test_settings_are_frozen():
    s = lab_settings("fmnist-unet", "ci")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 100
