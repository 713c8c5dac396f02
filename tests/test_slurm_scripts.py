"""The job scripts in ``slurm/``: valid bash, and shown verbatim in docs/cluster.md.

(They run on a real Slurm cluster in tests/test_slurm.py.)"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "slurm").glob("*.sbatch"))


def test_every_script_is_in_the_docs_verbatim():
    docs = (ROOT / "docs" / "cluster.md").read_text()
    shown = dict(re.findall(r"<!-- file: (slurm/\S+) [^\n]*-->\n```bash\n(.*?)```\n"
                            r"<!-- end: \1 -->", docs, re.S))
    assert sorted(shown) == [f"slurm/{p.name}" for p in SCRIPTS]
    for path in SCRIPTS:
        assert shown[f"slurm/{path.name}"] == path.read_text(), \
            f"docs/cluster.md shows another slurm/{path.name}: copy the file into the docs"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_are_valid_bash_and_read_their_settings_from_the_environment(path):
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    if path.name.startswith("train"):
        for name in ("LAB", "PROFILE", "OUT", "ARGS"):
            assert re.search(rf"^{name}=\${{{name}:-", text, re.M), name
        for line in ("--requeue", "--signal=B:USR1@", "--open-mode=append"):
            assert f"#SBATCH {line}" in text


def test_ranks_come_from_an_srun_step_but_not_from_the_batch_shell():
    from labutils.tools.distributed import first_host, slurm_job_note, slurm_ranks
    assert [first_host(n) for n in ("vm", "gpu[03-05,9]", "a,b[1-2]", "n[1]")] == \
        ["vm", "gpu03", "a", "n1"]
    batch_shell = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    assert slurm_ranks(batch_shell) is None
    task = dict(batch_shell, SLURM_PROCID="1", SLURM_LOCALID="1", SLURM_STEP_ID="0",
                SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="gpu[03-04]")
    ranks = slurm_ranks(task)
    assert (ranks.rank, ranks.world_size, ranks.local_rank) == (1, 2, 1)
    assert ranks.init_method.startswith("tcp://gpu03:")
    assert slurm_ranks(dict(task, SLURM_PROCID="0")).init_method == ranks.init_method
    assert slurm_ranks(dict(task, SLURM_STEP_NUM_TASKS="1")) is None
    assert slurm_job_note(dict(task, SLURM_RESTART_COUNT="1", SLURMD_NODENAME="gpu03")) == \
        "Slurm job 7 on gpu03, start 2 (SLURM_RESTART_COUNT=1)"
    assert slurm_job_note({}) is None
