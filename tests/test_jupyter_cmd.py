"""``labutils lab``: JupyterLab on 127.0.0.1 with a fresh token, the SSH tunnel, clean stops."""
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from labutils.tools import cli, jupyter

START_TIMEOUT_S = 180   # JupyterLab starts in a few seconds; generous for a busy 2-core machine


def _status(url, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _listening(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _lines(stream):
    """Read ``stream`` line by line in a thread, so the test can wait with a timeout."""
    lines = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def _read_start_up(proc, errors=None):
    """``labutils lab``'s output up to its "Stop with Ctrl-C" line (fails if it exits first),
    and the queue of the lines still to come."""
    lines, out = _lines(proc.stdout), []
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any("Stop with Ctrl-C" in line for line in out):
        assert time.monotonic() < deadline, "no start-up message:\n" + "".join(out)
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        assert line is not None, ("labutils lab exited early:\n" + "".join(out) +
                                  (errors.read_text() if errors else ""))
        out.append(line)
    return "".join(out), lines


@pytest.mark.parametrize("stop_signal, name", [(signal.SIGINT, "SIGINT"),
                                               (signal.SIGTERM, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_lab_starts_prints_the_tunnel_and_stops_on_a_signal(tmp_path, stop_signal, name):
    (tmp_path / "hello.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, '
                                          '"nbformat_minor": 5}')
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, USER="alice", SLURMD_NODENAME="gpu17", SLURM_SUBMIT_HOST="login2",
               SLURM_JOB_ID="4242", HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("LABUTILS_LOGIN_HOST", None)
    errors = tmp_path / "stderr.log"
    with open(errors, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "labutils", "lab", "--notebooks",
                                 str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                stderr=err_file, text=True)
    try:
        text, lines = _read_start_up(proc, errors)
        tunnel = re.search(r"ssh -N -L (\d+):127\.0\.0\.1:(\d+) -J alice@login2 alice@gpu17\n",
                           text)
        assert tunnel, text
        # stdout is a pipe, not a terminal: the token stays out of it, in a mode-600 file
        assert re.search(r"http://127\.0\.0\.1:\d+/lab\?token=<token>\n", text), text
        saved = home / ".labutils-lab-4242.url"
        assert f"ssh -J alice@login2 alice@gpu17 cat {saved}" in text
        assert saved.stat().st_mode & 0o777 == 0o600
        browser = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]{48})\n",
                               saved.read_text())
        assert browser, saved.read_text()
        port, token = int(browser.group(1)), browser.group(2)
        assert token not in text
        assert int(tunnel.group(1)) == int(tunnel.group(2)) == port
        pid = int(re.search(r"\(pid (\d+)\)", text).group(1))

        base = f"http://127.0.0.1:{port}"
        assert _status(base + "/api/contents", token) == 200
        assert _status(base + "/api/contents") == 403
        assert _status(base + "/api/contents", "0" * 48) == 403
        assert _status(f"{base}/lab?token={token}") == 200

        proc.send_signal(stop_signal)
        assert proc.wait(timeout=90) == 0
        rest = "".join(iter(lambda: lines.get(timeout=30), None))   # up to end of output
        assert f"{name}: stopping JupyterLab" in rest and "stopped" in rest
        assert not _listening(port)
        assert not _pid_alive(pid)
        assert not saved.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tunnel_command_from_slurm_and_host(monkeypatch):
    for var in ("SLURMD_NODENAME", "SLURM_SUBMIT_HOST", "LABUTILS_LOGIN_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "bob")
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop")
    assert jupyter.tunnel_command(8890) == "ssh -N -L 8890:127.0.0.1:8890 bob@laptop"
    monkeypatch.setenv("SLURMD_NODENAME", "n042")
    monkeypatch.setenv("SLURM_SUBMIT_HOST", "login1.cluster.org")
    assert jupyter.tunnel_command(9001) == \
        "ssh -N -L 9001:127.0.0.1:9001 -J bob@login1.cluster.org bob@n042"
    monkeypatch.setenv("SLURM_SUBMIT_HOST", "n042.cluster.org")   # srun from the node itself
    assert jupyter.tunnel_command(9001) == "ssh -N -L 9001:127.0.0.1:9001 bob@n042"
    monkeypatch.setenv("LABUTILS_LOGIN_HOST", "carol@gate")
    assert jupyter.tunnel_command(9001) == "ssh -N -L 9001:127.0.0.1:9001 -J carol@gate bob@n042"
    assert jupyter.tunnel_command(9001, login="hop") == \
        "ssh -N -L 9001:127.0.0.1:9001 -J bob@hop bob@n042"


def test_command_line_binds_loopback_hides_the_token_and_handles_root(monkeypatch, tmp_path):
    monkeypatch.setattr(jupyter, "_is_root", lambda: True)
    cmd = jupyter.lab_command("127.0.0.1", 8888, tmp_path)
    assert "--ip=127.0.0.1" in cmd and "--port=8888" in cmd and "--allow-root" in cmd
    assert "--no-browser" in cmd and not any("token" in part.lower() for part in cmd)
    monkeypatch.setattr(jupyter, "_is_root", lambda: False)
    assert "--allow-root" not in jupyter.lab_command("127.0.0.1", 8888, tmp_path)
    args = cli.build_parser().parse_args(["lab"])
    assert args.ip == "127.0.0.1" and args.port is None and not args.show_token


def test_the_token_is_printed_only_when_asked(tmp_path):
    class Proc:
        pid = 7
    server = jupyter.LabServer(Proc(), "127.0.0.1", 8123, "f" * 48, tmp_path)
    hidden = jupyter.connect_message(server, "bob@n1", "127.0.0.1", tmp_path / "u", False)
    shown = jupyter.connect_message(server, "bob@n1", "127.0.0.1", tmp_path / "u", True)
    assert "f" * 48 not in hidden and "token=<token>" in hidden
    assert "ssh -N -L 8123:127.0.0.1:8123 bob@n1" in hidden and "ssh bob@n1 cat " in hidden
    assert "http://127.0.0.1:8123/lab?token=" + "f" * 48 in shown


def test_a_public_address_warns(monkeypatch, capsys, tmp_path):
    def refuse(*a, **k):
        raise jupyter.LabStartError("not started in this test")
    monkeypatch.setattr(jupyter, "start_lab", refuse)
    assert jupyter.run_lab(ip="0.0.0.0", root=tmp_path) == 1
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0" in err and "not started in this test" in err
    assert jupyter.run_lab(ip="127.0.0.1", root=tmp_path) == 1
    assert "WARNING" not in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["lab", "--port", "0"])
    assert exit_info.value.code == 2 and "--port" in capsys.readouterr().err


def _start_lab(tmp_path, home, job_id):
    """``labutils lab`` as a subprocess; (process, its start-up output, JupyterLab's pid)."""
    env = dict(os.environ, HOME=str(home), SLURM_JOB_ID=job_id, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "labutils", "lab", "--notebooks",
                             str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    text, _ = _read_start_up(proc)
    return proc, text, int(re.search(r"\(pid (\d+)\)", text).group(1))


def test_sigkill_of_lab_takes_jupyterlab_along_and_the_next_start_removes_its_token_file(
        tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    killed, text, server_pid = _start_lab(tmp_path, home, "901")
    port = int(re.search(r"port (\d+),", text).group(1))
    stale = home / ".labutils-lab-901.url"
    assert stale.is_file()
    killed.kill()                      # SIGKILL: no handler of ours runs
    killed.wait(30)
    deadline = time.monotonic() + 60   # JupyterLab gets SIGTERM from the kernel and shuts down
    while _pid_alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pid_alive(server_pid), "JupyterLab outlived the labutils lab that started it"
    assert not _listening(port)
    assert stale.is_file()             # nothing could remove it at the kill

    live, text, live_pid = _start_lab(tmp_path, home, "902")
    try:
        assert f"removed {stale}: its server is no longer running" in text
        assert not stale.exists()
        # A live server's file holds its lock: another start-up's sweep keeps it.
        assert jupyter.remove_stale_url_files(home) == []
        assert (home / ".labutils-lab-902.url").is_file()
    finally:
        live.send_signal(signal.SIGTERM)
        assert live.wait(timeout=90) == 0
    assert not (home / ".labutils-lab-902.url").exists() and not _pid_alive(live_pid)
