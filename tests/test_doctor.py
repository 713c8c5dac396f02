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
