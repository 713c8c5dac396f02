"""`labutils doctor` on this machine, and its choice of torch wheel for a driver."""
from pathlib import Path

import pytest

from labutils.tools.doctor import run_doctor, run_prepare, torch_build_supported, wheel_for

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["Python", "PyTorch", "GPUs", "NVIDIA driver", "CPU", "Compiler", "Disk",
            "Data and weights", "Advice"]


def test_doctor_prints_every_section(capsys):
    assert run_doctor() == 0
    out = capsys.readouterr().out
    for title in SECTIONS:
        assert f"== {title} ==" in out
    assert "CUDA usable:" in out and "Fashion-MNIST:" in out and "native bf16" in out
    assert "index-url https://download.pytorch.org/whl/" in out


@pytest.mark.parametrize("driver, cuda, tag", [
    ("580.82.07", (13, 0), "cu130"),
    ("570.86.10", (12, 8), "cu128"),
    ("550.54.15", (12, 4), "cu124"),
    ("535.104.05", (12, 2), "cu121"),
    ("470.82.01", (11, 4), "cu118"),   # minor-version compatibility within CUDA 11
    ("418.67", (10, 1), "cpu"),
    (None, None, "cpu"),
])
def test_wheel_for_driver(driver, cuda, tag):
    assert wheel_for(driver, cuda) == tag


def test_torch_build_support():
    assert torch_build_supported("12.1", "550.54.15", (12, 4))[0]
    assert torch_build_supported("12.6", "535.104.05", (12, 2))[0]      # minor-version compat
    assert not torch_build_supported("13.0", "535.104.05", (12, 2))[0]
    assert not torch_build_supported("11.8", "418.67", (10, 1))[0]


def test_prepare_reports_failures_and_exits_non_zero(tmp_path, capsys):
    archive = tmp_path / "missing.tgz"
    code = run_prepare(tmp_path / "stage", only=["fmnist", "flowers"],
                       flowers_archive=str(archive))
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED  flower photos" in out
    if Path("/usr/share/datasets/fashion-mnist").is_dir():  # copied, no internet needed
        assert "ok      Fashion-MNIST" in out
        assert len(list((tmp_path / "stage" / "fashion-mnist").glob("*.gz"))) == 4


class _FakeGPU:
    def __init__(self, name, major, minor):
        self.name, self.major, self.minor, self.total_memory = name, major, minor, 80 * 2**30


def _healthy_gpu_node(monkeypatch, gpu, driver=("550.54.15", (12, 4)), built="12.4"):
    """A node whose torch can use its GPU and whose driver fits torch's CUDA (all mocked)."""
    import torch

    from labutils.tools import doctor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: gpu)
    monkeypatch.setattr(torch.version, "cuda", built)
    monkeypatch.setattr(doctor, "driver_info", lambda: driver)


def test_doctor_prints_the_wheel_line_on_a_healthy_gpu_node(monkeypatch, capsys):
    _healthy_gpu_node(monkeypatch, _FakeGPU("NVIDIA H100 80GB HBM3", 9, 0))
    assert run_doctor() == 0
    out = capsys.readouterr().out
    assert "CUDA usable: yes" in out and "supported by this driver" in out
    assert ("torch build for this machine: pip install torch torchvision --index-url "
            "https://download.pytorch.org/whl/cu124") in out
    assert "compute capability 9.0, bf16 yes" in out
    assert "too old" not in out


def test_doctor_says_bf16_no_below_compute_capability_8(monkeypatch, capsys):
    _healthy_gpu_node(monkeypatch, _FakeGPU("Tesla V100-SXM2-32GB", 7, 0))
    run_doctor()
    out = capsys.readouterr().out
    assert "compute capability 7.0, bf16 no" in out
    assert "index-url https://download.pytorch.org/whl/cu124" in out


@pytest.mark.parametrize("driver, cuda, tag", [
    ("525.60.13", (12, 0), "cu121"),    # minor-version compatibility, not cu118 (README's table)
    ("535.104.05", (12, 2), "cu121"),
    ("545.23.08", (12, 3), "cu121"),
    ("525.60.13", None, "cu118"),       # no CUDA version printed: by the driver's version
])
def test_wheel_for_drivers_525_to_545(driver, cuda, tag):
    assert wheel_for(driver, cuda) == tag


def test_a_cuda_12_driver_is_told_it_also_runs_newer_12x_builds():
    from labutils.tools.doctor import compatible_wheels
    assert compatible_wheels("535.104.05", (12, 2)) == ["cu128", "cu126", "cu124", "cu121",
                                                        "cu118"]
    assert compatible_wheels("520.61.05", (11, 8)) == ["cu118"]
    assert compatible_wheels(None, None) == []
