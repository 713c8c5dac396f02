"""`labutils bench` runs and reports a row per lab (its numbers are not asserted: not a test of speed)."""
import pytest

from labutils.tools.cli import main


def test_bench_reports_fp32_and_bf16_per_lab(capsys):
    assert main(["bench", "--labs", "fmnist-unet", "fmnist-cfg", "--steps", "1",
                 "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "native bf16:" in out and "fp32/bf16" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("fmnist-")]
    assert [r[0] for r in rows] == ["fmnist-unet", "fmnist-cfg"]
    assert all(r[1] == "4" and float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_bench_rejects_an_unknown_lab(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--labs", "no-such-lab"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
