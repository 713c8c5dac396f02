"""Profiles: names are checked, and a profile never changes T; only quick may swap in a lab's
declared laptop model (labs.py)."""
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
        assert s.model == "course" or profile == "quick", profile
        if s.sample_steps is not None:
            assert 1 <= s.sample_steps <= (full.T or s.sample_steps)


def test_full_profile_is_the_course():
    s = lab_settings("fmnist-optimized", "full")
    assert (s.T, s.img_size, s.batch_size, s.lr, s.epochs) == (150, 16, 128, 1e-3, 5)
    assert s.max_images is None and s.steps_per_epoch is None and s.sample_steps is None
    assert s.preview_every == 100
    assert lab_settings("fmnist-unet", "full").T is None
    for lab in ("flowers-cfg", "flowers-clip"):   # quick trains a laptop variant; full never
        s = lab_settings(lab, "full")
        assert (s.model, s.T, s.batch_size, s.lr, s.epochs) == ("course", 400, 128, 1e-4, 100)


def test_settings_are_frozen():
    s = lab_settings("fmnist-unet", "ci")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 100


# --- threads that fit the allocation ---------------------------------------------------------------

from labutils.config import _cgroup_cpus, size_threads  # noqa: E402


@pytest.mark.parametrize("kwargs, expected", [
    (dict(affinity=16), (16, "16 CPUs (CPU affinity)")),
    (dict(affinity=16, cgroup=4.0), (4, "4 CPUs (cgroup quota)")),
    (dict(affinity=16, cgroup=2.5), (2, "2 CPUs (cgroup quota)")),       # rounded down
    (dict(affinity=16, cgroup=0.5), (1, "1 CPUs (cgroup quota)")),       # never 0
    (dict(affinity=16, slurm="6"), (6, "6 CPUs (SLURM_CPUS_PER_TASK)")),
    (dict(affinity=4, slurm="6"), (4, "4 CPUs (CPU affinity)")),         # the fewest wins
    (dict(affinity=16, slurm="", cgroup=None), (16, "16 CPUs (CPU affinity)")),
    (dict(affinity=16, local_world_size="4"), (4, "16 CPUs (CPU affinity) / 4 local processes")),
    (dict(affinity=3, local_world_size="2"), (1, "3 CPUs (CPU affinity) / 2 local processes")),
    (dict(affinity=2, local_world_size="8"), (1, "2 CPUs (CPU affinity) / 8 local processes")),
    (dict(affinity=16, cgroup=8.0, slurm="12", local_world_size="2"),
     (4, "8 CPUs (cgroup quota) / 2 local processes")),
    (dict(affinity=16, omp="3", local_world_size="4"), (3, "OMP_NUM_THREADS")),
    (dict(affinity=16, omp="3", override=5), (5, "--threads")),
])
def test_threads_fit_the_allocation(kwargs, expected):
    assert size_threads(**kwargs) == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(affinity=4, omp="many"), "OMP_NUM_THREADS='many' is not a whole number"),
    (dict(affinity=4, omp="0"), "OMP_NUM_THREADS must be at least 1"),
    (dict(affinity=4, override=0), "--threads must be at least 1"),
])
def test_bad_thread_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        size_threads(**kwargs)


def test_cgroup_quota_files(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpus(v2) is None
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_cpus(v2) == 2.5
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpus(tmp_path / "v1") is None
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    assert _cgroup_cpus(tmp_path / "v1") == 4.0
    assert _cgroup_cpus(tmp_path / "none") is None
