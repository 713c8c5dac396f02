"""``labutils lab``: JupyterLab on a compute node (or a laptop), reached safely.

It starts JupyterLab from this environment bound to ``127.0.0.1`` on a free port with a fresh
random token, serving ``notebooks/``, waits until it answers, and prints the exact SSH tunnel
command for this node and the line to paste in the browser. Ctrl-C (SIGINT) or SIGTERM
(``scancel``, the end of a job) stops it and its kernels cleanly; exit code 0.

Security: the token is passed to Jupyter in its environment (``JUPYTER_TOKEN``), never on the
command line, where other users of a shared node could read it with ``ps``. The browser line
with the token goes to ``~/.labutils-lab-<job>.url`` (mode 600, removed on stop, and locked
while the server lives, so a start-up removes the files of servers that were killed); it is printed
only when stdout is a terminal (or with ``--show-token``), never into a batch job's output file,
which is only as private as the umask makes it. Binding to another address than
the loopback needs ``--ip`` given explicitly and prints a warning. Kernels talk to the server
over IPC sockets in your private Jupyter runtime folder, not TCP ports on the node.

JupyterLab dies with the process that started it (Linux's parent-death signal), so a
``kill -9`` of ``labutils lab`` never leaves a server listening with a valid token.

:func:`start_lab` is also what the browser tests use to get a server.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence

LOOPBACK = "127.0.0.1"


class LabStartError(RuntimeError):
    """JupyterLab exited or did not answer in time; the message holds the end of its log."""


def free_port(ip: str = LOOPBACK) -> int:
    """A TCP port that is free on ``ip`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def new_token() -> str:
    """48 hex digits from the OS's secure random source."""
    return secrets.token_hex(24)


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ipc_ok() -> bool:
    """IPC kernel sockets live in Jupyter's runtime folder; a Unix socket path must stay short."""
    if os.name == "nt":
        return False
    try:
        from jupyter_core.paths import jupyter_runtime_dir
        return len(jupyter_runtime_dir()) < 60
    except Exception:
        return False


def lab_command(ip: str, port: int, root: Path, log_level: str = "WARN",
                extra: Sequence[str] = ()) -> List[str]:
    """The ``jupyter lab`` command line (without the token, which goes in the environment)."""
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ip={ip}",
           f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
           f"--log-level={log_level}"]
    if _ipc_ok():
        cmd.append("--KernelManager.transport=ipc")
    if _is_root():
        cmd.append("--allow-root")   # containers and CI run as root; Jupyter refuses otherwise
    return cmd + list(extra)


@dataclasses.dataclass
class LabServer:
    """A running JupyterLab: its process, where it listens and its token."""

    process: subprocess.Popen
    ip: str
    port: int
    token: str
    root: Path

    @property
    def host(self) -> str:
        """Where to reach it from this machine (a wildcard bind is reached on the loopback)."""
        if self.ip in ("0.0.0.0", "::", ""):
            return LOOPBACK
        return f"[{self.ip}]" if ":" in self.ip else self.ip

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/lab?token={self.token}"

    def get(self, path: str, token: Optional[str] = None, timeout: float = 10) -> int:
        """HTTP status of ``GET path`` (with ``token`` in the Authorization header, if given)."""
        request = urllib.request.Request(self.base_url + path)
        if token:
            request.add_header("Authorization", f"token {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    def stop(self, timeout: float = 30) -> Optional[int]:
        """SIGTERM (Jupyter shuts its kernels down and exits), then SIGKILL after ``timeout``."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait(10)
        return proc.returncode


def _parent_death_signal():
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies (Linux's
    ``PR_SET_PDEATHSIG``; None elsewhere). Jupyter keeps it across its ``exec`` of
    ``jupyter-lab`` and shuts its kernels down on that SIGTERM. (It fires when the *thread* that
    started the child ends: start servers from a thread that lives as long as they should.)"""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up before fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec():
        prctl(1, int(signal.SIGTERM))    # PR_SET_PDEATHSIG
        if os.getppid() != parent:       # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)   # started in its own session: pgid == pid
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Optional[Path], n: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def start_lab(root: Path, ip: str = LOOPBACK, port: Optional[int] = None,
              token: Optional[str] = None, env: Optional[Dict[str, str]] = None,
              extra: Sequence[str] = (), log: Optional[Path] = None, log_level: str = "WARN",
              ready_timeout: float = 120, tries: int = 3) -> LabServer:
    """Start JupyterLab serving ``root`` and wait until its API answers with the token.

    ``port=None`` picks a free port (and another one, up to ``tries`` times, if something took
    it in between). ``env`` adds to this process's environment. Jupyter's own log goes to
    ``log`` (a file) when given, else to our stderr. Raises :class:`LabStartError`.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root} to serve")
    token = token or new_token()
    child_env = dict(os.environ, **(env or {}), JUPYTER_TOKEN=token)
    child_env.pop("JUPYTER_TOKEN_FILE", None)
    for attempt in range(1, tries + 1):
        chosen = port or free_port(LOOPBACK if ip in ("0.0.0.0", "::") else ip)
        out = open(log, "ab") if log else None
        try:
            proc = subprocess.Popen(lab_command(ip, chosen, root, log_level, extra),
                                    env=child_env, cwd=str(root), stdin=subprocess.DEVNULL,
                                    stdout=out or sys.stderr, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    preexec_fn=_parent_death_signal())
        finally:
            if out:
                out.close()
        server = LabServer(proc, ip, chosen, token, root)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if server.get("/api/status", token=token, timeout=5) == 200:
                    return server
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        if proc.poll() is None:   # alive but silent: give up on it
            server.stop(10)
            raise LabStartError(f"JupyterLab did not answer on port {chosen} within "
                                f"{ready_timeout:.0f} s\n{_tail(log)}")
        if port is not None or attempt == tries:
            raise LabStartError(f"JupyterLab exited with code {proc.returncode} "
                                f"(port {chosen})\n{_tail(log)}")
    raise AssertionError("unreachable")


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def login_host(node: str, login: Optional[str] = None) -> Optional[str]:
    """The jump host for the tunnel: ``login``, else ``LABUTILS_LOGIN_HOST``, else the host the
    Slurm job was submitted from (``SLURM_SUBMIT_HOST``) when it is not this node."""
    login = login or os.environ.get("LABUTILS_LOGIN_HOST")
    if login:
        return login
    submit = os.environ.get("SLURM_SUBMIT_HOST")
    if submit and submit.split(".")[0] != node.split(".")[0]:
        return submit
    return None


def ssh_destination(user: Optional[str] = None, node: Optional[str] = None,
                    login: Optional[str] = None) -> str:
    """``[-J USER@LOGIN] USER@NODE``: how ssh reaches this node from your laptop."""
    user = user or os.environ.get("USER") or getpass.getuser()
    node = node or node_name()
    jump = login_host(node, login)
    if jump and "@" not in jump:
        jump = f"{user}@{jump}"
    return (f"-J {jump} " if jump else "") + f"{user}@{node}"


def tunnel_command(port: int, user: Optional[str] = None, node: Optional[str] = None,
                   login: Optional[str] = None, target: str = LOOPBACK) -> str:
    """``ssh -N -L PORT:127.0.0.1:PORT [-J USER@LOGIN] USER@NODE``, to run on your laptop."""
    return f"ssh -N -L {port}:{target}:{port} {ssh_destination(user, node, login)}"


def url_file() -> Path:
    """Where ``labutils lab`` keeps the URL with the token: a mode-600 file in your home folder
    (shared with the login node on clusters), one per Slurm job (or per process)."""
    ident = os.environ.get("SLURM_JOB_ID") or str(os.getpid())
    return Path.home() / f".labutils-lab-{ident}.url"


def write_private(path: Path, text: str) -> int:
    """Write ``text`` to ``path`` readable by its owner only (created fresh with mode 600) and
    return an open descriptor holding ``flock`` on it: close it (or die) and the lock is gone,
    which is how :func:`remove_stale_url_files` tells a live server's file from a dead one's.
    Written under a temporary name and renamed, so the file is never seen unlocked."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):   # no flock on this file system: never seen stale
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, text.encode())
        os.replace(temp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return fd


def remove_stale_url_files(folder: Optional[Path] = None) -> List[Path]:
    """Remove ``~/.labutils-lab-*.url`` files whose server is gone (killed with ``kill -9``, a
    lost node): nobody holds their lock. A file whose lock cannot be tested is kept."""
    removed = []
    for path in sorted((folder or Path.home()).glob(".labutils-lab-*.url")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass   # held by a live server (or no flock on this file system): keep it
        else:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def connect_message(server: LabServer, destination: str, target: str, saved: Optional[Path],
                    show_token: bool) -> str:
    """What ``labutils lab`` prints once JupyterLab answers."""
    token = server.token if show_token else "<token>"
    lines = [f"JupyterLab is running on {node_name()} (pid {server.process.pid}), port "
             f"{server.port}, serving {server.root}", "",
             "On your laptop, open an SSH tunnel (leave it running):",
             f"  ssh -N -L {server.port}:{target}:{server.port} {destination}",
             "then paste this line in your browser:",
             f"  http://127.0.0.1:{server.port}/lab?token={token}"]
    if saved is not None and show_token:
        lines.append(f"  (also in {saved}, mode 600)")
    elif saved is not None:
        lines += [f"  with <token> from {saved} (mode 600: yours only); from your laptop:",
                  f"  ssh {destination} cat {saved}",
                  "  (not printed here: this output is not a terminal and may land in a file "
                  "others can read; --show-token prints it)"]
    lines += ["", "Stop with Ctrl-C here, or kill -TERM / scancel the job."]
    return "\n".join(lines)


def run_lab(ip: str = LOOPBACK, port: Optional[int] = None, root: Optional[Path] = None,
            login: Optional[str] = None, log_level: str = "WARN",
            show_token: Optional[bool] = None) -> int:
    """The ``labutils lab`` command: start, print how to connect, wait for Ctrl-C / SIGTERM.

    The browser line with the token goes to a mode-600 file (:func:`url_file`); it is printed
    as well when stdout is a terminal (``show_token=None``) or when ``show_token`` is True.
    """
    from ..config import project_dir
    root = Path(root) if root else project_dir() / "notebooks"
    if show_token is None:
        show_token = sys.stdout.isatty()
    if not is_loopback(ip):   # only ever from an explicit --ip
        print(f"labutils lab: WARNING: listening on {ip}, not 127.0.0.1: anyone who can reach "
              "this address and learns the token can run code as you. Prefer the default and "
              "an SSH tunnel.", file=sys.stderr, flush=True)

    stop = {"signal": None}

    def on_signal(signum, _frame):
        if stop["signal"] is not None:       # a second signal: no more patience
            raise KeyboardInterrupt
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server, saved, held = None, None, None
    for path in remove_stale_url_files():
        print(f"labutils lab: removed {path}: its server is no longer running", file=sys.stderr)
    try:
        server = start_lab(root, ip=ip, port=port, log_level=log_level)
        target = LOOPBACK if ip in ("0.0.0.0", "::") or is_loopback(ip) else ip
        try:
            saved = url_file()
            held = write_private(saved,
                                 f"http://127.0.0.1:{server.port}/lab?token={server.token}\n")
        except OSError as err:
            print(f"labutils lab: could not write the token file ({err}): printing the token",
                  file=sys.stderr)
            saved, show_token = None, True
        print(connect_message(server, ssh_destination(login=login), target, saved, show_token),
              flush=True)
        while stop["signal"] is None and server.process.poll() is None:
            time.sleep(0.3)
        if stop["signal"] is None:
            print(f"labutils lab: JupyterLab exited by itself (code "
                  f"{server.process.returncode})", file=sys.stderr)
            return 1 if server.process.returncode else 0
        name = signal.Signals(stop["signal"]).name
        print(f"labutils lab: {name}: stopping JupyterLab and its kernels ...", flush=True)
        server.stop(30)
        print("labutils lab: stopped", flush=True)
        return 0
    except KeyboardInterrupt:
        if server is not None:
            _kill_group(server.process)
        print("labutils lab: stopped at once", file=sys.stderr)
        return 130
    except LabStartError as err:
        print(f"labutils lab: error: {err}", file=sys.stderr)
        return 1
    finally:
        if server is not None and server.process.poll() is None:
            server.stop(30)
        if saved is not None:
            with contextlib.suppress(OSError):
                saved.unlink()
        if held is not None:
            os.close(held)
        for s, handler in previous.items():
            signal.signal(s, handler)
