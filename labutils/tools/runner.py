"""Execute the lab notebooks top to bottom and keep the executed copies (``make run``).

The tracked notebooks stay clean: each executed copy, with its outputs, goes to
``<out>/<notebook>.ipynb`` (and an HTML rendering beside it), the figures it saves to
``<out>/<notebook>/``, and the kernel's own console output to ``<out>/<notebook>.kernel.log``.
``<out>/index.html`` is a report page: every notebook's figures and GIFs, its wall time and
status, and links to the executed notebooks. The console shows the series' expected time, one
line per notebook (updated in place while it runs: :mod:`.run_progress`) and a closing table.
Each notebook gets a kernel of its own, shut down when it ends; Ctrl-C stops the series
(:mod:`.kernel_exec`).
"""
from __future__ import annotations

import dataclasses
import html
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from ..config import get_device, get_profile, project_dir, timestamp, use_bf16
from .run_progress import ConsoleLine, NotebookProgress, expected_seconds, expected_series

NOTEBOOK_DIR = project_dir() / "notebooks"
IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".svg", ".webp")
STATUS_OK, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_NOT_RUN = (
    "ok", "failed", "interrupted", "not run")


class NotebooksFailed(RuntimeError):
    """One or more notebooks raised; every notebook's copy and the report are written."""

    def __init__(self, out: Path, failed: Sequence[str]):
        super().__init__(f"{len(failed)} notebook(s) failed: {', '.join(failed)} "
                         f"(see {out / 'index.html'})")
        self.out = out
        self.failed = list(failed)


@dataclasses.dataclass
class NotebookResult:
    """What became of one notebook in a run."""

    name: str                 # file name, e.g. 01_unets.ipynb
    status: str = STATUS_NOT_RUN
    seconds: Optional[float] = None
    error: str = ""           # "ZeroDivisionError: division by zero" for a failed one

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def find_notebooks(directory: Path = NOTEBOOK_DIR, select: Optional[Sequence[str]] = None
                   ) -> List[Path]:
    """The lab notebooks in course order; ``select`` keeps those whose name starts with one
    of it."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no notebook folder at {directory} (run from a checkout of the "
                                "project, or pass --notebooks DIR)")
    found = sorted(p for p in directory.glob("*.ipynb") if p.name[:2].isdigit())
    if select:
        found = [p for p in found if any(p.name.startswith(s) for s in select)]
        if not found:
            raise FileNotFoundError(f"no notebook in {directory} matches {list(select)}")
    return found


def ensure_flowers() -> None:
    """Before labs 04-05: find the flower photos, or build them from TensorFlow's archive.

    Needs internet when nothing is there yet; without it, say what to do and carry on (the
    notebooks then stop with the data module's instructions, or use the ci fixture).
    """
    from ..data import DataNotFoundError
    from ..data.flowers import find_flowers, prepare_flowers
    try:
        print(f"Flower photos: {find_flowers()}")
        return
    except DataNotFoundError:
        pass
    dest = project_dir() / "data" / "cropped_flowers"
    print(f"No flower photos yet: building {dest} from TensorFlow's flower_photos.tgz ...")
    try:
        prepare_flowers(dest)
    except Exception as err:  # offline, disk full, ...: the notebooks explain what to do
        print(f"  could not prepare the flower photos ({type(err).__name__}: {err}).\n"
              "  Set LABUTILS_FLOWERS_DIR or run `labutils prepare DIR` where there is internet.")


def _error_of(nb) -> str:
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".strip()
    return ""


def _write_html(nb, path: Path) -> None:
    """An HTML rendering of an executed notebook, for the report's links (best effort)."""
    try:
        from nbconvert import HTMLExporter
        body, _ = HTMLExporter().from_notebook_node(nb)
        path.write_text(body, encoding="utf-8")
    except Exception as err:  # nbconvert missing or a template problem: the .ipynb remains
        print(f"  (no HTML copy of {path.stem}: {type(err).__name__}: {err})", file=sys.stderr)


def _fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds:.0f} s ({int(seconds // 60)} min {seconds % 60:02.0f} s)"


def figures_of(out: Path, stem: str) -> List[Path]:
    """The images a notebook saved into ``<out>/<stem>/`` (subfolders included), in the order
    they were written (the notebook's order)."""
    folder = out / stem
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def write_report(out: Path, results: Sequence[NotebookResult], profile: str,
                 started: Optional[str] = None) -> Path:
    """``<out>/index.html``: a table of notebooks, then each one's figures; returns its path."""
    esc = html.escape
    rows, sections = [], []
    for r in results:
        link = ""
        if (out / r.name).exists():
            link = f'<a href="{esc(r.name)}">{esc(r.name)}</a>'
            if (out / f"{r.stem}.html").exists():
                link += f' (<a href="{esc(r.stem)}.html">html</a>)'
        else:
            link = esc(r.name)
        rows.append(f'<tr class="{esc(r.status.replace(" ", "-"))}"><td>{link}</td>'
                    f"<td>{esc(_fmt_seconds(r.seconds))}</td><td>{esc(r.status)}</td>"
                    f"<td>{esc(r.error)}</td></tr>")
        figures = figures_of(out, r.stem)
        items = "\n".join(
            f'<figure><a href="{esc(p.relative_to(out).as_posix())}">'
            f'<img src="{esc(p.relative_to(out).as_posix())}" alt="{esc(p.name)}"></a>'
            f'<figcaption>{esc(p.relative_to(out / r.stem).as_posix())}'
            "</figcaption></figure>" for p in figures)
        log = out / f"{r.stem}.kernel.log"
        log_link = (f' &middot; <a href="{esc(log.name)}">kernel log</a>'
                    if log.exists() and log.stat().st_size else "")
        sections.append(
            f'<section id="{esc(r.stem)}"><h2>{esc(r.name)} <small class="{esc(r.status)}">'
            f"{esc(r.status)}, {esc(_fmt_seconds(r.seconds))}</small></h2>"
            f"<p>{link}{log_link}</p>"
            + (f'<p class="error">{esc(r.error)}</p>' if r.error else "")
            + (f'<div class="figures">{items}</div>' if items else
               "<p>No figures saved.</p>") + "</section>")
    total = sum(r.seconds or 0 for r in results)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>labutils run {esc(out.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.3em 0.8em; text-align: left; }}
tr:nth-child(even) {{ background: #f4f4f4; }}
.ok {{ color: #1a7f37; }} .failed, .error, .interrupted {{ color: #cf222e; }}
.not-run, .not {{ color: #777; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figure img {{ max-width: 520px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>labutils run {esc(out.name)}</h1>
<p>Profile <b>{esc(profile)}</b>{', started ' + esc(started) if started else ''};
total wall time {esc(_fmt_seconds(total))}.</p>
<table><thead><tr><th>notebook</th><th>wall time</th><th>status</th><th></th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{chr(10).join(sections)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def summary_table(results: Sequence[NotebookResult]) -> str:
    """The closing table of a run, as plain text."""
    width = max([len("notebook"), len("total")] + [len(r.name) for r in results])
    lines = [f"{'notebook':<{width}}  {'time':>8}  status",
             f"{'-' * width}  {'-' * 8}  ------"]
    for r in results:
        secs = "-" if r.seconds is None else f"{r.seconds:.0f} s"
        lines.append(f"{r.name:<{width}}  {secs:>8}  {r.status}"
                     + (f" ({r.error})" if r.error else ""))
    total = sum(r.seconds or 0 for r in results)
    lines.append(f"{'total':<{width}}  {f'{total:.0f} s':>8}")
    return "\n".join(lines)


def copy_diagrams(directory: Path, out: Path) -> None:
    """The lessons' diagrams (``figures/*.png`` beside the notebooks) into ``out/figures/``, so
    that the executed notebooks' and HTML pages' relative image links still resolve there."""
    import shutil
    src = directory / "figures"
    if not src.is_dir():
        return
    (out / "figures").mkdir(exist_ok=True)
    for png in sorted(src.glob("*.png")):
        shutil.copy2(png, out / "figures" / png.name)


def run_notebooks(out: Optional[Path] = None, profile: Optional[str] = None,
                  select: Optional[Sequence[str]] = None, directory: Path = NOTEBOOK_DIR,
                  timeout: int = 6 * 3600, keep_going: bool = True) -> Path:
    """Run the notebooks in order under ``profile``; returns the output folder.

    A failing notebook is still written (with the error in its outputs); the others still run
    (``keep_going=False``: stop at the first failure). At the end the report page and the
    closing table are written, then :class:`NotebooksFailed` is raised if any notebook failed.
    Ctrl-C stops the series: the current notebook's kernel is interrupted (killed if it does
    not stop), the report is written with it ``interrupted`` and the rest ``not run``, then
    KeyboardInterrupt is raised.
    """
    from .kernel_exec import CtrlC

    profile = get_profile(profile)
    out = Path(out) if out else project_dir() / "runs" / timestamp()
    out.mkdir(parents=True, exist_ok=True)
    notebooks = find_notebooks(directory, select)
    copy_diagrams(directory, out)
    if any(p.name[:2] in ("04", "05") for p in notebooks):
        ensure_flowers()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    results = [NotebookResult(p.name) for p in notebooks]
    bf16 = use_bf16(get_device())
    print(f"Running {len(notebooks)} notebooks under profile '{profile}' -> {out}/\n"
          + expected_series(profile, bf16, [p.name for p in notebooks]), flush=True)
    width = max(len(p.name) for p in notebooks)
    ctrl_c = CtrlC()
    try:
        with ctrl_c.installed():
            for i, (path, result) in enumerate(zip(notebooks, results), 1):
                if ctrl_c.count:
                    break
                line = ConsoleLine()
                line.start(f"  [{i}/{len(notebooks)}] {path.name:<{width}}",
                           expected_seconds(profile, bf16, path.name))
                executed = _run_one(path, result, out, profile, timeout, ctrl_c, line)
                _write_html(executed, out / f"{path.stem}.html")
                write_report(out, results, profile, started)
                if result.status != STATUS_OK and not keep_going:
                    break
    finally:
        report = write_report(out, results, profile, started)
        print()
        print(summary_table(results))
        print(f"Report: {report}")
    if ctrl_c.count:
        raise KeyboardInterrupt
    failed = [r.name for r in results if r.status == STATUS_FAILED]
    if failed:
        raise NotebooksFailed(out, failed)
    return out


def _run_one(path: Path, result: NotebookResult, out: Path, profile: str, timeout: int,
             ctrl_c, line: ConsoleLine):
    """Execute one notebook into ``out``, fill in ``result``; returns the executed notebook."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from .kernel_exec import execute

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)   # the kernel inherits these
    os.environ["LABUTILS_PROFILE"] = profile
    os.environ["LABUTILS_OUTPUT_DIR"] = str((out / path.stem).resolve())
    progress = NotebookProgress()
    log_file = out / f"{path.stem}.kernel.log"
    start = time.perf_counter()
    try:
        with open(log_file, "wb") as log:
            error = execute(nb, str(path.parent), log, timeout, progress, ctrl_c,
                            tick=lambda: line.tick(progress))
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    result.seconds = time.perf_counter() - start
    if error is None:
        result.status = STATUS_OK
    elif ctrl_c.count:
        result.status = STATUS_INTERRUPTED
        result.error = f"stopped by Ctrl-C in cell {progress.cell} of {progress.cells}"
    else:
        result.status = STATUS_FAILED
        result.error = (_error_of(nb) or f"{error.ename}: {error.evalue}"
                        if isinstance(error, CellExecutionError)
                        else f"{type(error).__name__}: {error}")
    nbformat.write(nb, out / path.name)
    line.finish(f"{result.status:<6} {result.seconds:6.0f} s"
                + (f"  {result.error}" if result.error else ""))
    if log_file.stat().st_size == 0:
        log_file.unlink()
    return nb
