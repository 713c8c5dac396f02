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
