"""The methods comparison: every search method side by side on one protocol, for one dataset.

Runs what benchmarks/methods_protocol.yaml fixes, for ``--dataset NAME``:

  1. every method (random, TPE, TPE with successive halving, PBT, the RandAugment space,
     density matching) at both budgets (about 3 and about 10 full trainings) with each search
     seed, on the dataset generated with the protocol's seed (train and val);
  2. every found policy and every standard contender trained with each evaluation seed on the
     whole training split and scored on that data's test split;
  3. ``benchmarks/results/methods_<dataset>_v<version>.md`` and ``.png``: per method and budget
     Δm% (mean ± std over the searches), the Holm-corrected paired difference to the best
     standard recipe, the search cost in full trainings and CPU-hours, wall time; the
     non-inferiority test of density matching; the targets met or not.

Resumable in chunks (``--minutes``, 150 by default): every finished search and every finished
run is written under ``benchmarks/methods_state/v<version>-<dataset>/`` (small JSON files
meant to be committed, so that a later session on a fresh machine goes on where this one
stopped); a search cut short is started again from its beginning (a search is deterministic
on the CPU). The table is written once nothing is missing. It refuses to start unless the
protocol and its spaces are committed, and every chunk must run on the CPU model the run
started on (contenders are compared paired by seed). Before its first training it enters its
row in benchmarks/ledger.md.

    .venv/bin/python benchmarks/methods.py --dataset multidigits
    .venv/bin/python benchmarks/methods.py --dataset scenes --minutes 140
    .venv/bin/python benchmarks/methods.py --smoke-test   # tiny, in a temporary folder
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from _ledger import enter_ledger, finish_ledger, git  # benchmarks/_ledger.py, beside this
from _machine import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTOCOL = HERE / "methods_protocol.yaml"
LEDGER = HERE / "ledger.md"
RETRAINING = ("random", "tpe", "tpe_halving", "pbt", "randaugment")
METHOD_NAMES = {"random": "random search", "tpe": "TPE", "tpe_halving":
                "TPE + successive halving", "pbt": "PBT", "randaugment": "RandAugment (N, M)",
                "density": "density matching"}


def _refuse(message: str) -> None:
    print(f"methods.py: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True)
class Cell:
    """One search: a method at a budget with a search seed."""

    method: str
    budget: str  # small or large
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.budget}-s{self.seed}"


# --- the protocol ---------------------------------------------------------------------------------


def load_protocol(path: Path, smoke: bool) -> dict:
    """The protocol; unless ``smoke``, refused while it or its spaces have uncommitted changes
    or it is not frozen."""
    protocol = yaml.safe_load(path.read_text())
    if not smoke:
        if protocol.get("status") != "frozen":
            _refuse(f"{path.name}: status is {protocol.get('status')!r}; the comparison needs "
                    "the protocol frozen and committed first")
        files = [str(path), *(str(ROOT / d["space"]) for d in protocol["datasets"].values())]
        dirty = git("status", "--porcelain", "--", *files)
        if dirty:
            _refuse(f"uncommitted changes to the protocol or its spaces:\n{dirty}")
    return protocol


def protocol_hash(protocol_path: Path, protocol: dict) -> str:
    """sha256 over the protocol file and its spaces: recorded when a run starts, checked by
    every later chunk."""
    digest = hashlib.sha256(protocol_path.read_bytes())
    for entry in protocol["datasets"].values():
        digest.update((ROOT / entry["space"]).read_bytes())
    return digest.hexdigest()


def cells(protocol: dict, smoke: bool) -> list[Cell]:
    """Every search, small budgets first (their results are usable earliest)."""
    seeds = protocol["search"]["seeds"][:1] if smoke else protocol["search"]["seeds"]
    budgets = ("small", "large")
    return [Cell(m, b, s) for b in budgets for s in seeds for m in protocol["methods"]]


def method_space(protocol: dict, dataset: str, cell: Cell, folder: Path, smoke: bool) -> Path:
    """The space ``cell``'s method searches: the dataset's space with the protocol's generator
    seed, and the method's own pruner or structure."""
    entry = protocol["datasets"][dataset]
    data = yaml.safe_load((ROOT / entry["space"]).read_text())
    data["dataset_options"] = {**data["dataset_options"], "seed": entry["generator_seed"]}
    spec = protocol["methods"][cell.method]
    if cell.method == "tpe_halving":
        pruner = dict(spec["pruner"])
        share = pruner.pop("min_resource_share")
        data["pruner"] = {**pruner,
                          "min_resource": max(1, round(data["budget"]["epochs"] * share))}
    if cell.method == "randaugment":
        bundled = yaml.safe_load((ROOT / "search_spaces" / "randaugment.yaml").read_text())
        keep = ("dataset", "dataset_options", "base", "reference", "budget", "sampler",
                "pruner", "weights")
        data = {**bundled, **{k: data[k] for k in keep}, "adapt": False}
    data["name"] = f"methods_{dataset}_{cell.method}"
    data["description"] = f"methods comparison: {cell.method} on {dataset}"
    if smoke:
        data["dataset_options"].update(n_train=32, n_val=16, n_test=16)
        data["budget"] = {**data["budget"], "epochs": 3, "image_size": 32}
        if data.get("pruner", {}).get("name") == "successive_halving":
            data["pruner"]["min_resource"] = 1
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cell.method}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def search_arguments(protocol: dict, dataset: str, cell: Cell, smoke: bool) -> dict[str, Any]:
    """``api.search``'s keyword arguments for ``cell`` (beside space, out and seed)."""
    spec = protocol["methods"][cell.method]
    common = {"device": protocol["search"]["device"], "threads": protocol["search"]["threads"],
              "finalists": protocol["search"]["finalists"], "report": False}
    if cell.method == "density":
        budget = spec[cell.budget]
        candidates = 2 if smoke else budget["candidates"][dataset]
        return {**common, "method": "density", "folds": 2 if smoke else budget["folds"],
                "trials": candidates, "keep": min(budget["keep"], candidates), "copies": 5,
                "heldout": 0.4}
    trials = spec["trials"][cell.budget]
    if smoke:
        trials = 2 if cell.method != "pbt" else 3
    if cell.method == "pbt":
        return {**common, "engine": "ray", "scheduler": "pbt", "trials": trials, "workers": 1,
                "cpus_per_trial": float(protocol["search"]["threads"])}
    method = "random" if cell.method == "random" else "tpe"
    return {**common, "method": method, "trials": trials}


# --- searches -------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def policy_key(policy: Any) -> str:
    """A policy's identity without its provenance: identical policies train once per seed."""
    data = policy.to_dict()
    data.pop("provenance", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def run_search(protocol: dict, dataset: str, cell: Cell, work: Path, smoke: bool) -> dict:
    """Search ``cell`` from its beginning and return its record: the exported policy, its cost
    in full trainings (everything counted), wall seconds and CPU-hours."""
    from policysearch import api
    from policysearch.augment import load_policy
    from policysearch.records import search_cost

    out = work / "searches" / cell.name
    if out.exists():  # cut short by the end of a chunk: start again, deterministically
        shutil.rmtree(out)
    space = method_space(protocol, dataset, cell, work / "spaces", smoke)
    kwargs = search_arguments(protocol, dataset, cell, smoke)
    print(f"search {cell.name}: {json.dumps(kwargs, sort_keys=True)}", flush=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    start = time.monotonic()
    outcome = api.search(space, out=out, seed=cell.seed, **kwargs)
    wall = time.monotonic() - start
    policy = load_policy(out / "best_policy.yaml")
    epochs = yaml.safe_load(space.read_text())["budget"]["epochs"]
    if cell.method == "density":
        cost = dict(outcome.cost or {})
        full, trial_epochs = cost.get("full_trainings"), None
    else:
        spent = search_cost(api.records(out))
        trial_epochs = spent.trial_epochs
        full = trial_epochs / epochs
    threads = protocol["search"]["threads"]
    return {"cell": cell.name, "method": cell.method, "budget": cell.budget, "seed": cell.seed,
            "policy": policy.to_dict(), "policy_key": policy_key(policy),
            "full_trainings": full, "trial_epochs": trial_epochs, "wall_seconds": wall,
            "cpu_hours": wall * threads / 3600, "threads": threads,
            "density_cost": outcome.cost if cell.method == "density" else None,
            "started": started,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


# --- evaluation runs ------------------------------------------------------------------------------


def contender_policies(protocol: dict, dataset: str, tasks: dict[str, str]) -> dict[str, Any]:
    from policysearch.search.lifecycle import reference_policy

    return {name: reference_policy(name, tasks)
            for name in protocol["datasets"][dataset]["contenders"]}


def train_run(policy: Any, seed: int, dataset: Any, budget: Any, threads: int,
              split: str = "test") -> dict:
    """Train ``policy`` on the whole training split on the CPU and score ``split``."""
    from policysearch.training import train_policy

    result = train_policy(policy, dataset, budget, seed=seed, device="cpu", threads=threads,
                          eval_split=split)
    return {"metrics": result.metrics, "seconds": round(result.seconds, 3),
            "epochs": result.epochs}


# --- the table ------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def analyse(protocol: dict, searches: dict[str, dict], runs: dict[tuple[str, int], dict],
            contenders: list[str], reference: str, info: Any, eval_seeds: list[int]
            ) -> dict[str, Any]:
    """Δm% per run against the reference of its seed; per method and budget the cell values
    (mean over its searches at each seed), the paired test against the best standard recipe
    (Holm over the cells), the non-inferiority test and the targets."""
    from scipy import stats

    from policysearch.evaluation.benchmark import holm, paired_test
    from policysearch.records import delta_m

    def dm(key: str, seed: int) -> float:
        value, _ = delta_m(runs[(key, seed)]["metrics"], runs[(reference, seed)]["metrics"],
                           info, None)
        return value

    recipes = {name: [dm(name, s) for s in eval_seeds] for name in contenders}
    best = max(recipes, key=lambda n: statistics.fmean(recipes[n]))
    rows = []
    for method in protocol["methods"]:
        for budget in ("small", "large"):
            own = [r for r in searches.values() if r["method"] == method
                   and r["budget"] == budget]
            if not own:
                continue
            per_search = {r["seed"]: [dm(r["policy_key"], s) for s in eval_seeds] for r in own}
            values = [statistics.fmean(v[i] for v in per_search.values())
                      for i in range(len(eval_seeds))]
            means = [statistics.fmean(v) for v in per_search.values()]
            test = paired_test(values, recipes[best])
            rows.append({
                "method": method, "budget": budget, "searches": len(own), "values": values,
                "delta_m": statistics.fmean(values), "search_mean_std": _mean_std(means),
                "per_search": means, "diff": test["diff"], "ci": (test["ci_low"],
                                                                 test["ci_high"]),
                "p": test["p"],
                "cost": _mean_std([r["full_trainings"] for r in own]),
                "cpu_hours": statistics.fmean(r["cpu_hours"] for r in own),
                "wall_minutes": statistics.fmean(r["wall_seconds"] for r in own) / 60})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
    result: dict[str, Any] = {"recipes": {n: _mean_std(v) for n, v in recipes.items()},
                              "best": best, "rows": rows}
    cell = {(r["method"], r["budget"]): r for r in rows}
    large = [cell[(m, "large")] for m in RETRAINING if (m, "large") in cell]
    density = cell.get(("density", "small"))
    if density is not None and large:
        rival = max(large, key=lambda r: r["delta_m"])
        diffs = [a - b for a, b in zip(density["values"], rival["values"], strict=True)]
        mean = statistics.fmean(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
        bound = (mean - float(stats.t.ppf(0.95, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
                 if len(diffs) > 1 else math.nan)
        delta = float(protocol["statistics"]["non_inferiority"]["delta"])
        result["non_inferiority"] = {"rival": rival["method"], "diff": mean, "bound": bound,
                                     "delta": delta, "met": bool(bound > -delta)}
    winner = max(rows, key=lambda r: r["delta_m"]) if rows else None
    result["winner"] = winner
    result["best_beats_recipe"] = bool(winner is not None and winner["diff"] > 0
                                       and winner["p_holm"] < 0.05)
    return result


def _num(value: float, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _p(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.2g}"


def to_markdown(result: dict[str, Any], *, title: str, header: list[str],
                searches: dict[str, dict], png: str) -> str:
    rows = result["rows"]
    best = result["best"]
    lines = [title, "", *header, "", f"![Δm% against search cost]({png})", "",
             f"Best standard recipe on this evaluation split: `{best}` (Δm% "
             f"{_num(result['recipes'][best][0])}).", "",
             "| method | budget | Δm% (mean ± std over searches) | "
             "method − best recipe [95% interval] "
             "| p (Holm) | cost (full trainings) | CPU-hours | wall (min) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mean, sd = r["search_mean_std"]
        cost, cost_sd = r["cost"]
        lines.append(
            f"| {METHOD_NAMES[r['method']]} | {r['budget']} | {_num(mean)} ± "
            f"{f'{sd:.2f}' if math.isfinite(sd) else '–'} | {_num(r['diff'])} "
            f"[{_num(r['ci'][0])}, {_num(r['ci'][1])}] | {_p(r['p_holm'])} | "
            f"{cost:.2f}" + (f" ± {cost_sd:.2f}" if math.isfinite(cost_sd) and cost_sd > 0.005
                             else "") + f" | {r['cpu_hours']:.2f} | {r['wall_minutes']:.1f} |")
    lines += ["", "Standard recipes (Δm% mean ± std over the evaluation seeds):", "",
              "| recipe | Δm% |", "|---|---:|"]
    for name, (mean, sd) in sorted(result["recipes"].items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| `{name}` | {_num(mean)} ± {sd:.2f} |")
    ni = result.get("non_inferiority")
    lines += ["", "## Targets", ""]
    if ni is not None:
        lines.append(
            f"- Density matching at the small budget against the best retraining method at the "
            f"large budget ({METHOD_NAMES[ni['rival']]}): difference {_num(ni['diff'])} Δm% "
            f"points, one-sided 95% lower bound {_num(ni['bound'])}, margin −{ni['delta']:g}: "
            + ("**non-inferior**." if ni["met"] else "**non-inferiority not shown**."))
    winner = result["winner"]
    if winner is not None:
        lines.append(
            f"- The best method ({METHOD_NAMES[winner['method']]}, {winner['budget']} budget) "
            f"against `{best}`: {_num(winner['diff'])} [{_num(winner['ci'][0])}, "
            f"{_num(winner['ci'][1])}], Holm p = {_p(winner['p_holm'])}: "
            + ("**beats it**." if result["best_beats_recipe"] else "**does not beat it**."))
    lines += ["", "## Every search", "",
              "| search | Δm% (mean over seeds) | cost (full trainings) | wall (min) | policy |",
              "|---|---:|---:|---:|---|"]
    per_search = {(r["method"], r["budget"]): r for r in rows}
    for name, record in sorted(searches.items()):
        row = per_search.get((record["method"], record["budget"]))
        seeds = sorted(s["seed"] for s in searches.values() if s["method"] == record["method"]
                       and s["budget"] == record["budget"])
        value = row["per_search"][seeds.index(record["seed"])] if row else math.nan
        lines.append(f"| {name} | {_num(value)} | {record['full_trainings']:.2f} | "
                     f"{record['wall_seconds'] / 60:.1f} | `{record['policy_key']}` |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, method in enumerate(METHOD_NAMES):
        own = [r for r in result["rows"] if r["method"] == method]
        if not own:
            continue
        xs = [r["cost"][0] * (1 + 0.012 * (i - 2.5)) for r in own]  # apart where costs tie
        ys = [r["delta_m"] for r in own]
        errs = []
        for r in own:
            v = r["values"]
            errs.append(float(stats.t.ppf(0.975, len(v) - 1)) * statistics.stdev(v)
                        / math.sqrt(len(v)) if len(v) > 1 else 0.0)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=METHOD_NAMES[method],
                    color=f"C{i}")
    best = result["best"]
    ax.axhline(result["recipes"][best][0], color="grey", linestyle="--",
               label=f"best recipe ({best})")
    ax.set_xlabel("search cost (full trainings; methods set slightly apart)")
    ax.set_ylabel("Δm% on the evaluation split (95% interval over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------------------


def _check_machine(state: Path, digest: str) -> str:
    model = cpu_model()
    path = state / "run.json"
    if path.exists():
        started = json.loads(path.read_text())
        if started["cpu_model"] != model:
            _refuse(f"this run started on {started['cpu_model']!r}, this machine is {model!r}: "
                    f"runs are compared paired by seed on one CPU type ({path})")
        if started["protocol_sha256"] != digest:
            _refuse(f"the protocol or its spaces changed since this run started ({path}); a "
                    "change needs a new protocol version")
    else:
        _write_json(path, {"cpu_model": model, "protocol_sha256": digest,
                           "commit": git("rev-parse", "--short", "HEAD")})
    return model


def _redone(path: Path, record: dict) -> None:
    """A search run again (``--redo``) must export the very policy it exported before (a
    search is deterministic on the CPU); its new timings replace the old, which are kept in
    the record's ``earlier`` list."""
    old = json.loads(path.read_text())
    if old["policy_key"] != record["policy_key"]:
        _refuse(f"{path.name}: run again, the search exported policy {record['policy_key']}, "
                f"not {old['policy_key']} as before: it is not deterministic here")
    record["earlier"] = [*old.pop("earlier", []), {k: old.get(k) for k in (
        "wall_seconds", "cpu_hours", "full_trainings", "started", "finished")}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="multidigits")
    parser.add_argument("--minutes", type=float, default=150.0,
                        help="stop starting new work after this many minutes (resume later)")
    parser.add_argument("--redo", help="search these finished searches again (names such as "
                        "tpe-large-s1, comma-separated), e.g. when other work shared the machine "
                        "while they ran: the same policy is required, the new timings replace "
                        "the old (kept under 'earlier')")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny sizes, one search seed and 2 evaluation seeds in a temporary "
                             "folder; no ledger row")
    parser.add_argument("--out", type=Path, help="Markdown file to write (a .png beside it)")
    parser.add_argument("--protocol", type=Path, default=PROTOCOL, help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.smoke_test
    protocol = load_protocol(args.protocol, smoke)
    if args.dataset not in protocol["datasets"]:
        _refuse(f"--dataset: {args.dataset!r} is not in {args.protocol.name} "
                f"({', '.join(protocol['datasets'])})")
    version = protocol["version"]
    tag = f"v{version}-{args.dataset}"
    temp = Path(tempfile.mkdtemp(prefix="methods-smoke-")) if smoke else None
    state = temp / "state" if temp else HERE / "methods_state" / tag
    work = temp / "work" if temp else ROOT / "runs" / "methods" / tag
    out = args.out or HERE / "results" / f"methods_{args.dataset}_v{version}.md"
    digest = protocol_hash(args.protocol, protocol)
    state.mkdir(parents=True, exist_ok=True)
    machine = _check_machine(state, digest)
    command = f"python benchmarks/methods.py --dataset {args.dataset}"
    key = f"methods comparison, methods protocol v{version}, `{args.dataset}`"
    if not smoke:
        seeds = protocol["evaluation"]["seeds"]
        enter_ledger(LEDGER, key, command, (
            f"`{protocol['datasets'][args.dataset]['space']}` with generator seed "
            f"{protocol['datasets'][args.dataset]['generator_seed']}; 6 methods × 2 budgets × "
            f"{len(protocol['search']['seeds'])} search seeds; the found policies and "
            f"{', '.join(protocol['datasets'][args.dataset]['contenders'])} trained with seeds "
            f"{', '.join(map(str, seeds))}, test split; protocol sha256 {digest[:12]}"),
            f"{machine}, 2 CPU threads")
    deadline = time.monotonic() + args.minutes * 60

    searches: dict[str, dict] = {}
    redo = set(args.redo.split(",")) if args.redo else set()
    for cell in cells(protocol, smoke):
        path = state / "searches" / f"{cell.name}.json"
        if path.exists() and cell.name not in redo:
            searches[cell.name] = json.loads(path.read_text())
            continue
        if time.monotonic() > deadline:
            break
        small = searches.get(Cell(cell.method, "small", cell.seed).name)
        if smoke and cell.method == "pbt" and small is not None:
            # A smoke test's budgets are the same size: one PBT search (a Ray start) is enough.
            record = small
        else:
            record = run_search(protocol, args.dataset, cell, work, smoke)
        if path.exists():
            _redone(path, record)
        _write_json(path, record)
        searches[cell.name] = record
    missing = [c.name for c in cells(protocol, smoke) if c.name not in searches]
    if missing:
        print(f"stopped after {args.minutes:g} minutes: {len(missing)} searches to go "
              f"({missing[0]} next); run the same command again", flush=True)
        return

    from policysearch.augment import Policy
    from policysearch.config import load_space
    from policysearch.records import metrics_info_from_tasks
    from policysearch.space_adapt import load_adapted
    from policysearch.tasks import make_task

    space = load_space(method_space(protocol, args.dataset, Cell("tpe", "small", 0),
                                    work / "spaces", smoke))
    adapted, dataset = load_adapted(space)
    space = adapted.space
    tasks = {t.name: t.kind for t in dataset.tasks}
    info = metrics_info_from_tasks([make_task(spec) for spec in dataset.tasks])
    recipes = contender_policies(protocol, args.dataset, tasks)
    reference = space.reference
    if reference not in recipes:
        _refuse(f"the space's reference {reference!r} is not among {args.dataset}'s contenders")
    policies: dict[str, Any] = dict(recipes)
    for record in searches.values():
        policies.setdefault(record["policy_key"], Policy.from_dict(record["policy"]))
    eval_seeds = protocol["evaluation"]["seeds"][:2] if smoke else protocol["evaluation"]["seeds"]
    runs: dict[tuple[str, int], dict] = {}
    threads = protocol["search"]["threads"]
    for seed in eval_seeds:  # every contender of a seed before the next seed
        for key_, policy in policies.items():
            path = state / "runs" / f"{key_.replace('+', '_')}-seed-{seed}.json"
            if path.exists():
                runs[(key_, seed)] = json.loads(path.read_text())
                continue
            if time.monotonic() > deadline:
                continue
            print(f"run {key_}, seed {seed}", flush=True)
            data = {"policy": key_, "seed": seed,
                    **train_run(policy, seed, dataset, space.budget, threads)}
            _write_json(path, data)
            runs[(key_, seed)] = data
    todo = len(policies) * len(eval_seeds) - len(runs)
    if todo:
        print(f"stopped after {args.minutes:g} minutes: {todo} evaluation runs to go; run the "
              "same command again", flush=True)
        return

    result = analyse(protocol, searches, runs, list(recipes), reference, info, eval_seeds)
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"# Search methods side by side: `{args.dataset}` (methods protocol v{version})"
             + (" — smoke test: tiny sizes, not a result" if smoke else ""))
    header = [
        f"Produced by `{command}{' --smoke-test' if smoke else ''}` at commit "
        f"`{git('rev-parse', '--short', 'HEAD')}` on {machine}, "
        f"{threads} CPU threads, no GPU; protocol `benchmarks/methods_protocol.yaml` "
        f"(sha256 {digest[:12]}). Searches on train/val of generator seed "
        f"{protocol['datasets'][args.dataset]['generator_seed']}; every found policy and "
        f"recipe trained with seeds {', '.join(map(str, eval_seeds))} and scored on the test "
        f"split; Δm% against `{reference}` of the same seed. "
        f"Each cell: {len(cells(protocol, smoke)) // (2 * len(protocol['methods']))} "
        "searches; its value at a seed is the mean over its searches' policies; the paired "
        "t-test against the best recipe is over the seeds, Holm-corrected across the cells. "
        "CPU-hours: wall time × threads."]
    out.write_text(to_markdown(result, title=title, header=header, searches=searches,
                               png=png.name))
    plot(result, png, f"{args.dataset}: Δm% against search cost")
    if not smoke:
        ni = result.get("non_inferiority") or {}
        finish_ledger(LEDGER, key, (
            f"density at ~3 non-inferior to {ni.get('rival')} at ~10: "
            f"{'yes' if ni.get('met') else 'no'} (lower bound {_num(ni.get('bound', math.nan))}, "
            f"δ {ni.get('delta')}); best method beats `{result['best']}`: "
            f"{'yes' if result['best_beats_recipe'] else 'no'} (`{out.relative_to(ROOT)}`)"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
