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


# --- kernels, Ctrl-C and progress (issue 18) ----------------------------------------------------

def _process_exists(pid: int) -> bool:
    """True for a live process; a zombie (exited, holding no memory) counts as gone."""
    import os
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_a_finished_notebooks_kernel_is_gone_while_the_next_runs(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    pid_file = tmp_path / "first.pid"
    write_notebook(src / "01_first.ipynb", f"import os; open({str(pid_file)!r}, 'w')"
                   ".write(str(os.getpid()))")
    write_notebook(src / "02_second.ipynb",     # the check runs inside the second kernel
                   f"import os\npid = int(open({str(pid_file)!r}).read())\n"
                   "try:\n"
                   "    os.kill(pid, 0)\n"
                   "    state = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0]\n"
                   "except (ProcessLookupError, FileNotFoundError):\n"
                   "    state = 'gone'\n"
                   "print('first kernel', 'gone' if state in ('gone', 'Z') else 'alive')")
    out = runner.run_notebooks(tmp_path / "run", profile="ci", directory=src)
    second = nbformat.read(out / "02_second.ipynb", as_version=4)
    assert second.cells[0].outputs[0]["text"] == "first kernel gone\n"
    assert not _process_exists(int(pid_file.read_text()))


def test_one_ctrl_c_to_the_process_group_stops_the_series(tmp_path):
    """A real SIGINT to a real `labutils run-labs` process group, as a terminal sends it: the
    running notebook `interrupted`, the rest `not run`, the report written, exit 130, no
    traceback, and no kernel left (kernels run in their own session: the runner stops them)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    src = tmp_path / "notebooks"
    src.mkdir()
    ids = tmp_path / "kernel.ids"
    write_notebook(src / "01_quick.ipynb", "print('done')")
    write_notebook(src / "02_long.ipynb",
                   f"import os, time\nopen({str(ids)!r}, 'w').write(f'{{os.getpid()}} "
                   "{os.getsid(0)}')\ntime.sleep(600)")
    write_notebook(src / "03_never.ipynb", "print('never')")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "labutils", "run-labs", "--profile", "ci",
                             "--notebooks", str(src), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (ids.exists() and ids.read_text()) and proc.poll() is None:
            assert time.monotonic() < deadline, "notebook 02 never started"
            time.sleep(0.2)
        kernel_pid, kernel_sid = map(int, ids.read_text().split())
        time.sleep(1)   # the kernel is inside time.sleep(600)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert kernel_sid != proc.pid   # the terminal's SIGINT does not reach the kernel itself
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "interrupted" in stderr
    assert re.search(r"01_quick\.ipynb +\d+ s +ok", stdout)
    assert re.search(r"02_long\.ipynb +\d+ s +interrupted", stdout)
    assert re.search(r"03_never\.ipynb +- +not run", stdout)
    page = (out / "index.html").read_text()
    assert 'class="interrupted"' in page and 'class="not-run"' in page
    assert not (out / "03_never.ipynb").exists()
    executed = nbformat.read(out / "02_long.ipynb", as_version=4)
    assert executed.cells[0].outputs[-1]["ename"] == "KeyboardInterrupt"
    assert not _process_exists(kernel_pid)


def test_the_progress_line_follows_cells_and_the_training_bar(tmp_path):
    """What the console line is drawn from, in a real kernel: the cell running, and the
    latest text of a tqdm.auto bar (an ipywidgets bar in a kernel) or of printed output."""
    from labutils.tools import kernel_exec
    from labutils.tools.run_progress import NotebookProgress
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"),
                nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nimport time\n"
                                          "for _ in tqdm(range(30), desc='training'):\n"
                                          "    time.sleep(0.1)"),
                nbformat.v4.new_code_cell("import time\nfor i in range(3):\n"
                                          "    print(f'epoch {i}', flush=True); time.sleep(0.6)")]
    progress, seen = NotebookProgress(), []
    with open(tmp_path / "kernel.log", "wb") as log:
        error = kernel_exec.execute(nb, str(tmp_path), log, 120, progress, kernel_exec.CtrlC(),
                                    tick=lambda: seen.append((progress.cell, progress.bar)),
                                    tick_seconds=0.1)
    assert error is None and progress.cells == 2 and progress.cell == 2
    bars = [bar for cell, bar in seen if cell == 1]
    assert any(re.match(r"training: +\d+% \d+/30 \[", bar) for bar in bars), bars[-5:]
    assert ("epoch 2" in [bar for cell, bar in seen if cell == 2]
            or progress.bar == "epoch 2"), seen[-5:]


def test_console_line_and_expected_time():
    import io
    from labutils.tools import run_progress as rp

    assert rp.last_line("a\r\x1b[32m 10%|#  | 1/10\x1b[0m\r 20%|## | 2/10\r\n") == "20%|## | 2/10"
    states = {"box": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]},
              "l": {"value": "training:&nbsp;45%"}, "p": {"value": 45.0},
              "r": {"value": "\u2007117/260 [01:10&lt;01:30,\u20071.70it/s]"}}
    assert rp.tqdm_widget_line(states, "p") == "training: 45% 117/260 [01:10<01:30, 1.70it/s]"
    assert rp.tqdm_widget_line(states, "box") is None

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    line = rp.ConsoleLine(tty)
    line.start("  [1/2] 01_a.ipynb", 125)
    line.tick(rp.NotebookProgress(cells=9, cell=3, bar="training: 45%"))
    line.finish("ok 3 s")
    drawn = tty.getvalue().split("\r\x1b[K")
    assert drawn[2] == "  [1/2] 01_a.ipynb  cell 3/9  0 s of about 2 min 05 s  training: 45%"
    assert drawn[3] == "  [1/2] 01_a.ipynb ... ok 3 s\n" and len(drawn) == 4

    log = io.StringIO()   # not a terminal: no redrawing, a line every log_every seconds
    line = rp.ConsoleLine(log, log_every=0)
    line.start("  [1/1] 01_a.ipynb", None)
    line.tick(rp.NotebookProgress(cells=2, cell=1))
    line.finish("ok 1 s")
    assert log.getvalue() == ("  [1/1] 01_a.ipynb  cell 1/2  0 s\n"
                              "  [1/1] 01_a.ipynb ... ok 1 s\n")

    names = ["01_unets.ipynb", "02_diffusion_models.ipynb", "07_new.ipynb"]
    quick = rp.EXPECTED["quick", False]
    text = rp.expected_series("quick", False, names)
    assert rp.duration(quick.seconds["01"] + quick.seconds["02"]) in text
    assert quick.machine in text and "07_new.ipynb (not measured)" in text
    assert "not measured yet for profile 'ci'" in rp.expected_series("ci", True, names)
    # Only unmeasured notebooks: "not measured", never "about 0 s".
    only_new = rp.expected_series("quick", False, ["07_new.ipynb"])
    assert "not measured yet" in only_new and "0 s" not in only_new
    assert [rp.duration(s) for s in (45, 312, 3780)] == ["45 s", "5 min 12 s", "1 h 03 min"]


def test_a_cell_that_ignores_the_interrupt_is_killed_after_the_grace(tmp_path, monkeypatch):
    from labutils.tools import kernel_exec
    from labutils.tools.run_progress import NotebookProgress
    monkeypatch.setattr(kernel_exec, "GRACE_SECONDS", 1.0)
    pid_file = tmp_path / "kernel.pid"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)")]
    ctrl_c = kernel_exec.CtrlC()

    def press_once_the_cell_runs():
        if pid_file.exists() and pid_file.read_text():
            if not ctrl_c.count:
                ctrl_c(2, None)
    with open(tmp_path / "kernel.log", "wb") as log:
        error = kernel_exec.execute(nb, str(tmp_path), log, 600, NotebookProgress(), ctrl_c,
                                    tick=press_once_the_cell_runs, tick_seconds=0.2)
    assert type(error).__name__ == "DeadKernelError"
    assert not _process_exists(int(pid_file.read_text()))
