"""One notebook executed in a kernel of its own, for ``make run``.

- The kernel starts in its own session (jupyter_client does so on POSIX), so the terminal's
  Ctrl-C reaches only the runner, which then interrupts the kernel itself (:class:`CtrlC`).
- nbclient creates and therefore owns the kernel: it shuts it down as soon as the notebook
  ends, instead of leaving it idle with its memory while the next notebook runs.
- nbclient runs in a worker thread, so its own SIGINT handler (which kills the kernel and goes
  on with the next notebook) is never installed, and the main thread stays free to redraw the
  progress line and to react to Ctrl-C.
- Kernels talk to us over IPC sockets (Unix domain sockets in a private temporary folder), not
  TCP: nothing listens on the network, and ipykernel has no reason to warn about unencrypted TCP.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import threading
import time
from typing import Callable, Optional

from nbclient import NotebookClient
from traitlets.config import Config

from .run_progress import NotebookProgress, last_line, tqdm_widget_line

# After Ctrl-C, how long an interrupted cell may take to stop before its kernel is killed (a
# second Ctrl-C kills at once); a C routine that ignores the interrupt must not hold the series.
GRACE_SECONDS = 10.0


class CtrlC:
    """SIGINT while notebooks run: counted here instead of raising KeyboardInterrupt, so the
    runner can stop the series in order. Installed only in the main thread (where Python runs
    signal handlers), the previous handler restored afterwards."""

    def __init__(self):
        self.count = 0
        self.first_at: Optional[float] = None

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.first_at is None:
            self.first_at = time.monotonic()

    def signal_for_kernel(self) -> Optional[int]:
        """None (no Ctrl-C yet), SIGINT (interrupt the running cell), or SIGKILL (a second
        Ctrl-C, or the cell did not stop within :data:`GRACE_SECONDS`)."""
        if not self.count:
            return None
        if self.count > 1 or time.monotonic() - self.first_at > GRACE_SECONDS:
            return signal.SIGKILL
        return signal.SIGINT

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class _StopRequested(Exception):
    """Raised before a cell starts when Ctrl-C came while the kernel was between cells."""


class _Client(NotebookClient):
    """NotebookClient that tells :class:`NotebookProgress` which cell runs and its latest bar."""

    def __init__(self, nb, progress: NotebookProgress, ctrl_c: CtrlC, **kw):
        super().__init__(nb, on_notebook_start=self._started, on_cell_execute=self._cell, **kw)
        self.progress, self.ctrl_c, self.loop = progress, ctrl_c, None
        self.progress.cells = sum(1 for c in nb.cells
                                  if c.cell_type == "code" and c.source.strip())

    def _started(self, notebook) -> None:
        self.loop = asyncio.get_running_loop()

    def _cell(self, cell, cell_index) -> None:
        if self.ctrl_c.count:
            raise _StopRequested("stopped by Ctrl-C")
        self.progress.cell += 1
        self.progress.bar = ""

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "stream":
            self.progress.bar = last_line(msg["content"].get("text", "")) or self.progress.bar
        return super().output(outs, msg, display_id, cell_index)

    def handle_comm_msg(self, outs, msg, cell_index) -> None:
        super().handle_comm_msg(outs, msg, cell_index)
        line = tqdm_widget_line(self.widget_state, msg["content"].get("comm_id", ""))
        if line:
            self.progress.bar = line

    def signal_kernel(self, signum: int) -> bool:
        """Send ``signum`` to the kernel's process group from another thread; False when there
        is no kernel to send it to yet (still starting) or any more."""
        km, loop = self.km, self.loop
        if km is None or loop is None or loop.is_closed():
            return False
        coro = km.interrupt_kernel() if signum == signal.SIGINT else km.signal_kernel(signum)
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop stopped meanwhile
            coro.close()
            return False
        return True


def _ipc_config(socket_dir: str) -> Config:
    """Kernel managers on IPC sockets in ``socket_dir`` (TCP on Windows, which has no IPC)."""
    config = Config()
    if os.name != "nt" and len(socket_dir) < 80:   # Unix socket paths are limited to ~107 bytes
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(socket_dir, "kernel")
    return config


def execute(nb, cwd: str, log, timeout: int, progress: NotebookProgress, ctrl_c: CtrlC,
            tick: Callable[[], None], tick_seconds: float = 0.5) -> Optional[BaseException]:
    """Run ``nb`` in place (its outputs filled in) in a new kernel; the kernel's own console
    output goes to the binary file ``log``. Returns what stopped it (None: every cell ran).

    ``tick`` is called about every ``tick_seconds`` while it runs. After Ctrl-C the kernel is
    interrupted; if the cell has not stopped within :data:`GRACE_SECONDS`, or on a second
    Ctrl-C, the kernel's process group is killed."""
    outcome: dict = {}
    with tempfile.TemporaryDirectory(prefix="labutils-k") as sockets:
        client = _Client(nb, progress, ctrl_c, timeout=timeout, kernel_name="python3",
                         config=_ipc_config(sockets), resources={"metadata": {"path": cwd}})

        def work() -> None:
            try:
                client.execute(stdout=log, stderr=log)
            except BaseException as err:  # reported to the runner, which decides what it means
                outcome["error"] = err

        worker = threading.Thread(target=work, name="notebook-kernel", daemon=True)
        worker.start()
        sent = None
        while worker.is_alive():
            worker.join(tick_seconds)
            tick()
            wanted = ctrl_c.signal_for_kernel()
            if wanted not in (None, sent) and client.signal_kernel(wanted):
                sent = wanted
    return outcome.get("error")
