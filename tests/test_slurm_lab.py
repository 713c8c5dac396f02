"""``slurm/lab.sbatch`` on a real single-node Slurm, reached as a user reaches it: through the SSH
tunnel command the job prints, from a "laptop", in Chromium.

Everything runs on this one machine, where JupyterLab already listens on ``127.0.0.1:PORT``; the
printed ``ssh -N -L PORT:127.0.0.1:PORT ...`` could not bind that port here. So the laptop (the
ssh client, the token fetch and Chromium) runs in a network namespace of its own (``ip netns``
and a veth pair to this host, 198.18.x.0/30, the range set aside for network tests): its
127.0.0.1 is the laptop's, and the printed commands run verbatim in a shell there. The laptop's
``/etc/ssh/ssh_config`` (a bind mount in the laptop's mount namespace, as a user's
``~/.ssh/config`` would) says that the login host ``login`` and the node are an sshd this module
starts on a free port, with a host key and a user key it makes; that sshd forwards to the node's
127.0.0.1 like a compute node's sshd. Job 1 names the login host (``LABUTILS_LOGIN_HOST``), so
its command is the cluster form ``-J root@login root@NODE``; job 2's is the direct ``root@NODE``.

Job 1: the token comes from the printed ``ssh ... cat FILE``, the printed URL opens in Chromium
through the tunnel, notebook 02 runs under the ``ci`` profile (Run All, saved, no error output,
the t-slider answers: tests/test_browser.py's way). Job 2: its own port, and its tunnel reaches
its own server (its folder; job 1's token refused). ``scancel`` then ends JupyterLab and its
kernel, removes the token file, and the tunnel finds nothing. The measured times are printed.

Needs root (Slurm, sshd, ``ip netns``), ``slurm-wlm munge openssh-server iproute2`` and
``chromium`` + playwright; skipped with that advice without them, failing under ``CI=true``.
Only this module: ``pytest tests/test_slurm_lab.py``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from labutils.tools.jupyter import free_port
from test_browser import CHROMIUM_ARGS, _require_browser, _write_settings, run_all_and_check
from test_slurm import ROOT, stop_process, _unavailable, _wait, _which, cluster  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.browser]

NOTEBOOK = next((ROOT / "notebooks").glob("02_*.ipynb"), None)
LOGIN = "login"    # the login host's name on the laptop (its ssh_config)
# What the lab's kernels need to run the notebook on the ci profile, headless and offline.
LAB_ENV = {"LABUTILS_PROFILE": "ci", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
           "LABUTILS_CLIP_OFFLINE": "1"}

# An HTTP GET from the laptop: prints the status (0: no connection), then the body.
GET = """import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "token " + sys.argv[2]})
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
except OSError as e:
    print(0); print(e)
"""


class Laptop:
    """A network namespace with its own loopback, reaching this host over a veth pair, and an
    sshd on this host on a free port (the login host and the node of the printed commands)."""

    def __init__(self, folder: Path, node: str):
        self.folder, self.node = folder, node
        self.ns = f"labtest{os.getpid()}"
        self.host_if, self.ns_if = f"lt{os.getpid()}h", f"lt{os.getpid()}c"
        net = f"198.18.{os.getpid() % 250}"
        self.host_ip, self.ns_ip = f"{net}.1", f"{net}.2"
        self.port = free_port()
        self.sshd = None
        self.procs = []
        self.made_run_sshd = False

    # --- setting up and taking down ---------------------------------------------------------
    def start(self) -> None:
        ip = _which("ip")
        for cmd in (f"netns add {self.ns}",
                    f"link add {self.host_if} type veth peer name {self.ns_if}",
                    f"link set {self.ns_if} netns {self.ns}",
                    f"addr add {self.host_ip}/30 dev {self.host_if}",
                    f"link set {self.host_if} up",
                    f"-n {self.ns} addr add {self.ns_ip}/30 dev {self.ns_if}",
                    f"-n {self.ns} link set {self.ns_if} up",
                    f"-n {self.ns} link set lo up"):
            done = subprocess.run([ip, *cmd.split()], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"ip {cmd}: {done.stderr.strip()}")
        self._keys()
        self._start_sshd()

    def _keys(self) -> None:
        f = self.folder
        for name in ("host_key", "user_key"):
            subprocess.run([_which("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C",
                            "labutils-test", "-f", str(f / name)], check=True)
        shutil.copy(f / "user_key.pub", f / "authorized_keys")
        host_key = " ".join((f / "host_key.pub").read_text().split()[:2])
        (f / "known_hosts").write_text(f"labutils-test-sshd {host_key}\n")
        # The laptop's ssh settings: both names are this host's sshd; the host key is checked.
        (f / "ssh_config").write_text(
            f"Host {LOGIN} {self.node}\n  HostName {self.host_ip}\n  Port {self.port}\n"
            f"  IdentityFile {f}/user_key\n  IdentitiesOnly yes\n  BatchMode yes\n"
            f"  HostKeyAlias labutils-test-sshd\n  UserKnownHostsFile {f}/known_hosts\n"
            "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
            "  ExitOnForwardFailure yes\n")

    def _start_sshd(self) -> None:
        f = self.folder
        (f / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nListenAddress {self.host_ip}\n"
            f"HostKey {f}/host_key\nPidFile {f}/sshd.pid\n"
            f"AuthorizedKeysFile {f}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nAllowTcpForwarding yes\n")
        if not Path("/run/sshd").is_dir():   # sshd's privilege separation folder (systemd's)
            Path("/run/sshd").mkdir(mode=0o755)
            self.made_run_sshd = True
        sshd = _which("sshd")
        check = subprocess.run([sshd, "-t", "-f", str(f / "sshd_config")], capture_output=True,
                               text=True)
        if check.returncode:
            raise RuntimeError(f"sshd -t: {check.stderr.strip()}")
        self.sshd = subprocess.Popen([sshd, "-D", "-e", "-f", str(f / "sshd_config"),
                                      "-E", str(f / "sshd.log")])
        log = f / "sshd.log"
        _wait(lambda: log.is_file() and log.read_text().count("Server listening") >= 2
              or self.sshd.poll() is not None, 30, "sshd to listen")
        if self.sshd.poll() is not None:
            raise RuntimeError(f"sshd exited with {self.sshd.returncode}: {log.read_text()}")

    def stop(self) -> None:
        for proc in self.procs + [self.sshd]:
            if proc is not None and proc.poll() is None:
                stop_process(proc, group=True)
        subprocess.run([_which("ip"), "netns", "del", self.ns], capture_output=True)
        subprocess.run([_which("ip"), "link", "del", self.host_if], capture_output=True)
        if self.made_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)

    # --- on the laptop ------------------------------------------------------------------------
    def command(self, line: str) -> list:
        """``line`` for a shell on the laptop: its network, its ssh_config (bind-mounted in the
        private mount namespace ``ip netns exec`` makes; a ~/.ssh/config is hidden the same way)."""
        user_config = Path.home() / ".ssh" / "config"
        hide = f' && mount --bind /dev/null "{user_config}"' if user_config.exists() else ""
        return [_which("ip"), "netns", "exec", self.ns, "sh", "-c",
                f'mount --bind "$0" /etc/ssh/ssh_config{hide} && exec sh -c "$1"',
                str(self.folder / "ssh_config"), line]

    def run(self, line: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(line), capture_output=True, text=True,
                              timeout=timeout)

    def start_tunnel(self, line: str, log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.command(line), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def get(self, url: str, token: str):
        """(status, body) of ``GET url`` from the laptop; status 0: no connection."""
        line = " ".join(["exec", sys.executable, "-c", _quote(GET), _quote(url), _quote(token)])
        done = self.run(line)
        status, _, body = done.stdout.partition("\n")
        assert status.strip().isdigit(), f"GET {url} on the laptop: {done.stdout}{done.stderr}"
        return int(status), body

    def chromium(self, exe: str) -> str:
        """A Chromium that runs on the laptop (Playwright talks to it over pipes)."""
        wrapper = self.folder / "chromium-on-the-laptop"
        wrapper.write_text(f"#!/bin/sh\nexec {_which('ip')} netns exec {self.ns} {exe} \"$@\"\n")
        wrapper.chmod(0o755)
        return str(wrapper)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module")
def laptop(cluster, tmp_path_factory):
    if not _which("ip") or not _which("ssh") or not _which("ssh-keygen"):
        _unavailable("the tunnel test needs ip (apt-get install iproute2) and the ssh client "
                     "(apt-get install openssh-client)")
    box = Laptop(tmp_path_factory.mktemp("laptop"), cluster.host)
    try:
        box.start()
    except (RuntimeError, AssertionError, subprocess.CalledProcessError) as err:
        box.stop()
        _unavailable(f"could not make the laptop's network namespace and sshd here: {err}")
    yield box
    box.stop()


@pytest.fixture(scope="module")
def browser_on_the_laptop(laptop):
    api, exe = _require_browser()
    with api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=laptop.chromium(exe), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# --- reading a lab job's output ---------------------------------------------------------------

class LabJob(SimpleNamespace):
    """What a lab job printed: node, port, server pid, tunnel command, URL, token command."""


def _printed(job, host: str) -> LabJob:
    log = job.wait_log("Stop with Ctrl-C", 180)
    head = re.search(rf"running on {host} \(pid (\d+)\), port (\d+),", log)
    assert head, log
    lines = [line.strip() for line in log.splitlines()]
    after = {lines[i - 1]: line for i, line in enumerate(lines) if i}
    tunnel = after["On your laptop, open an SSH tunnel (leave it running):"]
    url = after["then paste this line in your browser:"]
    fetch = next(line for line in lines if line.startswith("ssh ") and " cat " in line)
    saved = Path(fetch.rsplit(" cat ", 1)[1])
    return LabJob(job=job, log=log, pid=int(head.group(1)), port=int(head.group(2)),
                  tunnel=tunnel, url=url, fetch=fetch, saved=saved)


def _descendants(pid: int) -> set:
    """``pid`` and every process below it (from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def _cpu_seconds(pids) -> float:
    """User + system CPU time of the processes ``pids`` so far (from /proc; gone ones: 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _served(folder: Path, *files: Path) -> Path:
    folder.mkdir()
    for path in files:
        (shutil.copytree if path.is_dir() else shutil.copy)(path, folder / path.name)
    return folder


# --- the test ---------------------------------------------------------------------------------

def test_the_printed_tunnel_reaches_jupyterlab_runs_notebook_02_and_scancel_cleans_up(
        cluster, laptop, browser_on_the_laptop, tmp_path):
    assert NOTEBOOK is not None, "notebooks/02_*.ipynb is missing"
    hello = tmp_path / "hello.ipynb"
    hello.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    _write_settings(tmp_path / "settings")   # the browser test's JupyterLab settings
    env = dict(LAB_ENV, LABUTILS_OUTPUT_DIR=tmp_path / "figures",
               JUPYTERLAB_SETTINGS_DIR=tmp_path / "settings",
               JUPYTERLAB_WORKSPACES_DIR=tmp_path / "workspaces")
    folders = [_served(tmp_path / "one", NOTEBOOK, ROOT / "notebooks" / "figures"),
               _served(tmp_path / "two", hello)]
    # A limit beyond the browser test's Run All timeout (15 min): a stuck notebook fails with
    # its own message and screenshot (shots/end.png), not with a lost server.
    limit = "--time=20"
    submitted = time.monotonic()
    jobs = [cluster.sbatch("lab.sbatch", "--cpus-per-task=1", limit,
                           env=dict(env, NOTEBOOKS=folders[0], LABUTILS_LOGIN_HOST=LOGIN)),
            cluster.sbatch("lab.sbatch", "--cpus-per-task=1", limit,
                           env=dict(env, NOTEBOOKS=folders[1]))]
    times = {}
    try:
        labs = [_printed(job, cluster.host) for job in jobs]
        times["submit -> URL printed (both)"] = time.monotonic() - submitted
        one, two = labs
        assert one.port != two.port, "two lab jobs on one node share a port"
        assert one.tunnel == f"ssh -N -L {one.port}:127.0.0.1:{one.port} -J root@{LOGIN} " \
                             f"root@{cluster.host}", one.log
        assert two.tunnel == f"ssh -N -L {two.port}:127.0.0.1:{two.port} root@{cluster.host}"

        for lab in labs:   # the token: only in the mode-600 file, fetched by the printed command
            assert lab.saved == Path.home() / f".labutils-lab-{lab.job.id}.url"
            assert lab.saved.stat().st_mode & 0o777 == 0o600
            fetched = laptop.run(lab.fetch)
            assert fetched.returncode == 0, fetched.stderr
            lab.full_url = fetched.stdout.strip()
            lab.token = re.fullmatch(r"[0-9a-f]{48}", lab.full_url.split("token=")[1]).group(0)
            assert lab.full_url == lab.url.replace("<token>", lab.token)
            assert lab.token not in lab.log

        started = time.monotonic()
        for lab in labs:
            laptop.start_tunnel(lab.tunnel, tmp_path / f"ssh-{lab.job.id}.log")
        api = [f"http://127.0.0.1:{lab.port}/api/contents" for lab in labs]
        _wait(lambda: all(laptop.get(url, lab.token)[0] == 200 for url, lab in zip(api, labs)),
              60, lambda: "the tunnels: " + " | ".join(
                  (tmp_path / f"ssh-{lab.job.id}.log").read_text() for lab in labs))
        times["tunnels up"] = time.monotonic() - started
        # Each tunnel reaches its own server: its folder, and the other job's token refused.
        for url, lab, folder in zip(api, labs, folders):
            names = sorted(c["name"] for c in json.loads(laptop.get(url, lab.token)[1])["content"])
            assert names == sorted(p.name for p in folder.iterdir())
        assert laptop.get(api[1], one.token)[0] == 403

        started = time.monotonic()
        (tmp_path / "shots").mkdir()
        page = browser_on_the_laptop.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(one.full_url)   # the printed line, with the token, as a person pastes it
            page.locator(".jp-DirListing-content").get_by_text(NOTEBOOK.name, exact=True) \
                .dblclick()
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            # The saved notebook is read back from the server on the node (its own 127.0.0.1).
            node_side = SimpleNamespace(base_url=f"http://127.0.0.1:{one.port}", token=one.token)
            run_all_and_check(page, node_side, NOTEBOOK.name, tmp_path / "shots")
        finally:
            page.screenshot(path=str(tmp_path / "shots" / "end.png"), full_page=True)
            page.close()
        times["notebook 02 in Chromium through the tunnel"] = time.monotonic() - started

        started = time.monotonic()
        processes = [_descendants(lab.pid) for lab in labs]
        kernels = processes[0] - {one.pid}
        assert kernels, "notebook 02's kernel should run under JupyterLab"
        times["(CPU: notebook 02's kernel)"] = _cpu_seconds(kernels)
        times["(CPU: JupyterLab of job 1)"] = _cpu_seconds([one.pid])
        for lab in labs:
            lab.job.scancel()
        for lab, pids in zip(labs, processes):
            lab.job.wait_log("labutils lab: stopped", 60)
            lab.job.wait_state(("CANCELLED", "COMPLETED"), 60)
            _wait(lambda: not any(_alive(p) for p in pids), 60,
                  "JupyterLab and its kernels to end")
            assert not lab.saved.exists()
        times["scancel -> no JupyterLab, no token file"] = time.monotonic() - started
        for url, lab in zip(api, labs):   # the tunnels are still up; nothing answers
            assert laptop.get(url, lab.token)[0] != 200
    finally:
        for job in jobs:
            if job.state in ("RUNNING", "PENDING"):
                job.scancel("--signal=KILL")
    print("\n" + "\n".join(f"{what}: {s:.1f} s" for what, s in times.items()))
