"""`make run`'s machinery: notebooks executed into a run folder, the tracked copies untouched."""
import json
import re

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


def test_console_table_report_page_and_quiet_kernels(tmp_path, capfd):
    """One line per notebook, a closing table, index.html with figures and links; a failing
    notebook does not stop the others; no TCP warning from the kernels."""
    src = tmp_path / "notebooks"
    src.mkdir()
    write_notebook(src / "01_draws.ipynb",
                   "import os, pathlib\n"
                   "from PIL import Image\n"
                   "out = pathlib.Path(os.environ['LABUTILS_OUTPUT_DIR'])\n"
                   "out.mkdir(exist_ok=True)\n"
                   "Image.new('RGB', (8, 8), 'red').save(out / 'red.png')\n"
                   "Image.new('L', (4, 4)).save(out / 'grey.gif')\n"
                   "open(out / 'notes.txt', 'w').write('not a figure')")
    write_notebook(src / "02_fails.ipynb", "raise KeyError('boom')")
    write_notebook(src / "03_after.ipynb", "print('still run')")
    with pytest.raises(runner.NotebooksFailed) as failure:
        runner.run_notebooks(tmp_path / "run", profile="ci", directory=src)
    assert failure.value.failed == ["02_fails.ipynb"]
    out = tmp_path / "run"
    console = capfd.readouterr()
    kernel_logs = "".join(log.read_text() for log in out.glob("*.kernel.log"))
    assert "without encryption" not in console.out + console.err + kernel_logs
    progress = [line for line in console.out.splitlines() if line.lstrip().startswith("[")]
    assert len(progress) == 3 and "[2/3] 02_fails.ipynb" in progress[1]
    assert "failed" in progress[1] and "KeyError" in progress[1] and "ok" in progress[2]
    table = console.out[console.out.index("notebook "):]
    assert re.search(r"01_draws\.ipynb +\d+ s +ok", table)
    assert re.search(r"02_fails\.ipynb +\d+ s +failed \(KeyError: 'boom'\)", table)
    assert re.search(r"03_after\.ipynb +\d+ s +ok", table)
    assert re.search(r"total +\d+ s", table) and f"Report: {out / 'index.html'}" in table

    page = (out / "index.html").read_text()
    assert '<img src="01_draws/red.png"' in page and '<img src="01_draws/grey.gif"' in page
    assert "notes.txt" not in page
    for name in ("01_draws", "02_fails", "03_after"):
        assert f'href="{name}.ipynb"' in page and (out / f"{name}.ipynb").is_file()
    assert "KeyError: &#x27;boom&#x27;" in page
    assert page.count('class="ok"') >= 2 and 'class="failed"' in page
    assert nbformat.read(out / "03_after.ipynb", as_version=4).cells[0].outputs[0]["text"] \
        == "still run\n"


def test_keep_going_false_stops_at_the_first_failure(tmp_path, capsys):
    src = tmp_path / "notebooks"
    src.mkdir()
    write_notebook(src / "01_fails.ipynb", "1 / 0")
    write_notebook(src / "02_never.ipynb", "print('ran')")
    with pytest.raises(runner.NotebooksFailed):
        runner.run_notebooks(tmp_path / "run", profile="ci", directory=src, keep_going=False)
    assert not (tmp_path / "run" / "02_never.ipynb").exists()
    assert re.search(r"02_never\.ipynb +- +not run", capsys.readouterr().out)
    assert "not run" in (tmp_path / "run" / "index.html").read_text()


def test_run_labs_exits_1_when_a_notebook_fails(tmp_path):
    from labutils.tools import cli
    src = tmp_path / "notebooks"
    src.mkdir()
    write_notebook(src / "01_fails.ipynb", "1 / 0")
    assert cli.main(["run-labs", "--profile", "ci", "--notebooks", str(src),
                     "--out", str(tmp_path / "run")]) == 1
    assert (tmp_path / "run" / "index.html").is_file()
