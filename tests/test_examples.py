"""Every script of examples/ runs as a user would run it: a fresh interpreter in an empty
folder, exit status 0, and the lines that say it did what it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> lines its output must contain (each script also checks itself and exits non-zero
# when the registered extension was not used)
EXPECTED = {
    "quickstart_api.py": ["trial 0 (reference): complete", "search done: 3 trials",
                          "best trial:", "report: ", "benchmark run 3/3: ",
                          "benchmark searched:", "quickstart OK"],
    "custom_dataset.py": ["on the registered dataset 'squares'", "custom dataset OK"],
    "custom_encoder.py": ["with encoder 'tiny_sep'", "custom encoder OK"],
    "custom_op.py": ["gamma photometric", "shape's slots ['gamma']", "custom op OK"],
    "custom_task.py": ["'objects': 'count'", "custom task OK"],
    "custom_weighting.py": ["weighting methods: ['loss_ratio']", "custom weighting OK"],
    "make_folder_dataset.py": ["wrote 400 images", "folder dataset OK"],
}
# What each script writes into the folder it runs in (every other: runs/).
WRITES = {"make_folder_dataset.py": "data/streets/dataset.yaml"}


def test_every_example_is_tested_and_listed() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXPECTED)
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in scripts)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for line in EXPECTED[script]:
        assert line in done.stdout, f"{line!r} not in the output of {script}:\n{output[-4000:]}"
    assert (tmp_path / WRITES.get(script, "runs")).exists()  # it wrote into the folder it ran in
