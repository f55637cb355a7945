"""The final run of the evidence protocol for one dataset: search, then score a fresh test split.

Runs what benchmarks/protocol.yaml fixes, for ``--dataset NAME`` and the protocol's version:

  1. the dataset's search space with its generator seed set to the protocol's ``final_seed``
     (train, validation and test splits that nothing has been generated with before), written
     to ``runs/finals/v<version>-<dataset>/space.yaml``;
  2. ``policysearch search`` on it: the protocol's trials, study seed and finalist race;
  3. ``policysearch benchmark`` of the exported policy against the dataset's contenders (and
     the ablations) with the protocol's seed count, on the test split;
  4. ``benchmarks/results/final_<dataset>_v<version>.md`` and ``.png``: the target met or not,
     the search cost with everything counted, the whole table.

It refuses to start unless the protocol is frozen and committed (no uncommitted change to it
or to the spaces). Before the first training it enters its row in benchmarks/ledger.md
(outcome "started"); the row's outcome is filled in when the run ends, before anything else
reads it. A protocol version and dataset get one final run: a finished one is never run again
(a retry needs a new protocol version and a new test split). Both steps resume: running the
same command again continues the search's journal and reuses the benchmark's stored runs, so
a run is done in chunks (each command at most about 150 minutes). Every chunk must run on the
CPU model the run started on (``runs/finals/.../machine.json``): numbers differ between CPU
types, and contenders are compared paired by seed.

    .venv/bin/python benchmarks/finals.py --dataset shapes
    .venv/bin/python benchmarks/finals.py --dataset shapes --smoke-test   # tiny, no ledger
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _ledger import enter_ledger, finish_ledger  # benchmarks/_ledger.py, beside this script
from _ledger import git as _git
from _machine import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTOCOL = HERE / "protocol.yaml"
LEDGER = HERE / "ledger.md"
VERSIONS = HERE / "protocol_versions.yaml"
STEP_TIMEOUT = 12 * 3600  # a whole step, across a chunk; a session ends long before


def _refuse(message: str) -> None:
    print(f"finals.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def _contenders(protocol: dict, entry: dict) -> list[str]:
    return list(entry.get("contenders") or protocol["contenders"])


def _final_space(protocol: dict, dataset: str, folder: Path, smoke: bool) -> Path:
    entry = protocol["datasets"][dataset]
    data = yaml.safe_load((ROOT / entry["space"]).read_text())
    data["name"] = f"final_{dataset}_v{protocol['version']}"
    data["description"] = (f"final run of protocol version {protocol['version']} on "
                           f"{dataset}: {entry['space']} with generator seed "
                           f"{entry['final_seed']}")
    options = dict(data.get("dataset_options") or {})
    options["seed"] = entry["final_seed"]
    if smoke:
        options.update(n_train=32, n_val=16, n_test=16)
        data["budget"] = {**data["budget"], "epochs": 2, "image_size": 32}
        if data.get("pruner", {}).get("name") not in (None, "none"):
            data["pruner"] = {"name": "none"}
    data["dataset_options"] = options
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _short(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _run(args: list[str]) -> None:
    print("$ policysearch " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "policysearch", *args], check=True, cwd=ROOT,
                   timeout=STEP_TIMEOUT)


def _ledger_key(version: int, dataset: str) -> str:
    return f"final run, protocol v{version}, `{dataset}`"


def _machine(work: Path) -> str:
    """The CPU model this run started on; a chunk on another CPU type is refused."""
    model = cpu_model()
    path = work / "machine.json"
    if path.exists():
        started = json.loads(path.read_text())["cpu_model"]
        if started != model:
            _refuse(f"this run started on {started!r}, this machine is {model!r}: contenders "
                    f"are compared paired by seed on one CPU type ({path})")
    else:
        path.write_text(json.dumps({"cpu_model": model}) + "\n")
    return model


def headline(report: dict, cap: float) -> tuple[bool, str]:
    """Whether the target is met (the searched policy beats the best standard contender by
    the table's Holm-corrected paired t-test, at a search cost within ``cap`` full trainings,
    finalist runs included), and the sentence that says so with the numbers."""
    from policysearch.evaluation.benchmark import ALPHA, WINS, contender_kind

    rows = {r["contender"]: r for r in report["summary"]}
    baselines = [r for r in report["summary"] if contender_kind(r["contender"]) == "baseline"]
    best = max(baselines, key=lambda r: r["delta_m"])
    cost = report["cost"] or {}
    full = cost.get("full_training_epochs") or 0
    spent = ((cost.get("trial_epochs", 0) + cost.get("rerun_epochs", 0)) / full) if full else None
    cheap = spent is not None and spent <= cap
    wins = best.get("verdict") == WINS
    met = wins and cheap
    searched = rows["searched"]
    return met, (
        f"**Target {'met' if met else 'not met'}.** The best standard contender on this test "
        f"split is `{best['contender']}` (Δm% {best['delta_m']:+.2f}); the searched policy "
        f"({searched['delta_m']:+.2f}) differs from it by {best['diff']:+.2f} Δm% points, 95% "
        f"interval [{best['ci_low']:+.2f}, {best['ci_high']:+.2f}], paired t-test p = "
        f"{best['p_value']:.3g}, Holm-corrected over the table p = {best['p_holm']:.3g} "
        f"(α = {ALPHA}): {best['verdict']}. Search cost with every trial, the reference and the "
        f"finalist runs: "
        + (f"{spent:.2f} full trainings (cap {cap:g})" if spent is not None else "unknown")
        + ".")


def changed_since_frozen(protocol: dict, path: Path = PROTOCOL) -> list[str]:
    """The files defining ``protocol`` (``path`` and the final spaces it names) whose sha256
    is not the one its version recorded in protocol_versions.yaml when it was frozen; every
    file when the version has no entry there."""
    files = {"benchmarks/protocol.yaml": path,
             **{d["space"]: ROOT / d["space"] for d in protocol["datasets"].values()}}
    entry = (yaml.safe_load(VERSIONS.read_text()) or {}).get(protocol["version"]) or {}
    recorded = entry.get("files") or {}
    return sorted(name for name in {*files, *recorded}
                  if name not in files or not files[name].is_file()
                  or hashlib.sha256(files[name].read_bytes()).hexdigest() != recorded.get(name))


def load_protocol(path: Path, dataset: str, smoke: bool) -> tuple[dict, dict]:
    """The protocol and a copy of ``dataset``'s entry. Refuses an unknown dataset and, unless
    ``smoke``, a draft protocol, uncommitted changes to it or to its spaces, or files that
    changed since its version was frozen."""
    protocol = yaml.safe_load(path.read_text())
    if dataset not in protocol["datasets"]:
        _refuse(f"--dataset: {dataset!r} is not in {path.name} "
                f"({', '.join(protocol['datasets'])})")
    entry = dict(protocol["datasets"][dataset])
    if not smoke:
        if protocol["status"] != "frozen":
            _refuse(f"{path.name}: status is {protocol['status']!r}; a final run "
                    "needs the protocol frozen and committed first")
        dirty = _git("status", "--porcelain", "--", str(path), str(HERE / "spaces"))
        if dirty:
            _refuse(f"uncommitted changes to the protocol or its spaces:\n{dirty}")
        changed = changed_since_frozen(protocol, path)
        if changed:
            _refuse(f"{', '.join(changed)}: changed since protocol v{protocol['version']} was "
                    f"frozen ({VERSIONS.name}); a change needs a new version and new test splits")
    elif entry["final_seed"] is None:
        entry["final_seed"] = 1_000_003  # any seed: the smoke test's data is throwaway
    return protocol, entry


def with_entry(protocol: dict, dataset: str, entry: dict) -> dict:
    """``protocol`` with ``dataset``'s entry replaced (the original is left as it is)."""
    return {**protocol, "datasets": {**protocol["datasets"], dataset: entry}}


def refuse_a_second_run(out: Path, version: int, dataset: str) -> None:
    if out.exists():
        _refuse(f"{_short(out)} exists: protocol v{version} has had this final run on "
                f"{dataset}; a retry needs a new protocol version and a new test split")


def configuration(entry: dict, search_block: dict, trials: int, finalists: int,
                  finalist_seeds: int, contenders: list[str], seeds: int) -> str:
    """The ledger's words for what a final run runs."""
    return (f"`{entry['space']}` with generator seed {entry['final_seed']}; search {trials} "
            f"trials, study seed {search_block['study_seed']}, {finalists} finalists × "
            f"{finalist_seeds} seeds; benchmark of {', '.join(contenders)} and the ablations, "
            f"{seeds} seeds from 1, test split")


def write_result(out: Path, *, title: str, command: str, where: str, key: str, entry: dict,
                 space: Path, search_cmd: list[str], bench_cmd: list[str], bench: Path,
                 cap: float) -> bool:
    """``out`` (and its .png) from the benchmark in ``bench``: the headline first, then how it
    was produced and the whole table. Returns whether the target was met."""
    import torch

    report = json.loads((bench / "benchmark.json").read_text())
    met, sentence = headline(report, cap)
    body = (bench / "benchmark.md").read_text().split("\n", 2)[2]  # without its title
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bench / "benchmark.png", png)
    lines = [
        title,
        "",
        sentence,
        "",
        f"Produced by `{command}` at commit `{_git('rev-parse', '--short', 'HEAD')}` on "
        f"{where}, torch {torch.__version__}; ledger: {key}. Space: `{entry['space']}` with "
        f"generator seed {entry['final_seed']} (`{_short(space)}`). It ran:",
        "",
        "```",
        "policysearch " + " ".join(search_cmd),
        "policysearch " + " ".join(bench_cmd),
        "```",
        "",
        f"![Δm% per contender]({png.name})",
        "",
        body.rstrip(),
        "",
    ]
    out.write_text("\n".join(lines))
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=False, default="shapes")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny sizes and 2 seeds in a temporary folder; no ledger row")
    parser.add_argument("--out", type=Path, help="Markdown file to write (a .png beside it)")
    parser.add_argument("--work", type=Path, help="folder of the search and benchmark runs")
    parser.add_argument("--protocol", type=Path, default=PROTOCOL, help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.smoke_test

    protocol, entry = load_protocol(args.protocol, args.dataset, smoke)
    version = protocol["version"]
    search_block = protocol["search"]
    seeds = 2 if smoke else protocol["seeds"]["count"]
    trials = 3 if smoke else search_block["trials"]
    finalists, finalist_seeds = ((1, 1) if smoke else
                                 (search_block["finalists"], search_block["finalist_seeds"]))
    contenders = _contenders(protocol, entry)
    work = args.work or (Path(tempfile.mkdtemp(prefix="finals-smoke-")) if smoke
                         else ROOT / "runs" / "finals" / f"v{version}-{args.dataset}")
    out = args.out or HERE / "results" / f"final_{args.dataset}_v{version}.md"
    work.mkdir(parents=True, exist_ok=True)
    if not smoke:
        refuse_a_second_run(out, version, args.dataset)
    machine = _machine(work)
    space = _final_space(with_entry(protocol, args.dataset, entry), args.dataset, work, smoke)
    if smoke:
        from policysearch.config import load_space

        reference = load_space(space).reference
        contenders = list(dict.fromkeys([contenders[0], reference]))
    search, bench = work / "search", work / "benchmark"
    search_cmd = ["search", "--space", _short(space), "--trials", str(trials),
                  "--finalists", str(finalists), "--finalist-seeds", str(finalist_seeds),
                  "--seed", str(search_block["study_seed"]), "--device", "cpu", "--threads", "2",
                  "--out", _short(search)]
    bench_cmd = ["benchmark", "--policy", _short(search / "best_policy.yaml"), "--search",
                 _short(search), "--baselines", ",".join(contenders), "--seeds", str(seeds),
                 "--seed", "1", "--device", "cpu", "--threads", "2", "--out", _short(bench)]
    command = f"python benchmarks/finals.py --dataset {args.dataset}"
    key = _ledger_key(version, args.dataset)
    if not smoke:
        enter_ledger(LEDGER, key, command, configuration(
            entry, search_block, trials, finalists, finalist_seeds, contenders, seeds),
            f"{machine}, 2 CPU threads")
    _run(search_cmd)
    _run(bench_cmd)

    met = write_result(
        out, title=f"# Final run, protocol version {version}: `{args.dataset}`"
        + (" (smoke test: tiny sizes, not a result)" if smoke else ""),
        command=command + (" --smoke-test" if smoke else ""),
        where=f"{machine}, 2 CPU threads, no GPU", key=key, entry=entry, space=space,
        search_cmd=search_cmd, bench_cmd=bench_cmd, bench=bench,
        cap=float(protocol["targets"]["search_cost_full_trainings"]))
    if not smoke:
        finish_ledger(LEDGER, key, f"**Target {'met' if met else 'not met'}** "
                       f"(`{_short(out)}`)")
    print(f"wrote {_short(out)} and {out.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
