"""`make run`'s machinery: notebooks executed into a run folder, the tracked copies untouched."""
import json

import nbformat
import pytest

from labutils.tools import runner
from labutils.config import ConfigError
from labutils.data import DataNotFoundError


def write_notebook(path, code):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


def test_run_notebooks_writes_executed_copies_and_keeps_the_source_clean(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    write_notebook(src / "01_first.ipynb",
                   "import os; print(os.environ['LABUTILS_PROFILE'], "
                   "os.environ['LABUTILS_OUTPUT_DIR'])")
    write_notebook(src / "02_second.ipynb", "print('second')")
    write_notebook(src / "helper.ipynb", "raise SystemExit('not a lab: never run')")
    out = runner.run_notebooks(tmp_path / "run", profile="ci", select=["01"], directory=src)
    executed = nbformat.read(out / "01_first.ipynb", as_version=4)
    text = executed.cells[0].outputs[0]["text"]
    assert text.split()[0] == "ci" and text.split()[1] == str((out / "01_first").resolve())
    assert not (out / "02_second.ipynb").exists() and not (out / "helper.ipynb").exists()
    source = json.loads((src / "01_first.ipynb").read_text())
    assert source["cells"][0]["outputs"] == []


def test_a_failing_notebook_is_still_written_with_its_error(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    write_notebook(src / "01_broken.ipynb", "1 / 0")
    with pytest.raises(Exception):
        runner.run_notebooks(tmp_path / "run", profile="ci", directory=src)
    executed = nbformat.read(tmp_path / "run" / "01_broken.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["ename"] == "ZeroDivisionError"


def test_bad_selection_and_profile_are_clear_errors(tmp_path):
    (tmp_path / "nb").mkdir()
    write_notebook(tmp_path / "nb" / "01_a.ipynb", "pass")
    with pytest.raises(FileNotFoundError, match="matches"):
        runner.find_notebooks(tmp_path / "nb", ["09"])
    with pytest.raises(ConfigError, match="valid profiles"):
        runner.run_notebooks(tmp_path / "run", profile="fast", directory=tmp_path / "nb")


def test_ensure_flowers_prepares_when_missing_and_never_raises(monkeypatch, tmp_path, capsys):
    import labutils.data.flowers as flowers
    calls = []

    def missing(*a, **k):
        raise DataNotFoundError("none")

    def offline(dest, *a, **k):
        calls.append(dest)
        raise DataNotFoundError("could not download: offline")

    monkeypatch.setattr(flowers, "find_flowers", missing)
    monkeypatch.setattr(flowers, "prepare_flowers", offline)
    runner.ensure_flowers()
    assert len(calls) == 1 and calls[0].parts[-2:] == ("data", "cropped_flowers")
    assert "LABUTILS_FLOWERS_DIR" in capsys.readouterr().out

    monkeypatch.setattr(flowers, "find_flowers", lambda *a, **k: tmp_path)
    runner.ensure_flowers()
    assert len(calls) == 1   # found: nothing prepared
