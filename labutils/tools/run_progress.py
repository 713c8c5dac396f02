"""What ``make run`` shows while it runs: the series' expected time at the start, then one
updating console line per notebook (cell k of n, elapsed against the expected time, and the
latest line of the kernel's progress bar), replaced by the notebook's result when it ends."""
from __future__ import annotations

import dataclasses
import html
import re
import shutil
import sys
import time
from typing import Dict, Optional, Sequence, TextIO


@dataclasses.dataclass(frozen=True)
class Measured:
    """Wall seconds per notebook (by number, "01" ...) of one ``make run`` on one machine."""

    machine: str
    seconds: Dict[str, float]


# The expected time of a series, by (profile, native bf16): the CPU path trains in fp32 without
# native bf16 (bf16 there is 11-20x slower), so the two differ by 2-5x. Only measured figures
# belong here; a notebook without one is announced as "not measured".
EXPECTED = {
    # The whole series on 2 cores of an AMD EPYC (AVX2, no native bf16), nothing else running,
    # a fresh data/: the judges (01: 53 s, 04: 110 s, 06: ~80 s) and lab 05's stand-in CLIP
    # (262 s) were trained inside the run (docs/speed.md): 61 min 24 s. 06 re-measured alone
    # (fresh judge) after its quick training went from 150 to 40 steps: 434 -> 245 s.
    ("quick", False): Measured("2 cores of an AMD EPYC without native bf16",
                               {"01": 121, "02": 127, "03": 361, "04": 1590, "05": 1050,
                                "06": 245}),
}


def duration(seconds: float) -> str:
    """``45 s``, ``5 min 12 s``, ``1 h 03 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def expected_seconds(profile: str, bf16: bool, name: str) -> Optional[float]:
    """The measured wall time of notebook ``name`` (``04_...ipynb``), or None."""
    measured = EXPECTED.get((profile, bf16))
    return measured.seconds.get(name[:2]) if measured else None


def expected_series(profile: str, bf16: bool, names: Sequence[str]) -> str:
    """The line printed before a series: its expected time and where that was measured."""
    measured = EXPECTED.get((profile, bf16))
    where = "with" if bf16 else "without"
    seconds = measured.seconds if measured else {}
    known = [seconds[n[:2]] for n in names if n[:2] in seconds]
    unknown = [n for n in names if n[:2] not in seconds]
    if not known:   # nothing to add up: say so rather than "about 0 s"
        return (f"Expected time: not measured yet for profile '{profile}' {where} native bf16 "
                "(labutils/tools/run_progress.py: EXPECTED).")
    text = (f"Expected time: about {duration(sum(known))} (measured on {measured.machine}, "
            "nothing else running)")
    return text + (f", plus {', '.join(unknown)} (not measured)." if unknown else ".")


# --- the kernel's latest progress line ----------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WIDGET_REF = "IPY_MODEL_"


def last_line(text: str) -> str:
    """The last non-empty line of streamed text, where a tqdm bar redraws itself after ``\\r``."""
    for part in reversed(re.split(r"[\r\n]", _ANSI.sub("", text))):
        if part.strip():
            return " ".join(part.split())
    return ""


def tqdm_widget_line(states: Dict[str, dict], comm_id: str) -> Optional[str]:
    """The text of the tqdm bar that widget ``comm_id`` belongs to, or None.

    In a notebook ``tqdm.auto`` draws an ipywidgets HBox of (description and percent, a
    progress bar, counts and times); nbclient keeps each widget's state by comm id.
    """
    ref = _WIDGET_REF + comm_id
    for state in states.values():
        children = state.get("children") or []
        if ref in children and len(children) == 3:
            left, _, right = (str(states.get(c[len(_WIDGET_REF):], {}).get("value", ""))
                              for c in children)
            return " ".join(html.unescape(f"{left} {right}").split()) or None  # nbsp, U+2007
    return None


@dataclasses.dataclass
class NotebookProgress:
    """Where a running notebook is; written by the kernel's client, read by the console line."""

    cells: int = 0           # code cells to run
    cell: int = 0            # the one running (1-based; 0 before the first)
    bar: str = ""            # the latest progress-bar or output line of this cell


class ConsoleLine:
    """One notebook's line. On a terminal it is redrawn in place every tick; elsewhere (a log)
    a progress line is printed every ``log_every`` seconds so a long notebook shows life."""

    def __init__(self, stream: Optional[TextIO] = None, log_every: float = 60.0):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every = log_every
        self.head, self.expected, self.started, self.logged = "", None, 0.0, 0.0

    def start(self, head: str, expected: Optional[float]) -> None:
        self.head, self.expected = head, expected
        self.started = self.logged = time.monotonic()
        if self.tty:
            self._draw(f"{head} ...")

    def text(self, progress: NotebookProgress) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"cell {progress.cell}/{progress.cells}" if progress.cell else "starting",
                 duration(elapsed) + (f" of about {duration(self.expected)}"
                                      if self.expected else "")]
        if progress.bar:
            parts.append(progress.bar)
        return "  ".join(parts)

    def tick(self, progress: NotebookProgress) -> None:
        if self.tty:
            self._draw(f"{self.head}  {self.text(progress)}")
        elif time.monotonic() - self.logged >= self.log_every:
            self.logged = time.monotonic()
            self._print(f"{self.head}  {self.text(progress)}")

    def finish(self, text: str) -> None:
        self._print(f"{self.head} ... {text}")

    def _draw(self, line: str) -> None:
        """Overwrite the terminal's current line, cut to its width (no wrapping)."""
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()

    def _print(self, line: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()
