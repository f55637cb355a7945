"""Transfer: does the ranking of policies found at the proxy fidelity hold at a higher one?

Runs what benchmarks/transfer_protocol.yaml fixes:

  ``--dev``  the development check (validation split only): the crop at the high fidelity with
             each candidate learning rate and at the proxy, one seed; writes
             ``benchmarks/results/transfer_dev.md``, which says which lr the protocol is to
             freeze and whether the high fidelity learns at it.
  (none)     the transfer run, once the protocol is frozen: every policy (the recipes and the
             found policies of the methods comparison) trained with each evaluation seed at
             both fidelities on the protocol's fresh data and scored on its test split; writes
             ``benchmarks/results/transfer_v<version>.md`` and ``.png``: Δm% per policy at both
             fidelities, Spearman's and Kendall's rank correlations with a bootstrap interval
             over the seeds, the found policies against the best recipe at each fidelity.

Resumable in chunks (``--minutes``, 150 by default): every finished training is written under
``benchmarks/transfer_state/v<version>/`` (small JSON files meant to be committed). It refuses
to start unless the protocol is committed, and every chunk must run on the CPU model the run
started on. Before its first test-split training it enters its row in benchmarks/ledger.md.

    .venv/bin/python benchmarks/transfer.py --dev
    .venv/bin/python benchmarks/transfer.py --minutes 140
    .venv/bin/python benchmarks/transfer.py --smoke-test   # tiny, in a temporary folder
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _ledger import enter_ledger, finish_ledger, git  # benchmarks/_ledger.py, beside this
from methods import _check_machine, _write_json, policy_key, train_run  # beside this

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTOCOL = HERE / "transfer_protocol.yaml"
LEDGER = HERE / "ledger.md"
FIDELITIES = ("proxy", "high")
BOOTSTRAP_DRAWS = 2000


def _refuse(message: str) -> None:
    print(f"transfer.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_protocol(path: Path, *, final: bool) -> dict:
    """The protocol; refused while it has uncommitted changes and, for the transfer run
    (``final``), unless it is frozen with the high fidelity's lr fixed."""
    protocol = yaml.safe_load(path.read_text())
    if git("status", "--porcelain", "--", str(path)):
        _refuse(f"{path.name} has uncommitted changes: commit it first")
    if final and (protocol.get("status") != "frozen"
                  or protocol["fidelities"]["high"].get("lr") is None):
        _refuse(f"{path.name}: the transfer run needs the protocol frozen with "
                "fidelities.high.lr fixed (run --dev first)")
    return protocol


def protocol_hash(path: Path, protocol: dict) -> str:
    import hashlib

    digest = hashlib.sha256(path.read_bytes())
    digest.update((ROOT / protocol["dataset"]["space"]).read_bytes())
    return digest.hexdigest()


def fidelity_space(protocol: dict, fidelity: str, folder: Path, *, lr: float | None = None,
                   smoke: bool = False) -> Path:
    """The space file of ``fidelity``: the protocol's space with its generator seed and the
    fidelity's budget fields (``lr`` overrides the high fidelity's)."""
    entry = protocol["dataset"]
    data = yaml.safe_load((ROOT / entry["space"]).read_text())
    data["dataset_options"] = {**data["dataset_options"], "seed": entry["generator_seed"]}
    changes = {k: v for k, v in protocol["fidelities"][fidelity].items() if v is not None}
    if lr is not None:
        changes["lr"] = lr
    if smoke:
        data["dataset_options"].update(n_train=32, n_val=16, n_test=16)
        changes.update(epochs=2, image_size=32)
    data["budget"] = {**data["budget"], **changes}
    data["name"] = f"transfer_{entry['name']}_{fidelity}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fidelity}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_fidelity(path: Path) -> tuple[Any, Any, dict]:
    """(budget, dataset, metrics info) of a fidelity's space file."""
    from policysearch.config import load_space
    from policysearch.records import metrics_info_from_tasks
    from policysearch.space_adapt import load_adapted
    from policysearch.tasks import make_task

    adapted, dataset = load_adapted(load_space(path))
    info = metrics_info_from_tasks([make_task(spec) for spec in dataset.tasks])
    return adapted.space.budget, dataset, info


def transfer_policies(protocol: dict, tasks: dict[str, str], smoke: bool) -> dict[str, Any]:
    """The recipes by name and the found policies by key (read from the methods comparison's
    committed searches, each checked against its key)."""
    from policysearch.augment import Policy
    from policysearch.search.lifecycle import reference_policy

    recipes = protocol["policies"]["recipes"]
    found = list(protocol["policies"]["found"])
    if smoke:
        recipes, found = ["none", "crop"], found[:1]
    policies: dict[str, Any] = {name: reference_policy(name, tasks) for name in recipes}
    folder = HERE / "methods_state" / f"v1-{protocol['dataset']['name']}" / "searches"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    for key in found:
        match = next((r for r in records if r["policy_key"] == key), None)
        if match is None:
            _refuse(f"found policy {key}: no search under {folder} exported it")
        policy = Policy.from_dict(match["policy"])
        if policy_key(policy) != key:
            _refuse(f"found policy {key}: the stored policy's key is {policy_key(policy)}")
        policies[key] = policy
    return policies


def primary_mean(metrics: dict, info: dict) -> float:
    """The mean over tasks of each task's primary metric (how well the network learned)."""
    values = [metrics[task][name] for task, names in info.items()
              for name, spec in names.items() if spec["primary"] and name in metrics.get(task, {})]
    return statistics.fmean(values)


# --- the development check ------------------------------------------------------------------------


def development(protocol: dict, state: Path, work: Path, out: Path, threads: int,
                smoke: bool, command: str) -> None:
    """Train the crop at the proxy and at the high fidelity with each candidate lr on the
    validation split; write which lr to freeze and whether the high fidelity learns there."""
    from policysearch.models.encoders import make_encoder

    dev = protocol["development"]
    rows = []
    candidates = [None] + list(dev["lr"])  # None: the proxy
    for lr in candidates:
        fidelity = "proxy" if lr is None else "high"
        path = fidelity_space(protocol, fidelity, work / "spaces", lr=lr, smoke=smoke)
        budget, dataset, info = load_fidelity(path)
        tasks = {t.name: t.kind for t in dataset.tasks}
        name = f"{fidelity}" + ("" if lr is None else f"-lr-{lr:g}")
        record_path = state / "dev" / f"{name}.json"
        if record_path.exists():
            record = json.loads(record_path.read_text())
        else:
            from policysearch.search.lifecycle import reference_policy

            print(f"dev run {name}", flush=True)
            record = {"name": name, "fidelity": fidelity, "lr": budget.lr,
                      **train_run(reference_policy(dev["policy"], tasks), dev["seed"], dataset,
                                  budget, threads, split=dev["split"])}
            _write_json(record_path, record)
        encoder = make_encoder(budget.encoder)
        params = sum(p.numel() for p in encoder.parameters())
        del encoder
        rows.append({**record, "primary": primary_mean(record["metrics"], info),
                     "encoder": budget.encoder, "image_size": budget.image_size,
                     "epochs": budget.epochs, "params": params})
    proxy, highs = rows[0], rows[1:]
    chosen = max(highs, key=lambda r: r["primary"])
    learns = chosen["primary"] >= proxy["primary"]
    lines = ["# Transfer: development check" + (" — smoke test: tiny sizes, not a result"
                                                 if smoke else ""), "",
             f"Produced by `{command}` at commit `{git('rev-parse', '--short', 'HEAD')}` on "
             f"{_machine()}, {threads} CPU threads, no GPU. `{dev['policy']}` trained with seed "
             f"{dev['seed']} on the training split of `{protocol['dataset']['name']}` generator "
             f"seed {protocol['dataset']['generator_seed']} (benchmarks/transfer_protocol.yaml) "
             f"and scored on its **{dev['split']}** split; its test split is not read.", "",
             "| fidelity | encoder (parameters) | image | epochs | lr | primary metrics "
             "(mean over tasks) | per task | seconds |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        per_task = ", ".join(
            f"{task} {name} {r['metrics'][task][name]:.3f}" for task, names in
            load_info(r) for name in names)
        lines.append(f"| {r['fidelity']} | {r['encoder']} ({r['params'] / 1e6:.2f} M) | "
                     f"{r['image_size']} | {r['epochs']} | {r['lr']:g} | {r['primary']:.3f} | "
                     f"{per_task} | {r['seconds']:.0f} |")
    lines += ["", f"Learning rate to freeze: **{chosen['lr']:g}** (the higher mean of the "
              "primary metrics). At it the high fidelity "
              + ("**learns**: it reaches at least the proxy's mean"
                 if learns else "**does not reach the proxy's mean**: revise the protocol")
              + f" ({chosen['primary']:.3f} against {proxy['primary']:.3f}).",
              "", f"One high-fidelity training took {chosen['seconds'] / 60:.1f} minutes; the "
              "transfer run trains each policy with each evaluation seed at both fidelities."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def load_info(record: dict) -> list[tuple[str, list[str]]]:
    """(task, metric names) of a run's metrics, in their stored order."""
    return [(task, list(values)) for task, values in record["metrics"].items()]


def _machine() -> str:
    from _machine import cpu_model

    return cpu_model()


# --- the analysis ---------------------------------------------------------------------------------


def _interval(values: list[float]) -> tuple[float, float]:
    from scipy import stats

    if len(values) < 2:
        return (math.nan, math.nan)
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) \
        / math.sqrt(len(values))
    return (mean - half, mean + half)


def analyse(values: dict[str, dict[str, list[float]]], recipes: list[str], found: list[str],
            ) -> dict[str, Any]:
    """``values[fidelity][policy]``: Δm% per evaluation seed. Rank correlations of the policies'
    means between the fidelities (Spearman one-sided p, Kendall, a bootstrap interval over the
    seeds), per-policy intervals, the found policies against the best recipe at each fidelity
    (Holm within a fidelity) and whether the proxy's best is the high fidelity's best."""
    from scipy import stats

    from policysearch.evaluation.benchmark import holm, paired_test

    names = [*recipes, *found]
    means = {f: [statistics.fmean(values[f][n]) for n in names] for f in FIDELITIES}
    rho = stats.spearmanr(means["proxy"], means["high"], alternative="greater")
    tau = stats.kendalltau(means["proxy"], means["high"])
    seeds = len(values["proxy"][names[0]])
    rng = random.Random(0)
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        pick = [rng.randrange(seeds) for _ in range(seeds)]
        a = [statistics.fmean(values["proxy"][n][i] for i in pick) for n in names]
        b = [statistics.fmean(values["high"][n][i] for i in pick) for n in names]
        r = stats.spearmanr(a, b).statistic
        if math.isfinite(r):
            draws.append(float(r))
    draws.sort()
    boot = ((draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1])
            if draws else (math.nan, math.nan))
    per_policy = {}
    for n in names:
        row: dict[str, Any] = {}
        for f in FIDELITIES:
            row[f] = (statistics.fmean(values[f][n]), *_interval(values[f][n]))
        row["shift"] = paired_test(values["high"][n], values["proxy"][n])
        per_policy[n] = row
    against: dict[str, Any] = {}
    for f in FIDELITIES:
        best = max(recipes, key=lambda n: statistics.fmean(values[f][n]))
        tests = {n: paired_test(values[f][n], values[f][best]) for n in found}
        for n, adjusted in zip(found, holm([t["p"] for t in tests.values()]), strict=True):
            tests[n]["p_holm"] = adjusted
        against[f] = {"best": best, "tests": tests}
    order = {f: sorted(names, key=lambda n: -statistics.fmean(values[f][n])) for f in FIDELITIES}
    top = order["proxy"][0]
    return {"names": names, "means": means, "spearman": float(rho.statistic),
            "spearman_p": float(rho.pvalue), "kendall": float(tau.statistic),
            "kendall_p": float(tau.pvalue), "bootstrap": boot, "per_policy": per_policy,
            "against": against, "order": order, "top": top,
            "top_rank_high": order["high"].index(top) + 1,
            "holds": bool(rho.statistic > 0 and rho.pvalue < 0.05)}


def _num(value: float, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _p(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.2g}"


def _label(name: str, recipes: list[str]) -> str:
    return f"`{name}`" if name in recipes else f"found `{name[:8]}`"


def to_markdown(result: dict[str, Any], *, title: str, header: list[str], recipes: list[str],
                found_from: dict[str, str], png: str, seconds: dict[str, float]) -> str:
    lines = [title, "", *header, "", f"![Δm% at the proxy against Δm% at the high fidelity]"
             f"({png})", "", "## Does the ranking hold?", "",
             f"- Spearman's ρ between the policies' mean Δm% at the two fidelities: "
             f"**{result['spearman']:+.2f}** (one-sided p = {_p(result['spearman_p'])}; 95% "
             f"bootstrap interval over the seeds [{_num(result['bootstrap'][0])}, "
             f"{_num(result['bootstrap'][1])}]); Kendall's τ {result['kendall']:+.2f} "
             f"(p = {_p(result['kendall_p'])}). The ranking "
             + ("**holds**." if result["holds"] else "**is not shown to hold**."),
             f"- The proxy's best policy, {_label(result['top'], recipes)}, ranks "
             f"**{result['top_rank_high']}** of {len(result['names'])} at the high fidelity "
             f"(whose best is {_label(result['order']['high'][0], recipes)}).", ""]
    lines += ["## Every policy", "",
              "| policy | Δm% proxy [95% interval] | rank | Δm% high [95% interval] | rank | "
              "high − proxy [95% interval] |", "|---|---:|---:|---:|---:|---:|"]
    for n in result["names"]:
        row = result["per_policy"][n]
        shift = row["shift"]
        cells = []
        for f in FIDELITIES:
            mean, low, high = row[f]
            cells.append(f"{_num(mean)} [{_num(low)}, {_num(high)}] | "
                         f"{result['order'][f].index(n) + 1}")
        lines.append(f"| {_label(n, recipes)} | {' | '.join(cells)} | {_num(shift['diff'])} "
                     f"[{_num(shift['ci_low'])}, {_num(shift['ci_high'])}] |")
    lines += ["", "## The found policies against the best recipe", "",
              "| policy | exported by | fidelity | best recipe | difference [95% interval] | "
              "p (Holm) |", "|---|---|---|---|---:|---:|"]
    for f in FIDELITIES:
        block = result["against"][f]
        for n, t in block["tests"].items():
            lines.append(f"| {_label(n, recipes)} | {found_from.get(n, '')} | {f} | "
                         f"`{block['best']}` | {_num(t['diff'])} [{_num(t['ci_low'])}, "
                         f"{_num(t['ci_high'])}] | {_p(t['p_holm'])} |")
    lines += ["", "Compute, CPU-hours (wall time × threads): " + "; ".join(
        f"{f} {seconds[f] / 3600:.2f}" for f in FIDELITIES) + "."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], recipes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, n in enumerate(result["names"]):
        row = result["per_policy"][n]
        x, xl, xh = row["proxy"]
        y, yl, yh = row["high"]
        xerr = [[x - xl], [xh - x]] if math.isfinite(xl) else None
        yerr = [[y - yl], [yh - y]] if math.isfinite(yl) else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, marker="o" if n in recipes else "s",
                    capsize=3, color=f"C{i % 10}", label=_label(n, recipes).replace("`", ""))
    lo = min(min(result["means"]["proxy"]), min(result["means"]["high"]))
    hi = max(max(result["means"]["proxy"]), max(result["means"]["high"]))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("Δm% at the proxy (95% interval over seeds)")
    ax.set_ylabel("Δm% at the high fidelity (95% interval over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true",
                        help="the development check on the validation split (before freezing)")
    parser.add_argument("--minutes", type=float, default=150.0,
                        help="stop starting new trainings after this many minutes (resume later)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny sizes, 3 policies and 2 seeds in a temporary folder; no "
                             "ledger row")
    parser.add_argument("--out", type=Path, help="Markdown file to write (a .png beside it)")
    args = parser.parse_args()
    smoke = args.smoke_test
    protocol = yaml.safe_load(PROTOCOL.read_text()) if smoke else load_protocol(
        PROTOCOL, final=not args.dev)
    if smoke and protocol["fidelities"]["high"].get("lr") is None:
        protocol["fidelities"]["high"]["lr"] = protocol["development"]["lr"][0]
    version = protocol["version"]
    temp = Path(tempfile.mkdtemp(prefix="transfer-smoke-")) if smoke else None
    state = temp / "state" if temp else HERE / "transfer_state" / f"v{version}"
    work = temp / "work" if temp else ROOT / "runs" / "transfer" / f"v{version}"
    threads = 2
    digest = protocol_hash(PROTOCOL, protocol)
    state.mkdir(parents=True, exist_ok=True)
    if args.dev:
        out = args.out or HERE / "results" / "transfer_dev.md"
        development(protocol, state, work, out, threads, smoke,
                    "python benchmarks/transfer.py --dev" + (" --smoke-test" if smoke else ""))
        return
    machine = _check_machine(state, digest)
    name = protocol["dataset"]["name"]
    out = args.out or HERE / "results" / f"transfer_v{version}.md"
    command = "python benchmarks/transfer.py"
    key = f"transfer, transfer protocol v{version}, `{name}`"
    seeds = protocol["evaluation"]["seeds"][:2] if smoke else protocol["evaluation"]["seeds"]
    loaded = {f: load_fidelity(fidelity_space(protocol, f, work / "spaces", smoke=smoke))
              for f in FIDELITIES}
    _, dataset, info = loaded["proxy"]
    tasks = {t.name: t.kind for t in dataset.tasks}
    policies = transfer_policies(protocol, tasks, smoke)
    recipes = [n for n in policies if n in protocol["policies"]["recipes"]]
    found = [n for n in policies if n not in recipes]
    reference = yaml.safe_load((ROOT / protocol["dataset"]["space"]).read_text())["reference"]
    if reference not in recipes:
        _refuse(f"the space's reference {reference!r} is not among the recipes")
    high = loaded["high"][0]
    if not smoke:
        enter_ledger(LEDGER, key, command, (
            f"`{protocol['dataset']['space']}` with generator seed "
            f"{protocol['dataset']['generator_seed']}; {', '.join(recipes)} and the found "
            f"policies {', '.join(found)} at the proxy (the space's budget) and at the high "
            f"fidelity (`{high.encoder}`, {high.image_size} px, {high.epochs} epochs, lr "
            f"{high.lr:g}), seeds {', '.join(map(str, seeds))}, test split; "
            f"protocol sha256 {digest[:12]}"), f"{machine}, {threads} CPU threads")
    deadline = time.monotonic() + args.minutes * 60
    runs: dict[tuple[str, str, int], dict] = {}
    for seed in seeds:  # both fidelities of a seed before the next seed
        for fidelity in FIDELITIES:
            budget, data, _ = loaded[fidelity]
            for policy_name, policy in policies.items():
                path = state / "runs" / f"{fidelity}-{policy_name}-seed-{seed}.json"
                if path.exists():
                    runs[(fidelity, policy_name, seed)] = json.loads(path.read_text())
                    continue
                if time.monotonic() > deadline:
                    continue
                print(f"run {fidelity} {policy_name}, seed {seed}", flush=True)
                record = {"fidelity": fidelity, "policy": policy_name, "seed": seed,
                          **train_run(policy, seed, data, budget, threads)}
                _write_json(path, record)
                runs[(fidelity, policy_name, seed)] = record
    todo = 2 * len(policies) * len(seeds) - len(runs)
    if todo:
        print(f"stopped after {args.minutes:g} minutes: {todo} trainings to go; run the same "
              "command again", flush=True)
        return

    from policysearch.records import delta_m

    values = {f: {n: [delta_m(runs[(f, n, s)]["metrics"], runs[(f, reference, s)]["metrics"],
                              info, None)[0] for s in seeds] for n in policies}
              for f in FIDELITIES}
    result = analyse(values, recipes, found)
    seconds = {f: sum(r["seconds"] for (g, _, _), r in runs.items() if g == f) * threads
               for f in FIDELITIES}
    found_from = {k: str(v) for k, v in protocol["policies"]["found"].items()}
    proxy_budget = loaded["proxy"][0]
    title = (f"# Transfer from the proxy to a higher fidelity: `{name}` (transfer protocol "
             f"v{version})" + (" — smoke test: tiny sizes, not a result" if smoke else ""))
    header = [
        f"Produced by `{command}{' --smoke-test' if smoke else ''}` at commit "
        f"`{git('rev-parse', '--short', 'HEAD')}` on {machine}, {threads} CPU threads, no GPU; "
        f"protocol `benchmarks/transfer_protocol.yaml` (sha256 {digest[:12]}). Data: "
        f"`{name}` generator seed {protocol['dataset']['generator_seed']} (new), trained on "
        f"train, scored on test. Proxy: the `{proxy_budget.encoder}` encoder at "
        f"{proxy_budget.image_size} px, {proxy_budget.epochs} epochs (the searches' budget); "
        f"high: `{high.encoder}` at {high.image_size} px, {high.epochs} epochs, lr "
        f"{high.lr:g}. Every policy trained with seeds {', '.join(map(str, seeds))} at both; "
        f"Δm% against `{reference}` of the same fidelity and seed. The found policies come from "
        "the methods comparison's searches (`benchmarks/results/methods_"
        f"{name}_v1.md`), picked by the rule the protocol states."]
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(result, title=title, header=header, recipes=recipes,
                               found_from=found_from, png=png.name, seconds=seconds))
    plot(result, recipes, png, f"{name}: Δm% at the proxy and at the high fidelity")
    if not smoke:
        finish_ledger(LEDGER, key, (
            f"ranking {'holds' if result['holds'] else 'not shown to hold'}: Spearman ρ "
            f"{result['spearman']:+.2f} (p {_p(result['spearman_p'])}); the proxy's best ranks "
            f"{result['top_rank_high']} at the high fidelity (`{out.relative_to(ROOT)}`)"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
