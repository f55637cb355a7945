"""Every error a user can cause on the commands that take input — search, results, export,
benchmark, preview, report, check and show — in one table (``CASES``): bad flag values
(ranges, choices, types, unknown and missing options), missing and broken files (space, policy,
study, storage), mismatches (a policy's tasks against the dataset's, a benchmark's contenders,
storage and study, an engine and its folder), out-of-range ranks, ``--device cuda`` without a
GPU, an unreachable ``--ray-address`` and an unusable ``--ray-storage``; and the environment
variables that set a database storage's heartbeat.

Each case runs the command in-process and must end with exit status 2 and exactly one line on
standard error, ``error: …``, naming the flag or file at fault; nothing may be written into the
output folder the case gives (``{out}``), nor into the inputs the cases share (a finished study
among them). Typer's own usage errors (a bad option type or choice, an unknown or missing
option) are condensed to such a line too (``policysearch.cli._OneLineUsageErrors``).

Besides the table: ``--amp`` on the CPU says in one line that it is ignored.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from typer.testing import CliRunner

from policysearch import api
from policysearch.augment import get_baseline
from policysearch.cli import app
from policysearch.errors import UserError
from tests.conftest import TINY_SPACE
from tests.ray_cluster import ray_unavailable, unanswered_port
from tests.reliability_counts import Recorder

runner = CliRunner()
AMP_LINE = "warning: --amp: bf16 mixed precision is CUDA-only; ignored on the CPU"


class Case(NamedTuple):
    id: str
    argv: str  # split on spaces; {names} are the paths of the ``inputs`` fixture, {out} …
    names: tuple[str, ...]  # what the error line must hold: the flag or file at fault, …
    needs: str | None = None  # "ray": skipped without ray; "no_gpu": skipped with a GPU
    env: dict[str, str] | None = None  # environment variables the command runs with


SEARCH = "search --space {space} --device cpu --out {out}"
RAY = SEARCH + " --engine ray"
BENCH = "benchmark --policy {policy} --out {out}"
TO_YAML = "--to {out}/p.yaml"
TO_HTML = "--to {out}/r.html"
PREVIEW = "preview --to {out}/g.png"

CASES = [
    Case("unknown-command", "serach --space {space}", ("serach",)),
    # --- search: the options' own values ---------------------------------------------------
    Case("search-workers-0", SEARCH + " --workers 0", ("--workers", "at least 1")),
    Case("search-workers-not-a-number", SEARCH + " --workers x", ("--workers",)),
    Case("search-trials-0", SEARCH + " --trials 0", ("--trials",)),
    Case("search-threads-0", SEARCH + " --threads 0", ("--threads",)),
    Case("search-timeout-negative", SEARCH + " --timeout -1", ("--timeout",)),
    Case("search-device-cuda-without-gpu",
         "search --space {space} --device cuda --out {out}", ("--device", "no GPU"), "no_gpu"),
    Case("search-device-unknown", "search --space {space} --device tpu --out {out}",
         ("--device", "tpu")),
    Case("search-engine-unknown", SEARCH + " --engine dask", ("--engine", "dask")),
    Case("search-scheduler-unknown", SEARCH + " --scheduler hyperband", ("--scheduler",)),
    Case("search-objective-unknown", SEARCH + " --objective speed", ("--objective",)),
    Case("search-method-unknown", SEARCH + " --method grid", ("--method",)),
    Case("search-log-to-unknown", SEARCH + " --log-to wandb", ("--log-to",)),
    Case("search-unknown-option", SEARCH + " --bogus", ("--bogus",)),
    Case("search-option-without-value", SEARCH + " --trials", ("--trials",)),
    Case("search-image-size-malformed", SEARCH + " --image-size 12x", ("--image-size",)),
    Case("search-image-size-too-small", SEARCH + " --image-size 8", ("--image-size",)),
    Case("search-epochs-0", SEARCH + " --epochs 0", ("--epochs",)),
    Case("search-lr-negative", SEARCH + " --lr -1", ("--lr",)),
    Case("search-batch-size-0", SEARCH + " --batch-size 0", ("--batch-size",)),
    Case("search-loader-workers-too-many", SEARCH + " --loader-workers 99",
         ("--loader-workers",)),
    Case("search-subset-0", SEARCH + " --subset 0", ("--subset",)),
    Case("search-subset-too-large", SEARCH + " --subset 100000", ("--subset", "has 48")),
    Case("search-finalists-negative", SEARCH + " --finalists -1", ("--finalists",)),
    Case("search-finalist-seeds-0", SEARCH + " --finalists 2 --finalist-seeds 0",
         ("--finalist-seeds",)),
    Case("search-finalists-with-pareto", SEARCH + " --finalists 2 --objective pareto",
         ("--finalists",)),
    # --- search: what the options name -----------------------------------------------------
    Case("search-dataset-unknown", SEARCH + " --dataset nope", ("--dataset", "nope")),
    Case("search-dataset-format-unknown", SEARCH + " --dataset cocoa:/data",
         ("--dataset", "cocoa")),
    Case("search-dataset-folder-missing", SEARCH + " --dataset folder:{missing}",
         ("{missing}",)),
    Case("search-encoder-unknown", SEARCH + " --encoder resnet19", ("--encoder", "resnet19")),
    Case("search-weights-missing", SEARCH + " --weights {missing}", ("{missing}",)),
    Case("search-weights-not-a-weights-file", SEARCH + " --weights {file}", ("{file}",)),
    Case("search-space-missing", "search --space {missing} --out {out}",
         ("{missing}", "file not found")),
    Case("search-space-unknown-name", "search --space nosuch --out {out}",
         ("--space", "nosuch")),
    Case("search-space-bad-yaml", "search --space {bad_yaml} --out {out}",
         ("{bad_yaml}", "invalid YAML")),
    Case("search-space-invalid", "search --space {bad_space} --out {out}",
         ("{bad_space}", "shared.ops")),
    Case("search-out-is-a-file", "search --space {space} --device cpu --out {file}",
         ("{file}", "--out")),
    Case("search-storage-not-a-url", SEARCH + " --storage nourl", ("--storage",)),
    Case("search-sqlite-with-workers", SEARCH + " --workers 2 --storage sqlite:///{out}/x.db",
         ("--storage",)),
    # (a database storage's heartbeat: policysearch.search.optuna_study.heartbeat_settings)
    Case("search-heartbeat-not-a-number", SEARCH + " --storage sqlite:///{tmp}/x.db",
         ("POLICYSEARCH_HEARTBEAT_S", "'ten'"), env={"POLICYSEARCH_HEARTBEAT_S": "ten"}),
    Case("search-grace-not-above-the-heartbeat", SEARCH + " --storage sqlite:///{tmp}/x.db",
         ("POLICYSEARCH_GRACE_S", "longer than the heartbeat"),
         env={"POLICYSEARCH_HEARTBEAT_S": "10", "POLICYSEARCH_GRACE_S": "5"}),
    Case("search-resume-with-another-space",  # (the study was searched with --amp)
         "search --space {space} --device cpu --out {study} --epochs 3",
         ("{study}", "refusing to resume", "space.budget.amp")),
    # --- search --engine ray ---------------------------------------------------------------
    Case("ray-address-unreachable", RAY + " --ray-address 127.0.0.1:{port}",
         ("--ray-address", "cannot reach"), "ray"),
    Case("ray-address-unreachable-pbt",
         RAY + " --scheduler pbt --ray-address 127.0.0.1:{port}", ("--ray-address",), "ray"),
    Case("ray-pbt-with-method", RAY + " --scheduler pbt --method random", ("--method",), "ray"),
    Case("ray-address-ray-client", RAY + " --ray-address ray://head:10001",
         ("--ray-address",), "ray"),
    Case("ray-address-malformed", RAY + " --ray-address nonsense", ("--ray-address",), "ray"),
    Case("ray-storage-is-a-file", RAY + " --ray-storage {file}", ("--ray-storage", "{file}")),
    Case("ray-storage-below-a-file", RAY + " --ray-storage {file}/runs",
         ("--ray-storage", "{file}")),
    Case("ray-with-optuna-storage", RAY + " --storage sqlite:///{out}/x.db", ("--storage",)),
    Case("ray-cpus-per-trial-0", RAY + " --cpus-per-trial 0", ("--cpus-per-trial",)),
    Case("ray-gpus-per-trial-fraction-above-1", RAY + " --gpus-per-trial 1.5",
         ("--gpus-per-trial",)),
    Case("ray-device-cuda-without-gpus-per-trial",
         "search --space {space} --device cuda --out {out} --engine ray", ("--gpus-per-trial",)),
    Case("ray-on-an-optuna-study", "search --space {space} --device cpu --out {study} "
         "--engine ray", ("{study}", "--out"), "ray"),
    # --- results ---------------------------------------------------------------------------
    Case("results-nothing-named", "results", ("--out",)),
    Case("results-no-study-in-folder", "results --out {empty}", ("{empty}", "--out")),
    Case("results-format-unknown", "results --out {study} --format pdf", ("--format",)),
    Case("results-top-0", "results --out {study} --top 0", ("--top",)),
    Case("results-seeds-without-reeval", "results --out {study} --seeds 2", ("--seeds",)),
    Case("results-reeval-0", "results --out {study} --reeval 0", ("--reeval",)),
    Case("results-reeval-seeds-0", "results --out {study} --reeval 1 --seeds 0", ("--seeds",)),
    Case("results-reference-unknown", "results --out {study} --reference flipcropp",
         ("--reference", "flipcropp")),
    Case("results-task-weight-malformed", "results --out {study} --task-weight shape",
         ("--task-weight",)),
    Case("results-task-weight-unknown-task", "results --out {study} --task-weight colour=1",
         ("--task-weight", "colour")),
    Case("results-threads-0", "results --out {study} --reeval 1 --threads 0", ("--threads",)),
    Case("results-device-cuda-without-gpu", "results --out {study} --reeval 1 --device cuda",
         ("--device",), "no_gpu"),
    Case("results-study-unknown", "results --out {study} --study nope", ("--study", "nope")),
    Case("results-storage-not-a-url", "results --storage nourl --study x", ("--storage",)),
    Case("results-grace-0", "results --storage sqlite:///{tmp}/none.db --study x",
         ("POLICYSEARCH_GRACE_S", "at least 1"), env={"POLICYSEARCH_GRACE_S": "0"}),
    Case("results-storage-without-study", "results --storage sqlite:///{tmp}/none.db",
         ("--study",)),
    Case("results-storage-study-unknown", "results --storage sqlite:///{tmp}/none.db "
         "--study x", ("--study",)),
    # --- export ----------------------------------------------------------------------------
    Case("export-nothing-named", "export " + TO_YAML, ("--out",)),
    Case("export-no-study-in-folder", "export --out {empty} " + TO_YAML, ("{empty}",)),
    Case("export-rank-out-of-range", "export --out {study} --rank 9 " + TO_YAML,
         ("--rank", "between 1 and 1")),
    Case("export-rank-0", "export --out {study} --rank 0 " + TO_YAML, ("--rank",)),
    Case("export-front-of-a-delta-m-study", "export --out {study} --front " + TO_YAML,
         ("--front",)),
    Case("export-priority-of-a-delta-m-study",  # (--priority implies --front)
         "export --out {study} --priority shape " + TO_YAML, ("--front",)),
    Case("export-format-unknown", "export --out {study} --format pdf " + TO_YAML,
         ("--format",)),
    Case("export-task-weight-unknown-task",
         "export --out {study} --task-weight colour=1 " + TO_YAML, ("--task-weight",)),
    Case("export-study-unknown", "export --out {study} --study nope " + TO_YAML, ("--study",)),
    Case("export-epoch-negative", "export --policy {policy} --format python --epoch -1 "
         "--to {out}/p.py", ("--epoch",)),
    Case("export-policy-missing", "export --policy {missing} " + TO_YAML, ("{missing}",)),
    Case("export-policy-bad-yaml", "export --policy {bad_yaml} " + TO_YAML, ("{bad_yaml}",)),
    Case("export-policy-is-a-space-file", "export --policy {space} " + TO_YAML, ("{space}",)),
    Case("export-to-below-a-file", "export --policy {policy} --format python --to {file}/p.py",
         ("{file}/p.py", "--to")),
    # --- report ----------------------------------------------------------------------------
    Case("report-nothing-named", "report " + TO_HTML, ("--out",)),
    Case("report-no-study-in-folder", "report --out {empty} " + TO_HTML, ("{empty}",)),
    Case("report-task-weight-unknown-task",
         "report --out {study} --task-weight colour=1 " + TO_HTML, ("--task-weight",)),
    Case("report-to-a-folder", "report --out {study} --no-preview --to {empty}",
         ("{empty}", "--to")),
    Case("report-to-below-a-file", "report --out {study} --no-preview --to {file}/r.html",
         ("{file}/r.html", "--to")),
    Case("report-storage-study-unknown",
         "report --storage sqlite:///{tmp}/none.db --study x " + TO_HTML, ("--study",)),
    # --- benchmark -------------------------------------------------------------------------
    Case("benchmark-policy-not-given", "benchmark --out {out}", ("--policy",)),
    Case("benchmark-policy-missing", "benchmark --policy {missing} --out {out}",
         ("{missing}",)),
    Case("benchmark-policy-bad-yaml", "benchmark --policy {bad_yaml} --out {out}",
         ("{bad_yaml}",)),
    Case("benchmark-policy-for-other-tasks",
         "benchmark --policy {other_policy} --search {study} --out {out}",
         ("{other_policy}", "tasks")),
    Case("benchmark-baseline-unknown", BENCH + " --baselines none,rot90",
         ("--baselines", "rot90")),
    Case("benchmark-baseline-reserved-name", BENCH + " --baselines none,searched",
         ("--baselines", "searched")),
    Case("benchmark-reference-unknown", BENCH + " --reference nothing", ("--reference",)),
    Case("benchmark-seeds-0", BENCH + " --seeds 0", ("--seeds",)),
    Case("benchmark-seeds-not-a-number", BENCH + " --seeds x", ("--seeds",)),
    Case("benchmark-significance-unknown", BENCH + " --significance ftest",
         ("--significance",)),
    Case("benchmark-threads-0", BENCH + " --threads 0", ("--threads",)),
    Case("benchmark-device-cuda-without-gpu", BENCH + " --device cuda", ("--device",),
         "no_gpu"),
    Case("benchmark-storage-without-study", BENCH + " --storage {study}/study.journal",
         ("--study",)),
    Case("benchmark-storage-study-unknown",
         BENCH + " --storage {study}/study.journal --study nope", ("--study", "nope")),
    Case("benchmark-storage-empty", BENCH + " --storage sqlite:///{tmp}/none.db --study x",
         ("--study",)),
    Case("benchmark-search-missing", BENCH + " --search {missing}", ("--search",)),
    Case("benchmark-search-holds-no-study", BENCH + " --search {empty}", ("{empty}",)),
    Case("benchmark-search-study-unknown", BENCH + " --search {study} --study nope",
         ("--study",)),
    Case("benchmark-space-unknown", BENCH + " --space nosuch", ("--space",)),
    Case("benchmark-dataset-unknown", BENCH + " --dataset nope", ("--dataset",)),
    Case("benchmark-encoder-unknown", BENCH + " --encoder resnet19", ("--encoder",)),
    Case("benchmark-epochs-0", BENCH + " --epochs 0", ("--epochs",)),
    Case("benchmark-image-size-malformed", BENCH + " --image-size 0x", ("--image-size",)),
    Case("benchmark-loader-workers-negative", BENCH + " --loader-workers -1",
         ("--loader-workers",)),
    Case("benchmark-subset-0", BENCH + " --subset 0", ("--subset",)),
    Case("benchmark-subset-too-large", BENCH + " --subset 100000", ("--subset",)),
    Case("benchmark-out-is-a-file", "benchmark --policy {policy} --out {file}",
         ("{file}", "--out")),
    # --- preview ---------------------------------------------------------------------------
    Case("preview-n-0", PREVIEW + " --policy flipcrop --n 0", ("--n",)),
    Case("preview-draws-0", PREVIEW + " --policy flipcrop --draws 0", ("--draws",)),
    Case("preview-policy-unknown", PREVIEW + " --policy flopcrip", ("--policy", "flopcrip")),
    Case("preview-policy-missing", PREVIEW + " --policy {missing}", ("{missing}",)),
    Case("preview-policy-bad-yaml", PREVIEW + " --policy {bad_yaml}", ("{bad_yaml}",)),
    Case("preview-policy-for-other-tasks", PREVIEW + " --policy {other_policy}",
         ("{other_policy}", "digit")),
    Case("preview-dataset-unknown", PREVIEW + " --policy flipcrop --dataset nope",
         ("--dataset",)),
    Case("preview-image-size-too-small", PREVIEW + " --policy flipcrop --image-size 8",
         ("--image-size",)),
    Case("preview-to-below-a-file", "preview --policy flipcrop --n 1 --draws 1 "
         "--to {file}/g.png", ("{file}/g.png",)),
    Case("preview-to-not-given", "preview --policy flipcrop", ("--to",)),
    Case("preview-policy-not-given", PREVIEW, ("--policy",)),
    # --- check -----------------------------------------------------------------------------
    Case("check-nothing-given", "check", ("--space",)),
    Case("check-space-missing", "check --space {missing}", ("{missing}",)),
    Case("check-space-unknown-name", "check --space nosuch", ("--space", "nosuch")),
    Case("check-space-bad-yaml", "check --space {bad_yaml}", ("{bad_yaml}",)),
    Case("check-space-invalid", "check --space {bad_space}", ("{bad_space}", "shared.ops")),
    Case("check-space-is-a-policy-file", "check --space {policy}", ("{policy}",)),
    Case("check-policy-missing", "check --policy {missing}", ("{missing}",)),
    Case("check-policy-bad-yaml", "check --policy {bad_yaml}", ("{bad_yaml}",)),
    Case("check-policy-is-a-space-file", "check --policy {space}", ("{space}",)),
    # --- show ------------------------------------------------------------------------------
    Case("show-no-file", "show", ("policy",)),
    Case("show-missing", "show {missing}", ("{missing}",)),
    Case("show-bad-yaml", "show {bad_yaml}", ("{bad_yaml}",)),
    Case("show-a-space-file", "show {space}", ("{space}",)),
    Case("show-a-folder", "show {empty}", ("{empty}",)),
    Case("show-unknown-option", "show {policy} --bogus", ("--bogus",)),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """What the cases read, made once: a finished one-trial study of the tiny space (searched
    with ``--amp`` on the CPU: its standard error is kept for the --amp test), its policy, a
    plain file, an empty folder, broken files, a policy for other tasks."""
    root = tmp_path_factory.mktemp("user-errors")
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    study = root / "study"
    searched = runner.invoke(app, ["search", "--space", str(space), "--out", str(study),
                                   "--trials", "1", "--epochs", "1", "--device", "cpu",
                                   "--amp", "--quiet", "--no-report"])
    assert searched.exit_code == 0, searched.output
    (root / "file").write_text("not a folder, nor a policy\n")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("shared: [1,\n")
    (root / "bad_space.yaml").write_text(yaml.safe_dump(
        {"name": "bad", "shared": {"slots": 1, "ops": ["warp9"]}}))
    other = get_baseline("flipcrop", {"digit": "classification"}).to_dict()
    (root / "other_policy.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    yield {"root": root, "space": space, "study": study, "policy": study / "best_policy.yaml",
           "file": root / "file", "empty": root / "empty", "bad_yaml": root / "bad.yaml",
           "bad_space": root / "bad_space.yaml", "other_policy": root / "other_policy.yaml",
           "missing": root / "missing.yaml", "search_stderr": searched.stderr}
    shutil.rmtree(root, ignore_errors=True)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _skip_unless_possible(needs: str | None) -> None:
    if needs == "ray":
        try:
            from policysearch.search import ray_engine  # noqa: F401
        except ImportError as err:
            ray_unavailable(f"ray is not installed ({err})")
    elif needs == "no_gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible: --device cuda is no error here")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_user_error_is_one_line_exit_2_naming_the_flag_or_file(
        case: Case, inputs: dict[str, Any], tmp_path: Path, reliability: Recorder) -> None:
    _skip_unless_possible(case.needs)
    out = tmp_path / "out"
    paths = {k: str(v) for k, v in inputs.items() if isinstance(v, Path)}
    before = _files(inputs["root"])
    with unanswered_port() as port:  # bound, not listening: a ray address nothing answers
        values = {**paths, "out": str(out), "tmp": str(tmp_path), "port": str(port)}
        argv = [part.format(**values) for part in case.argv.split()]
        result = runner.invoke(app, argv, env=case.env)

    assert result.exit_code == 2, (argv, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), (argv, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (argv, result.stderr)
    assert lines[0].startswith("error: "), lines[0]
    for name in case.names:
        assert name.format(**values) in lines[0], (name, lines[0])
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    after = _files(inputs["root"])
    assert sorted(after) == sorted(before), "files were added or removed among the inputs"
    # Only a lock's owner file may be rewritten (the lock is taken before a resume is checked).
    changed = [name for name in after if after[name] != before[name]]
    assert all(name.endswith(".owner") for name in changed), changed
    reliability.bad_input()


def test_the_table_covers_every_command_that_takes_input() -> None:
    commands = {case.argv.split()[0] for case in CASES}
    assert commands >= {"search", "results", "export", "benchmark", "preview", "report",
                        "check", "show"}
    assert len({case.id for case in CASES}) == len(CASES)


# --- --amp on the CPU: it works on CUDA only, and says so -----------------------------------


def test_amp_on_the_cpu_says_in_one_line_that_it_is_ignored(inputs: dict[str, Any]) -> None:
    # The inputs' study was searched with --amp --device cpu: it trained, and said so once.
    lines = [line for line in inputs["search_stderr"].splitlines() if line.strip()]
    assert lines == [AMP_LINE + " (training runs in float32)"]


@pytest.mark.parametrize(("command", "flags", "said"), [
    ("search", ["--amp", "--device", "cpu"], True),
    ("search", ["--amp", "--device", "auto"], None),  # said where no GPU is visible
    ("search", ["--amp", "--device", "cpu", "--engine", "ray"], True),
    ("search", ["--amp", "--device", "auto", "--engine", "ray"], False),  # the cluster's GPUs
    ("search", ["--no-amp", "--device", "cpu"], False),
    ("search", ["--device", "cpu"], False),
    ("benchmark", ["--amp", "--device", "cpu"], True),
    ("benchmark", ["--device", "cpu"], False),
])
def test_amp_is_never_ignored_silently(command: str, flags: list[str], said: bool | None,
                                       monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    import torch

    def stop(*args: Any, **kwargs: Any) -> None:  # the training itself is not this test's
        raise UserError("stopped by the test")

    monkeypatch.setattr(api, command, stop)
    given = ["--policy", str(tmp_path / "p.yaml")] if command == "benchmark" else []
    result = runner.invoke(app, [command, *given, "--out", str(tmp_path / "o"), *flags])
    assert result.exit_code == 2 and "error: stopped by the test" in result.stderr
    expected = not torch.cuda.is_available() if said is None else said
    assert (AMP_LINE in result.stderr) is expected, result.stderr
