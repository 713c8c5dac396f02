"""The labs as a person uses them: JupyterLab in a real browser (headless Chromium, Playwright).

JupyterLab runs from this environment on 127.0.0.1, a free port and a random token
(``labutils.tools.jupyter.start_lab``, the code behind ``labutils lab``), serving copies of the
notebooks under ``runs/browser-<time>/notebooks/`` so the tracked ones stay clean. For each
notebook: open it, Run > Run All Cells, wait until every cell ran, save; no cell may have an
error output and no widget may show "Error displaying widget" (or ipywidgets' error box).
Lab 02: drag the t-slider, the picture must change. Labs 04 and 05: press Sample, change
class / prompt and w, press Sample again, the picture must change. Screenshots, the executed
notebooks, the figures and JupyterLab's log go to ``runs/browser-<time>/``
(``LABUTILS_BROWSER_RUN`` picks the folder).

Needs Debian's ``chromium`` (``apt-get install chromium``) and ``playwright`` from PyPI (the
``test`` extra); Playwright never downloads a browser here. Without them these tests are
skipped with that advice, except under ``CI=true``, where they fail.

Run only these: ``pytest -m browser``; everything else: ``pytest -m "not browser"``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from labutils.config import project_dir, timestamp
from labutils.tools import runner
from labutils.tools.jupyter import start_lab

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
RUN_ALL_TIMEOUT_S = 900      # one notebook under the ci profile takes seconds to a minute
SAMPLE_TIMEOUT_S = 300       # one press of Sample: a few reverse steps of a small batch
NOTEBOOKS = runner.find_notebooks(runner.NOTEBOOK_DIR) if runner.NOTEBOOK_DIR.is_dir() else []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _chromium():
    for candidate in (os.environ.get("LABUTILS_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _require_browser():
    """(playwright.sync_api, chromium path), or skip (fail under CI=true) with install advice."""
    missing = []
    try:
        import playwright.sync_api as api
    except ImportError:
        api = None
        missing.append("the playwright package (pip install -e '.[test]', or pip install "
                       "playwright; no browser download needed)")
    exe = _chromium()
    if exe is None:
        missing.append("Chromium at /usr/bin/chromium (Debian/Ubuntu: sudo apt-get install "
                       "chromium; or set LABUTILS_CHROMIUM to a Chromium/Chrome binary)")
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if _in_ci():
            pytest.fail(message + " [CI=true: a missing browser is a failure]")
        pytest.skip(message)
    return api, exe


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    api, exe = _require_browser()
    with api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def run_dir():
    """This module's run folder: screenshots, executed notebooks, figures, Jupyter's log."""
    path = Path(os.environ.get("LABUTILS_BROWSER_RUN") or
                project_dir() / "runs" / f"browser-{timestamp()}")
    (path / "screenshots").mkdir(parents=True, exist_ok=True)
    return path


def _write_settings(folder: Path) -> None:
    """JupyterLab user settings for the test: render every cell (no windowing, so the whole
    notebook is in the page), no news or update checks (offline), and no autosave: an autosave
    (every 120 s) that overlaps the test's Ctrl+S makes JupyterLab ask "File Changed" (seen)."""
    settings = {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = folder / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(run_dir):
    _require_browser()   # no server to start when the browser is missing
    served = run_dir / "notebooks"
    served.mkdir(exist_ok=True)
    for nb in NOTEBOOKS:
        shutil.copy(nb, served / nb.name)
    _write_settings(run_dir / "jupyterlab-settings")
    env = {"LABUTILS_PROFILE": "ci", "LABUTILS_OUTPUT_DIR": str(run_dir / "figures"),
           "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "LABUTILS_CLIP_OFFLINE": "1"}
    server = start_lab(served, env=env, log=run_dir / "jupyter.log", extra=[
        f"--LabApp.user_settings_dir={run_dir / 'jupyterlab-settings'}",
        f"--LabApp.workspaces_dir={run_dir / 'jupyterlab-workspaces'}"])
    yield server
    server.stop()


@pytest.fixture
def page(browser, run_dir, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    yield page
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    if problems:   # kept for reading, not asserted: JupyterLab logs harmless offline errors
        (run_dir / f"console-{name}.log").write_text("\n".join(problems) + "\n")
    context.close()


# --- helpers --------------------------------------------------------------------------------------

def _api(server, method: str, path: str):
    request = urllib.request.Request(server.base_url + path, method=method,
                                     headers={"Authorization": f"token {server.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        return json.loads(body) if body else None


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


ALL_RAN_JS = """() => {
  if (document.querySelector('.jp-Dialog')) return true;   // a question: the caller reports it
  const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
      .map(e => e.textContent.trim());
  return !!ind && ind.dataset.status === 'idle' && prompts.length > 0
      && !prompts.some(p => p.includes('*')) && prompts.some(p => /\\[\\d+\\]/.test(p));
}"""


KERNEL_START_TIMEOUT_S = 180


def _wait_for_kernel(page, server, name: str, timeout: float = KERNEL_START_TIMEOUT_S) -> None:
    """Wait until the server reports the notebook's kernel idle before running anything, as a
    person waits for the kernel indicator. JupyterLab may ask which kernel to start (a person
    takes the proposed one, python3), and on a busy machine it may ask late: cells run before a
    kernel is up stay queued for good."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.get_by_text("Select Kernel", exact=True).count():
            page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True).click()
        states = [s["kernel"]["execution_state"] for s in _api(server, "GET", "/api/sessions")
                  if s.get("path", "").endswith(name) and s.get("kernel")]
        if "idle" in states:
            return
        time.sleep(1)
    raise AssertionError(f"{name}: its kernel was not idle after {timeout:.0f} s")


def _run_all(page, server, name: str, timeout: float) -> None:
    """Run > Run All Cells, as a person would, then wait until no cell is queued or running."""
    _wait_for_kernel(page, server, name)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(ALL_RAN_JS, timeout=timeout * 1000, polling=1000)
    dialog = page.locator(".jp-Dialog")
    assert dialog.count() == 0, f"JupyterLab asked: {dialog.first.inner_text()!r}"


def _save_and_read(page, server, name: str):
    """Save the notebook (Ctrl+S) and read the saved file back through the server's API."""
    before = _api(server, "GET", f"/api/contents/{name}?content=0")["last_modified"]
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    _wait(lambda: _api(server, "GET", f"/api/contents/{name}?content=0")["last_modified"]
          != before, 60, f"{name} to be saved")
    return nbformat.from_dict(_api(server, "GET", f"/api/contents/{name}?content=1")["content"])


def _errors(nb) -> list:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            for i, cell in enumerate(nb.cells) for o in cell.get("outputs", [])
            if o.get("output_type") == "error"]


WIDGET_ERRORS_JS = """() => {
  // ipywidgets shows "Error displaying widget[: model not found]" when the front end cannot
  // build a view at all, and a .jupyter-widgets-error-widget box ("Click to show javascript
  // error.") when a view throws.
  const found = [...document.querySelectorAll('.jupyter-widgets-error-widget')]
      .map(e => 'error widget: ' + e.textContent.trim().slice(0, 200));
  for (const e of document.querySelectorAll('.jp-OutputArea-output')) {
    if (e.textContent.includes('Error displaying widget')) found.push(e.textContent.trim());
  }
  return found;
}"""


def _widget_errors(page) -> list:
    return page.evaluate(WIDGET_ERRORS_JS)


def _labelled(page, scope, css: str, label: str):
    """The ipywidget of class ``css`` in ``scope`` whose description label reads ``label``."""
    return scope.locator(css).filter(
        has=page.locator("label.widget-label", has_text=re.compile(rf"^\s*{label}\s*$")))


def _drag(page, slider, fraction: float) -> None:
    """Drag the slider's handle with the mouse to ``fraction`` of its track."""
    handle = slider.locator("[role=slider]").first
    track = slider.locator(".noUi-target, .slider").first
    handle.scroll_into_view_if_needed()
    h, t = handle.bounding_box(), track.bounding_box()
    page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
    page.mouse.down()
    page.mouse.move(t["x"] + t["width"] * fraction, t["y"] + t["height"] / 2, steps=8)
    page.mouse.up()


def _loaded(img) -> bool:
    return bool(img.evaluate("i => i.complete && i.naturalWidth > 0"))


DIGEST_JS = """async (img) => {
  const data = await (await fetch(img.src)).arrayBuffer();
  const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  return Array.from(hash, b => b.toString(16).padStart(2, '0')).join('');
}"""


def _picture(img) -> str:
    """SHA-256 of the bytes the <img> shows (the widget's PNG), or "" while it has none."""
    if not _loaded(img):
        return ""
    return img.evaluate(DIGEST_JS)


def _changed_picture(img, before: str, timeout: float, what: str) -> str:
    def differs():
        now = _picture(img)
        return now if now and now != before else None
    return _wait(differs, timeout, what, interval=1.0)


# --- the tests ------------------------------------------------------------------------------------

def test_a_missing_browser_skips_with_advice_but_fails_under_ci(monkeypatch):
    monkeypatch.setitem(globals(), "_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        _require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _require_browser()


def test_api_answers_403_without_the_token(lab):
    assert lab.get("/api/contents") == 403
    assert lab.get("/api/kernels") == 403
    assert lab.get("/api/contents", token="not-the-token") == 403
    assert lab.get("/api/contents", token=lab.token) == 200


def test_report_page_shows_every_figure(browser, run_dir):
    """A tiny `make run`: a notebook saving a PNG and a GIF; the report shows both, loaded."""
    src = run_dir / "report-notebooks"
    src.mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import matplotlib; matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt, torch\n"
        "import labutils\n"
        "from labutils.plotting import save_animation\n"
        "out = labutils.output_dir()\n"
        "plt.plot([0, 1, 4]); plt.savefig(out / 'curve.png'); plt.close()\n"
        "save_animation([torch.linspace(-1, 1, 64).reshape(1, 8, 8) * s for s in (1, -1)],\n"
        "               out / 'sub' / 'flip.gif')")]
    nbformat.write(nb, src / "01_tiny.ipynb")
    out = runner.run_notebooks(run_dir / "report", profile="ci", directory=src)
    page = browser.new_page()
    try:
        page.goto((out / "index.html").resolve().as_uri())
        status = page.locator("tbody tr").first.locator("td").nth(2)
        assert status.inner_text().strip() == "ok"
        images = page.locator("img")
        sources = [images.nth(i).get_attribute("src") for i in range(images.count())]
        assert sorted(sources) == ["01_tiny/curve.png", "01_tiny/sub/flip.gif"]
        for i in range(images.count()):
            img = images.nth(i)
            img.scroll_into_view_if_needed()
            _wait(lambda: _loaded(img), 30, f"{sources[i]} to load in the report")
        links = [a.get_attribute("href") for a in page.locator("a").all()]
        assert "01_tiny.ipynb" in links
        for href in links:   # every link points at a file of the run
            assert (out / href).is_file(), href
        page.screenshot(path=str(run_dir / "screenshots" / "report.png"), full_page=True)
    finally:
        page.close()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(lab, page, run_dir, notebook):
    shots = run_dir / "screenshots"
    name = notebook.name
    # A workspace of its own: JupyterLab would otherwise reopen the previous test's notebooks.
    page.goto(f"{lab.base_url}/lab/workspaces/{notebook.stem}/tree/{name}?token={lab.token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    try:
        run_all_and_check(page, lab, name, shots)
    finally:
        page.screenshot(path=str(shots / f"{notebook.stem}-end.png"))
        for session in _api(lab, "GET", "/api/sessions"):   # free the kernel's memory
            _api(lab, "DELETE", f"/api/sessions/{session['id']}")


def run_all_and_check(page, server, name: str, shots: Path) -> None:
    """The notebook ``name``, open in ``page``: Run > Run All Cells, save, and read the saved
    file back from ``server`` (its ``base_url`` and ``token``): no error output, no widget that
    failed to render; then lab 02's t-slider and labs 04/05's explorers must answer. Screenshots
    go to ``shots``. (tests/test_slurm_lab.py runs notebook 02 this way through an SSH tunnel.)"""
    stem = Path(name).stem
    _run_all(page, server, name, RUN_ALL_TIMEOUT_S)
    page.screenshot(path=str(shots / f"{stem}-ran.png"), full_page=True)
    saved = _save_and_read(page, server, name)
    assert not _errors(saved), f"{name} has error outputs: {_errors(saved)}"
    assert not _widget_errors(page), \
        f"widgets failed to render in {name}: {_widget_errors(page)} (see {shots})"
    if name.startswith("02"):
        _check_t_slider(page, shots / stem)
    if name.startswith(("04", "05")):
        _check_explorer(page, shots / stem, prompt=name.startswith("05"))
    assert not _widget_errors(page), f"after the interactions: {_widget_errors(page)}"


def _check_t_slider(page, prefix: Path) -> None:
    sliders = _labelled(page, page, ".widget-slider", "t")
    assert sliders.count() >= 1, "lab 02 shows no slider labelled 't'"
    slider = sliders.first
    box = slider.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")
    img = box.locator("img").first
    _wait(lambda: _loaded(img), 60, "the q(x_0, t) picture")
    img.screenshot(path=f"{prefix}-t-before.png")
    before = _picture(img)
    handle = slider.locator("[role=slider]").first
    start = handle.get_attribute("aria-valuenow")
    _drag(page, slider, 0.7)
    _wait(lambda: handle.get_attribute("aria-valuenow") != start, 30, "the t-slider to move")
    _changed_picture(img, before, 60, "the picture to follow the t-slider")
    img.screenshot(path=f"{prefix}-t-after.png")


def _check_explorer(page, prefix: Path, prompt: bool) -> None:
    buttons = page.get_by_role("button", name="Sample", exact=True)
    assert buttons.count() >= 1, "no explorer with a Sample button"
    for k in range(buttons.count()):
        button = buttons.nth(k)
        box = button.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")
        img = box.locator("img").first
        button.click()
        _wait(lambda: _loaded(img), SAMPLE_TIMEOUT_S, "the first Sample picture")
        _wait(lambda: button.is_enabled(), SAMPLE_TIMEOUT_S, "Sample to finish")
        img.screenshot(path=f"{prefix}-explorer{k}-before.png")
        before = _picture(img)

        if prompt:
            field = _labelled(page, box, ".widget-text, .widget-combobox", "prompt")
            field = field.locator("input")
            assert field.count() == 1, "lab 05's explorer has no text field labelled 'prompt'"
            field.fill("a bright yellow sunflower")
            field.press("Tab")
        else:
            choice = _labelled(page, box, ".widget-dropdown", "class").locator("select")
            assert choice.count() == 1, "lab 04's explorer has no dropdown labelled 'class'"
            options = choice.locator("option").all_inner_texts()
            assert len(options) > 1
            choice.select_option(label=options[-1])
        w = _labelled(page, box, ".widget-slider", "w")
        assert w.count() == 1, "the explorer has no slider labelled 'w'"
        w_handle = w.locator("[role=slider]").first
        w_before = w_handle.get_attribute("aria-valuetext")
        _drag(page, w, 1.0)
        _wait(lambda: w_handle.get_attribute("aria-valuetext") != w_before, 30,
              "the w slider to move")

        chosen = "a bright yellow sunflower" if prompt else options[-1]
        button.click()
        _changed_picture(img, before, SAMPLE_TIMEOUT_S, "a new picture after Sample")
        _wait(lambda: button.is_enabled(), SAMPLE_TIMEOUT_S, "Sample to finish")
        caption = box.locator("div.widget-label").last   # the explorer's status line
        _wait(lambda: chosen in caption.inner_text(), 30,
              f"the caption to name {chosen!r} (it reads {caption.inner_text()!r})")
        img.screenshot(path=f"{prefix}-explorer{k}-after.png")
        box.screenshot(path=f"{prefix}-explorer{k}.png")
