"""The job scripts in ``slurm/`` on a real single-node Slurm cluster, started by this module.

A session fixture installs Debian's ``slurm-wlm``, ``munge``, ``openssh-server`` and
``iproute2`` with apt (when root and they are missing), starts ``munged``, ``slurmctld`` and
``slurmd`` as root without systemd, on private ports and in a private folder (this host as the
one node, 2 CPUs), and stops all of it at the end. Nothing is faked: the time limit, ``scancel``,
the requeue and srun's ranks are Slurm's own; a test may only release a requeued job early
with ``scontrol update StartTime=now`` (Slurm holds it back about 2 minutes otherwise).

``slurm/lab.sbatch`` and its SSH tunnel are tested in tests/test_slurm_lab.py, on a cluster of
its own started by the same fixture (module-scoped: one module's jobs never meet the other's).

Without root and apt (or where the daemons cannot start) these tests are skipped with that
advice, except under ``CI=true``, where they fail. Only these: ``pytest -m slurm``.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labutils.tools.checkpoint import CheckpointDir
from labutils.tools.jupyter import free_port
from labutils.tools.train_job import EXIT_REQUEUE

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
SLURM_DIR = ROOT / "slurm"
PACKAGES = ["slurm-wlm", "munge", "openssh-server", "iproute2"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sshd"]
# Every job overrides the scripts' site lines for this 2-CPU node without GPUs.
CPU_NODE = ["--gres=none", "--mem=200M"]
# One training step of fmnist-ddpm under ci on one thread: 40-70 ms on the 2-core test machine.
TRAIN = ["--batch-size", "16", "--checkpoint-every", "0", "--sample-every", "0", "--quiet",
         "--device", "cpu"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(message: str):
    if _in_ci():
        pytest.fail(message + " [CI=true: a missing Slurm is a failure]")
    pytest.skip(message)


def _which(name: str):
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/sbin")
                                       if os.access(f"{d}/{name}", os.X_OK)), None)


def _install() -> None:
    """apt-get install the packages when something is missing and we may (root, apt)."""
    if all(_which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _unavailable("the Slurm tests need root and apt-get to install " + " ".join(PACKAGES) +
                     " (Debian/Ubuntu: sudo apt-get install " + " ".join(PACKAGES) + "), and "
                     "root to start slurmctld, slurmd and sshd")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(f"apt-get update -qq && apt-get install -y -qq {' '.join(PACKAGES)}",
                          shell=True, env=env, capture_output=True, text=True)
    missing = [d for d in DAEMONS if not _which(d)]
    if done.returncode or missing:
        _unavailable(f"apt-get install {' '.join(PACKAGES)} failed (missing {missing}): "
                     f"{done.stderr.strip()[-500:]}")


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for "
                         f"{what() if callable(what) else what}")


SLURM_CONF = """\
ClusterName=labtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Short clocks for a test: finished jobs stay visible 5 minutes, KILL 10 s after TERM.
MinJobAge=300
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""



def stop_process(proc: subprocess.Popen, group: bool = False) -> None:
    """TERM (to its process group when ``group``), then KILL if it is still there after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

class Cluster:
    """munged, slurmctld and slurmd of this test session, and the client commands."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.host = socket.gethostname().split(".")[0]
        self.conf = folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        VENV=str(Path(sys.executable).parent.parent))
        self.procs = []

    def start(self) -> None:
        f = self.folder
        for sub in ("munge", "state", "spool"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o711)
        key = f / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(SLURM_CONF.format(host=self.host, folder=f,
                                               ctld_port=free_port(), slurmd_port=free_port()))
        self._daemon([_which("munged"), "-F", "-f", f"--socket={f}/munge/socket",
                      f"--key-file={key}", f"--pid-file={f}/munge/pid",
                      f"--log-file={f}/munge/log", f"--seed-file={f}/munge/seed"])
        _wait(lambda: (f / "munge" / "socket").exists(), 30, "munged")
        self._daemon([_which("slurmctld"), "-D", "-f", str(self.conf)])
        self._daemon([_which("slurmd"), "-D", "-f", str(self.conf)])
        _wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
              in ("idle", "mixed", "allocated"), 60, "the node to be idle (sinfo)")

    def _daemon(self, cmd) -> None:
        log = open(self.folder / (Path(cmd[0]).name + ".out"), "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: "
                               f"{(self.folder / (Path(cmd[0]).name + '.out')).read_text()}")

    def stop(self) -> None:
        if self.procs:
            self.run("scancel", "--full", "--user=root", check=False)
            try:
                _wait(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 30,
                      "every job to end")
            except AssertionError:
                pass
        for proc in reversed(self.procs):
            stop_process(proc)

    def run(self, *cmd, check=True, env=None) -> subprocess.CompletedProcess:
        done = subprocess.run(cmd, env=dict(self.env, **(env or {})), capture_output=True,
                              text=True, timeout=60)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(cmd)}: {done.stderr.strip()}")
        return done

    def sbatch(self, script: str, *options, env=None, cwd=ROOT) -> "Job":
        """Submit ``slurm/<script>`` as is; ``env`` (LAB, OUT, ARGS ...) reaches it through
        ``--export=ALL``, as from a user's shell."""
        out = self.folder / "jobs"
        out.mkdir(exist_ok=True)
        done = self.run("sbatch", "--parsable", f"--chdir={cwd}", f"--output={out}/%x-%j.out",
                        *CPU_NODE, *options, "--export=ALL", str(SLURM_DIR / script),
                        env={k: str(v) for k, v in (env or {}).items()})
        job_id = done.stdout.strip().split(";")[0]
        return Job(self, job_id, out / f"{self.job_name(job_id)}-{job_id}.out")

    def job_name(self, job_id: str) -> str:
        return self.show(job_id)["JobName"]

    def show(self, job_id: str) -> dict:
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))


class Job:
    def __init__(self, cluster: Cluster, job_id: str, output: Path):
        self.cluster, self.id, self.output = cluster, job_id, output

    def info(self) -> dict:
        return self.cluster.show(self.id)

    @property
    def state(self) -> str:
        return self.info()["JobState"]

    def log(self) -> str:
        return self.output.read_text() if self.output.is_file() else ""

    def wait_state(self, states, timeout: float) -> dict:
        return _wait(lambda: (lambda i: i if i["JobState"] in states else None)(self.info()),
                     timeout, lambda: f"job {self.id} to be {'/'.join(states)} (it is "
                                      f"{self.state}; its output:\n{self.log()})")

    def wait_log(self, text: str, timeout: float, count: int = 1) -> str:
        return _wait(lambda: self.log() if self.log().count(text) >= count else None, timeout,
                     lambda: f"{text!r} x{count} in job {self.id}'s output:\n{self.log()}")

    def release(self) -> None:
        """Start a requeued job now instead of in ~2 minutes (Slurm's own admin command)."""
        self.wait_state(("PENDING",), 60)
        # slurmd refuses a credential issued in the same second as the requeue revoked the old
        # one ("Job credential revoked": the job FAILs): let that second pass.
        time.sleep(2)
        self.cluster.run("scontrol", "update", f"JobId={self.id}", "StartTime=now")

    def scancel(self, *options) -> None:
        self.cluster.run("scancel", *options, self.id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A cluster for this module (tests/test_slurm_lab.py imports this fixture: another one)."""
    _install()
    if os.geteuid() != 0:
        _unavailable("the Slurm tests start slurmd and sshd: run them as root (a container, CI)")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except (RuntimeError, AssertionError) as err:
        c.stop()
        _unavailable(f"could not start a single-node Slurm cluster here: {err}")
    yield c
    c.stop()


# --- helpers ------------------------------------------------------------------------------------

def _losses(run: Path) -> list:
    return [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]


def _wait_training(run: Path, job: Job, timeout: float = 120) -> None:
    """Until the job has logged a few training steps."""
    _wait(lambda: (run / "loss.jsonl").is_file() and len(_losses(run)) >= 5, timeout,
          lambda: f"job {job.id} to train a few steps (its output:\n{job.log()})")


def _args(epochs: int) -> str:
    return " ".join(["--epochs", str(epochs), *TRAIN])


def _stamp(log: str, pattern: str) -> float:
    """Seconds since the epoch of the job script's ``=== <time> <pattern>`` line."""
    found = re.search(r"=== (\S+) " + pattern, log)
    assert found, f"no '=== TIME {pattern}' line in:\n{log}"
    return datetime.datetime.fromisoformat(found.group(1)).timestamp()


# --- the training scripts -----------------------------------------------------------------------

def test_time_limit_checkpoints_requeues_and_resumes_to_the_same_weights(cluster, tmp_path):
    # 1200 steps (50-85 s on one thread) outlast the USR1 of a 1-minute limit with
    # --signal=B:USR1@15, which Slurm's 30 s checks send 15-45 s into the job.
    epochs = 300
    run, reference = tmp_path / "run", tmp_path / "reference"
    straight = subprocess.Popen(
        [sys.executable, "-m", "labutils", "train", "fmnist-ddpm", "--profile", "ci", "--out",
         str(reference), "--epochs", str(epochs), *TRAIN, "--threads", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job = cluster.sbatch("train.sbatch", "--time=1", "--signal=B:USR1@15", "--cpus-per-task=1",
                         env={"LAB": "fmnist-ddpm", "PROFILE": "ci", "OUT": run,
                              "ARGS": _args(epochs)})
    try:
        log = job.wait_log(f"requeueing {job.id}", 240)
        assert "SIGUSR1 received" in log and "got SIGUSR1" in log, log
        assert f"exited with {EXIT_REQUEUE}" in log, log
        stopped = int(re.search(r"stopped at step (\d+) of", log).group(1))
        assert 0 < stopped < epochs * 4, "the job should stop mid-run"
        assert CheckpointDir(run / "checkpoints").latest()[1]["step"] == stopped
        job.wait_state(("PENDING",), 60)
        time.sleep(2)   # as in Job.release
        # Released at once, with room to finish (the scheduler would start it in ~2 min, with
        # the same limit, and it would stop and requeue again until done).
        cluster.run("scontrol", "update", f"JobId={job.id}", "StartTime=now", "TimeLimit=10")
        info = job.wait_state(("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 240)
        log = job.log()
        assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log)
    finally:
        if job.state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            job.scancel()
    # --open-mode=append: both starts are in the one output file, each saying which it is.
    assert f"Slurm job {job.id} on {cluster.host}, start 1 (SLURM_RESTART_COUNT=0)" in log
    assert f"Slurm job {job.id} on {cluster.host}, start 2 (SLURM_RESTART_COUNT=1)" in log
    assert f"(step {stopped} of {epochs * 4})" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == stopped and summary["step"] == epochs * 4
    assert [r["step"] for r in _losses(run)] == list(range(1, epochs * 4 + 1))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-2000:]
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["param_digests"] == expected["param_digests"]   # one CPU: the same weights
    print(f"\nUSR1 -> exit {_stamp(log, 'labutils train exited') - _stamp(log, 'got SIGUSR1'):.1f}"
          f" s; exit -> start 2 {_stamp(log, 'job .* start 2') - _stamp(log, 'requeueing'):.1f} s"
          " (released at once)")


def _stopped_at(log: str, nth: int = -1) -> int:
    return int(re.findall(r"stopped at step (\d+) of", log)[nth])


def test_usr1_to_the_batch_shell_requeues_then_scancel_stops_for_good(cluster, tmp_path):
    run = tmp_path / "run"
    job = cluster.sbatch("train.sbatch", "--time=10", "--cpus-per-task=1",
                         env={"LAB": "fmnist-ddpm", "PROFILE": "ci", "OUT": run,
                              "ARGS": _args(2000)})
    try:
        _wait_training(run, job)
        job.scancel("--signal=USR1", "--batch")   # what a preemption notice looks like
        log = job.wait_log(f"requeueing {job.id}", 120)
        first = _stopped_at(log)
        assert f"exited with {EXIT_REQUEUE}" in log
        assert CheckpointDir(run / "checkpoints").latest()[1]["step"] == first
        job.release()
        job.wait_log(f"(step {first} of", 180)
        _wait_training(run, job)   # the loss log was cut back to `first`: trains past it again
        _wait(lambda: _losses(run)[-1]["step"] > first + 3, 120, "training after the resume")

        job.scancel()   # TERM to every process of the job: the script forwards it once more
        log = job.wait_log("labutils train exited", 60, count=2)
        info = job.wait_state(("CANCELLED", "COMPLETED", "FAILED", "PENDING"), 60)
    finally:
        if job.state in ("RUNNING", "PENDING"):
            job.scancel("--signal=KILL")
    second = _stopped_at(log)
    assert second > first
    assert "SIGTERM received" in log and log.rstrip().endswith("labutils train exited with 143")
    # Slurm's TERM and the script's forwarded one are one request: the checkpoint is saved.
    # (Python runs its handler once for two TERMs that land before it gets to run: then the
    # "again within 5 s" line is missing, seen under load; the checkpoint is what matters.)
    assert log.count("SIGTERM received") == 1 and "stopped at once" not in log, log
    assert CheckpointDir(run / "checkpoints").latest()[1]["step"] == second
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "1", info
    assert log.count("requeueing") == 1


def _two_ranks_requeue_resume_and_finish(job: Job, run: Path, why: str) -> str:
    """USR1 to the batch shell of a job of two training processes: both checkpoint, the script
    requeues the job (its log matches ``why`` first), which is released, resumes and completes
    with both ranks' weights equal. Returns the job's output."""
    try:
        _wait_training(run, job, timeout=180)
        job.scancel("--signal=USR1", "--batch")   # the script (or srun) passes it on
        log = job.wait_log(f"requeueing {job.id}", 120)
        assert log.count("SIGUSR1 received") == 2, log       # each rank
        assert re.search(why, log), log
        stopped = _stopped_at(log)
        job.release()
        info = job.wait_state(("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 300)
        log = job.log()
    finally:
        if job.state in ("RUNNING", "PENDING"):
            job.scancel("--signal=KILL")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["resumed_from_step"] == stopped
    assert summary["step"] == summary["total_steps"]
    digests = summary["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [r["step"] for r in _losses(run)] == list(range(1, summary["total_steps"] + 1))
    return log


def test_srun_ranks_train_together_requeue_and_resume(cluster, tmp_path):
    run = tmp_path / "run"
    job = cluster.sbatch("train-srun.sbatch", "--ntasks=2", "--cpus-per-task=1", "--time=10",
                         env={"LAB": "fmnist-ddpm", "PROFILE": "ci", "OUT": run,
                              "ARGS": _args(40)})
    log = _two_ranks_requeue_resume_and_finish(job, run, f"srun exited with {EXIT_REQUEUE}")
    assert "2 process(es) on cpu" in log


def test_torchrun_requeues_on_the_workers_outcome_and_resumes(cluster, tmp_path):
    """torchrun exits with a code of its own, not the workers' 75: the script reads rank 0's
    outcome file and requeues on that."""
    run = tmp_path / "run"
    job = cluster.sbatch("train-torchrun.sbatch", "--cpus-per-task=2", "--time=10",
                         env={"LAB": "fmnist-ddpm", "PROFILE": "ci", "OUT": run, "NPROC": "2",
                              "ARGS": _args(40)})
    log = _two_ranks_requeue_resume_and_finish(
        job, run, rf"torchrun exited with \d+, the workers with {EXIT_REQUEUE}\n")
    assert "torchrun exited with 0, the workers with 0" in log
    assert "2 process(es) on cpu" in log
    assert not list(run.glob("exit-code-*")), "the outcome file should be removed"
