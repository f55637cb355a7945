"""The benchmark: a searched policy against the standard augmentations, every contender trained
under one budget for several seeds and evaluated on the **test** split (data the search never
saw).

Contenders: ``searched`` (the policy file, its loss weighting included), named baselines
(each with every task's loss weighing 1, as the search's reference trial) and, unless left
out, ablations that separate augmentation from loss weighting: ``searched/equal-weights``
(the searched augmentation, every loss weighing 1) and ``<baseline>/searched-weights`` (the
space's reference augmentation and the best baseline, with the searched loss weighting).

Each seed's Δm% is measured against the reference contender trained with that same seed;
differences between the searched policy and each other contender are paired by seed (95% t
interval; paired t-test by default, or Wilcoxon's signed-rank test), and the p-values of one
table are corrected for multiple comparisons (Holm); a verdict needs the corrected p. The
seeds the searched policy was selected on are never benchmark seeds. Every run is stored in
``<out>/runs/`` with a fingerprint of what it trained, so running the same command again
trains only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from policysearch.augment import BASELINES, Policy, Weighting, is_baseline, load_policy
from policysearch.config import SearchSpace, SpaceOverrides, load_space
from policysearch.errors import UserError
from policysearch.events import (
    BenchmarkListener,
    RunEnded,
    RunEpochEnded,
    RunStarted,
    SpaceAdapted,
)
from policysearch.records import (
    MetricsInfo,
    StudyRecords,
    delta_m,
    metrics_info_from_tasks,
    search_cost,
)

if TYPE_CHECKING:
    from policysearch.data.base import MultiTaskDataset

ALL_BASELINES = ("none", "flipcrop", "randaugment", "trivialaugment", "autoaugment")
SEARCHED = "searched"
EQUAL_WEIGHTS = f"{SEARCHED}/equal-weights"  # the searched augmentation, every loss weighing 1
SEARCHED_WEIGHTS = "searched-weights"  # "<baseline>/searched-weights"
WINS, LOSES, NO_DIFFERENCE = "searched wins", "searched loses", "no significant difference"
SIGNIFICANCE_TESTS = ("ttest", "wilcoxon")
ALPHA = 0.05
RUN_SCHEMA = "policysearch.benchmark-run/v1"
Say = Callable[[str], None]


class _EpochEvents:
    """A training reporter that passes each epoch on as a ``RunEpochEnded`` event."""

    def __init__(self, events: BenchmarkListener, run: int):
        self.events, self.run = events, run

    def report(self, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
        self.events(RunEpochEnded(run=self.run, epoch=epoch, metrics=metrics))


@dataclass
class BenchmarkOptions(SpaceOverrides):
    """What ``policysearch benchmark`` takes; None means "the search's (or space's) value"."""

    policy: Path
    baselines: Sequence[str] = ALL_BASELINES
    reference: str = "flipcrop"
    search: Path | None = None  # a search's --out: its stored space and its search cost
    storage: str | None = None  # … or its database and study name
    study: str | None = None
    space: str | Path | None = None  # default: the search's stored space, else "default"
    seeds: int = 5
    seed: int = 1  # the first seed; the seeds the policy was selected on are skipped
    ablations: bool = True
    device: str = "auto"
    threads: int | None = None
    significance: str = "ttest"
    out: Path = Path("runs/benchmark")


@dataclass
class Contender:
    name: str
    policy: Policy


def contender_kind(name: str) -> str:
    """``searched``, ``ablation`` (a name with a ``/``, which no baseline has) or
    ``baseline``."""
    return SEARCHED if name == SEARCHED else "ablation" if "/" in name else "baseline"


@dataclass
class BenchmarkOutcome:
    runs: pd.DataFrame  # one row per contender and seed
    summary: pd.DataFrame  # one row per contender: means, stds, the paired comparison
    metrics_info: MetricsInfo
    cost: dict[str, Any] | None
    files: list[Path] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    trained: int = 0
    reused: int = 0


# --- set-up ------------------------------------------------------------------------------------


def _search_records(options: BenchmarkOptions, say: Say) -> StudyRecords | None:
    from policysearch.search.driver import load_study_records
    from policysearch.search.optuna_study import JOURNAL_NAME
    from policysearch.search.ray_results import is_ray_experiment

    if options.storage is not None:
        if options.study is None:
            raise UserError("--storage needs --study NAME", field="--study")
        return load_study_records(None, options.storage, options.study)
    folder = options.search
    if folder is None:  # a best_policy.yaml written by a search sits in its --out folder
        beside = options.policy.resolve().parent
        if (beside / JOURNAL_NAME).is_file() or is_ray_experiment(beside):
            folder = beside
            say(f"search: {folder} (the policy file's folder)")
    if folder is None:
        return None
    if not folder.is_dir():
        raise UserError("no such folder", source=str(folder), field="--search")
    return load_study_records(folder, None, options.study)


def resolve_benchmark_space(options: BenchmarkOptions,
                            records: StudyRecords | None) -> SearchSpace:
    """The dataset and budget: ``--space`` if given, else the search's stored space, else the
    default space; CLI flags override its budget. Search on a subset, train on everything: the
    space's ``subset`` is dropped, so every run trains on the whole training split, unless
    ``--subset N`` asks for N samples of it (with the space's subset seed, else 0)."""
    from policysearch.evaluation.reeval import stored_space

    if options.space is not None or records is None or not records.space:
        space = load_space(options.space or "default")
    else:
        space = stored_space(records.space, f"study {records.name}")
    if options.subset is None:
        space = space.with_subset(None)
    return options.apply(space)


def _contenders(options: BenchmarkOptions, policy: Policy,
                tasks: dict[str, str]) -> list[Contender]:
    from policysearch.search.lifecycle import reference_policy

    names = list(dict.fromkeys(options.baselines))
    for name in names:
        if not is_baseline(name):
            raise UserError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)} "
                            "or a timm-style string such as rand-m9-n2", field="--baselines")
        if name == SEARCHED or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise UserError(f"cannot name a contender {name!r}", field="--baselines")
    if not is_baseline(options.reference):
        raise UserError(f"unknown baseline {options.reference!r}", field="--reference")
    if options.reference not in names:
        names.append(options.reference)
    return [Contender(SEARCHED, policy)] + [Contender(n, reference_policy(n, tasks))
                                             for n in names]


def ablations(policy: Policy, bases: Sequence[str], tasks: dict[str, str]) -> list[Contender]:
    """The ablations of ``policy``: ``searched/equal-weights`` (its augmentation with the
    baselines' loss weighting) and ``<base>/searched-weights`` for each of ``bases`` (that
    baseline's augmentation with ``policy``'s weighting). None when ``policy`` already weighs
    like the baselines: they would train the searched policy and the baselines again."""
    from policysearch.search.lifecycle import reference_policy

    equal = reference_policy("none", tasks).weighting  # what every baseline weighs with
    if policy.weighting == equal:
        return []
    return [Contender(EQUAL_WEIGHTS, with_weighting(policy, equal))] + [
        Contender(f"{b}/{SEARCHED_WEIGHTS}", with_weighting(reference_policy(b, tasks),
                                                            policy.weighting))
        for b in dict.fromkeys(bases)]


def with_weighting(policy: Policy, weighting: Weighting) -> Policy:
    """``policy`` with another loss weighting (augmentation and provenance as they were)."""
    return replace(policy, weighting=weighting)


def best_baseline(frame: pd.DataFrame) -> str | None:
    """The baseline with the best mean Δm% in ``frame`` (``runs_frame``; the first of equals),
    None when no baseline has a finite mean."""
    baselines = frame[frame["contender"].map(contender_kind) == "baseline"]
    means = baselines.groupby("contender", sort=False)["delta_m"].mean().dropna()
    return None if means.empty else str(means.idxmax())


# --- seeds ---------------------------------------------------------------------------------------


def selection_seeds(policy: Policy, records: StudyRecords | None, source: str) -> set[int]:
    """The seeds the searched policy was selected on: those its provenance names (an exported
    policy's ``selection_seeds``) and, with the search's records, the search's seed and the
    seeds of the trial's stored re-runs. Empty when neither is known."""
    prov = policy.provenance or {}
    named = prov.get("selection_seeds") or []
    if not isinstance(named, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                              for s in named):
        raise UserError(f"expected a list of whole numbers, got {named!r}", source=source,
                        field="provenance.selection_seeds")
    seeds = set(named)
    if records is not None:
        seeds.add(records.seed)
        trial = prov.get("trial")
        if prov.get("study") == records.name and isinstance(trial, int):
            seeds.update(records.trial_seeds(trial))
    return seeds


def benchmark_seeds(first: int, count: int, exclude: Collection[int]) -> list[int]:
    """The first ``count`` seeds from ``first`` up that are not in ``exclude``."""
    seeds: list[int] = []
    seed = first
    while len(seeds) < count:
        if seed not in exclude:
            seeds.append(seed)
        seed += 1
    return seeds


def _check_options(options: BenchmarkOptions) -> None:
    if options.seeds < 1:
        raise UserError("must be at least 1", field="--seeds")
    if options.threads is not None and options.threads < 1:
        raise UserError("must be at least 1", field="--threads")
    if options.out.exists() and not options.out.is_dir():
        raise UserError("not a folder", source=str(options.out), field="--out")
    if options.significance not in SIGNIFICANCE_TESTS:
        raise UserError(f"expected one of {', '.join(SIGNIFICANCE_TESTS)}, got "
                        f"{options.significance!r}", field="--significance")


# --- runs ----------------------------------------------------------------------------------------


def _fingerprint(policy: Policy, space: SearchSpace, seed: int) -> str:
    data = policy.to_dict()
    data.pop("provenance", None)
    what = {"policy": data, "dataset": space.dataset,
            "dataset_options": space.dataset_options.model_dump(mode="json"),
            "budget": space.budget.model_dump(mode="json"), "seed": seed, "split": "test"}
    if space.subset is not None:  # (runs on the whole training split keep their fingerprint)
        what["subset"] = space.subset.model_dump(mode="json")
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def run_path(out: Path, contender: str, seed: int) -> Path:
    """Where one run's result is stored."""
    return out / "runs" / contender / f"seed-{seed}.json"


def _load_run(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("schema") != RUN_SCHEMA or data.get("fingerprint") != fingerprint:
        return None
    return data


def _write_run(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def _train_runs(contenders: list[Contender], seeds: list[int], space: SearchSpace,
                dataset: MultiTaskDataset, options: BenchmarkOptions, say: Say,
                events: BenchmarkListener | None = None
                ) -> tuple[dict[tuple[str, int], dict[str, Any]], int, int]:
    from policysearch.training import train_policy

    runs: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for seed in seeds:
        for c in sorted(contenders, key=lambda c: c.name != options.reference):
            path = run_path(options.out, c.name, seed)
            fingerprint = _fingerprint(c.policy, space, seed)
            stored = _load_run(path, fingerprint)
            if stored is not None:
                runs[(c.name, seed)] = stored
            else:
                todo.append((c, seed, path, fingerprint))
    reused = len(runs)
    if reused:
        say(f"reusing {reused} stored runs from {options.out / 'runs'}")
    threads = options.threads or max(1, os.cpu_count() or 1)
    for i, (c, seed, path, fingerprint) in enumerate(todo, 1):
        if events is not None:
            events(RunStarted(run=i, runs=len(todo), contender=c.name, seed=seed,
                              epochs=space.budget.epochs))
        result = train_policy(c.policy, dataset, space.budget, seed=seed, device=options.device,
                              threads=threads, eval_split="test",
                              reporter=_EpochEvents(events, i) if events is not None else None)
        data = {"schema": RUN_SCHEMA, "fingerprint": fingerprint, "contender": c.name,
                "seed": seed, "metrics": result.metrics, "epochs": result.epochs,
                "seconds": round(result.seconds, 3), "device": result.device,
                "train_images": result.train_images}
        _write_run(path, data)
        runs[(c.name, seed)] = data
        if events is not None:
            events(RunEnded(run=i, runs=len(todo), contender=c.name, seed=seed,
                            seconds=round(result.seconds, 3)))
        say(f"run {i}/{len(todo)}: {c.name}, seed {seed} ({result.seconds:.1f} s)")
    return runs, len(todo), reused


# --- statistics ----------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), std


def paired_test(a: Sequence[float], b: Sequence[float], method: str = "ttest"
                ) -> dict[str, float]:
    """Compare ``a`` with ``b`` paired by position: mean difference a − b, its 95% confidence
    interval (t distribution, whatever the test), the number of pairs and the two-sided
    p-value of the paired t-test or (``wilcoxon``) Wilcoxon's signed-rank test. Differences
    that are all equal give p = 0 when they are not zero and 1 when they are (the tests are
    undefined there). Fewer than two pairs: p and the interval are NaN."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True) if math.isfinite(x - y)]
    out = {"diff": statistics.fmean(diffs) if diffs else math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p": math.nan, "pairs": len(diffs)}
    if len(diffs) < 2:
        return out
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0.0:
        out.update(ci_low=mean, ci_high=mean, p=0.0 if mean != 0.0 else 1.0)
        return out
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    out.update(ci_low=mean - half, ci_high=mean + half)
    if method == "ttest":
        out.update(p=float(stats.ttest_1samp(diffs, 0.0).pvalue))
    else:
        out.update(p=float(stats.wilcoxon(diffs).pvalue))
    return out


def wilcoxon_min_p(pairs: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test can give with ``pairs``
    pairs (every difference of one sign): 2 / 2^pairs, 0.0625 for 5."""
    return 2.0 / 2.0 ** pairs if pairs > 0 else 1.0


def wilcoxon_note(pairs: int) -> str | None:
    """Why Wilcoxon cannot call anything significant with ``pairs`` pairs; None if it can."""
    smallest = wilcoxon_min_p(pairs)
    if smallest < ALPHA:
        return None
    return (f"Wilcoxon's signed-rank test with {pairs} pairs cannot reach p < {ALPHA}: its "
            f"smallest two-sided p is {smallest:.4g}, so no difference can be significant "
            f"(use the paired t-test or at least {_wilcoxon_pairs_needed()} seeds)")


def _wilcoxon_pairs_needed() -> int:
    return next(n for n in range(1, 64) if wilcoxon_min_p(n) < ALPHA)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given: the k-th smallest of the m
    finite p-values times m − k + 1, made non-decreasing in that order and capped at 1. NaN
    (no test) stays NaN and is not counted in m."""
    ranked = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - k) * p))
        adjusted[i] = running
    return adjusted


def verdict(diff: float, p_holm: float) -> str:
    """The verdict of one comparison: it needs the Holm-adjusted p below ``ALPHA``."""
    if not math.isfinite(diff):
        return "no paired runs"
    if not math.isfinite(p_holm):
        return "one seed: no test"
    if p_holm >= ALPHA:
        return NO_DIFFERENCE
    return WINS if diff > 0 else LOSES


def _primary(info: MetricsInfo) -> list[tuple[str, str]]:
    return [(t, m) for t, metrics in info.items() for m, meta in metrics.items()
            if meta.get("primary")]


def runs_frame(runs: dict[tuple[str, int], dict[str, Any]], contenders: list[str],
               seeds: list[int], info: MetricsInfo, reference: str,
               task_weights: dict[str, float] | None) -> pd.DataFrame:
    """One row per contender and seed: every metric (``task.metric``), Δm% against the
    reference of that seed, seconds."""
    rows = []
    for name in contenders:
        for seed in seeds:
            run = runs[(name, seed)]
            value, _ = delta_m(run["metrics"], runs[(reference, seed)]["metrics"], info,
                               task_weights)
            row: dict[str, Any] = {"contender": name, "seed": seed, "delta_m": value}
            for task, metrics in info.items():
                for metric in metrics:
                    row[f"{task}.{metric}"] = run["metrics"].get(task, {}).get(metric, math.nan)
            row.update(seconds=run["seconds"], epochs=run["epochs"], device=run.get("device"))
            rows.append(row)
    return pd.DataFrame(rows)


def summary_frame(runs: pd.DataFrame, info: MetricsInfo, method: str) -> pd.DataFrame:
    """One row per contender: mean and std (over seeds) of Δm% and every metric, and the
    searched policy's paired difference in Δm% to it (``diff`` = searched − contender), its
    95% t interval, the number of ``pairs``, the raw ``p_value``, ``p_holm`` (Holm-adjusted
    over every contender of the table), the ``verdict`` (``verdict``) and whether the
    difference is larger than the seed noise (the larger of the two contenders' Δm% std)."""
    metric_cols = [f"{t}.{m}" for t, metrics in info.items() for m in metrics]
    searched = runs[runs["contender"] == SEARCHED].set_index("seed")["delta_m"]
    rows = []
    for name, group in runs.groupby("contender", sort=False):
        row: dict[str, Any] = {"contender": name, "seeds": len(group)}
        for col in ["delta_m", *metric_cols, "seconds"]:
            row[col], row[f"{col}_std"] = _mean_std(group[col].tolist())
        if name != SEARCHED:
            own = group.set_index("seed")["delta_m"]
            common = [s for s in own.index if s in searched.index]
            test = paired_test([searched[s] for s in common], [own[s] for s in common], method)
            noise = max(_nan0(row["delta_m_std"]),
                        _nan0(statistics.stdev(searched) if len(searched) > 1 else math.nan))
            row.update(diff=test["diff"], ci_low=test["ci_low"], ci_high=test["ci_high"],
                       pairs=test["pairs"], p_value=test["p"], seed_std=noise,
                       beyond_noise=bool(len(common) > 1 and abs(test["diff"]) > noise))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "p_value" in frame.columns:
        frame["p_holm"] = holm(frame["p_value"].tolist())
        frame["verdict"] = [None if name == SEARCHED else verdict(diff, p)
                            for name, diff, p in zip(frame["contender"], frame["diff"],
                                                     frame["p_holm"], strict=True)]
    return frame


def _nan0(value: float) -> float:
    return 0.0 if not math.isfinite(value) else value


def verdicts(summary: pd.DataFrame, method: str) -> list[str]:
    """Plain sentences: one per contender (does the searched policy beat it, by the
    Holm-adjusted test?), a note when Wilcoxon cannot be significant, and the overall
    verdict against the baselines."""
    others = summary[summary["contender"] != SEARCHED]
    lines = []
    pairs = [int(n) for n in others.get("pairs", pd.Series(dtype=float)).dropna()]
    note = wilcoxon_note(max(pairs)) if method == "wilcoxon" and pairs else None
    if note is not None:
        lines.append(note + ".")
    for _, row in others.iterrows():
        name, diff, p = row["contender"], row["diff"], row["p_value"]
        what = f"searched vs {name}: "
        if not math.isfinite(diff):
            lines.append(what + "no paired runs")
            continue
        if not math.isfinite(p):
            lines.append(what + f"{diff:+.2f} Δm% (one seed: no test)")
            continue
        ci = (f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
              if math.isfinite(row["ci_low"]) else "")
        outcome = {WINS: "the searched policy wins", LOSES: "the searched policy loses"}.get(
            row["verdict"], "the searched policy does not win (not significant after Holm)")
        noise = ("beyond" if row["beyond_noise"] else "within") + \
            f" the seed std ({row['seed_std']:.2f})"
        lines.append(f"{what}{diff:+.2f} Δm%{ci}, raw p = {p:.3f}, Holm p = "
                     f"{row['p_holm']:.3f} ({_test_name(method)}): {outcome}; {noise}"
                     f"{_reading(str(name))}")
    lines.append(overall_verdict(summary))
    return lines


def overall_verdict(summary: pd.DataFrame) -> str:
    """Whether the searched policy beats every baseline by the Holm-adjusted test, and where
    it does not."""
    rows = summary[summary["contender"].map(contender_kind) == "baseline"]
    beaten = [str(n) for n, v in zip(rows["contender"], rows.get("verdict", []), strict=False)
              if v == WINS]
    not_beaten = [str(n) for n in rows["contender"] if str(n) not in beaten]
    head = f"Overall (Holm-adjusted, α = {ALPHA}): "
    if not not_beaten:
        return head + "the searched policy beats every baseline."
    return (head + f"the searched policy does not beat {', '.join(not_beaten)}"
            + (f"; it beats {', '.join(beaten)}." if beaten else "; it beats no baseline."))


def _reading(name: str) -> str:
    if name == EQUAL_WEIGHTS:
        return " — what the searched loss weights add to the searched augmentation"
    if contender_kind(name) == "ablation":
        base = name.split("/")[0]
        return (f" — what the searched augmentation adds over {base}, both with the searched "
                "loss weights")
    return ""


def _test_name(method: str) -> str:
    return "paired t-test" if method == "ttest" else "Wilcoxon's signed-rank test"


# --- cost ----------------------------------------------------------------------------------------


def cost_summary(records: StudyRecords | None, full_epochs: int,
                 full_seconds: float) -> dict[str, Any] | None:
    """The search's compute as a multiple of one full training of the final model (this
    benchmark's budget): by epochs and by time (the searched runs' mean seconds)."""
    if records is None:
        return None
    cost = search_cost(records)
    data = cost.to_dict()
    data.update(study=records.name, full_training_epochs=full_epochs,
                full_training_seconds=round(full_seconds, 3),
                full_trainings_by_epochs=cost.trial_epochs / full_epochs if full_epochs else None,
                full_trainings_by_time=(cost.trial_seconds / full_seconds
                                        if full_seconds > 0 else None))
    return data


def cost_line(cost: dict[str, Any]) -> str:
    wall = cost.get("wall_seconds")
    devices = ", ".join(f"{s / 3600:.2f} {d}-hours" for d, s in
                        (cost.get("device_seconds") or {}).items())
    by_time = cost.get("full_trainings_by_time")
    return (f"search cost of study {cost['study']}: {cost['trial_epochs']} trial-epochs over "
            f"{cost['trials']} trials = {cost['full_trainings_by_epochs']:.1f} full trainings "
            f"of {cost['full_training_epochs']} epochs"
            + (f" ({by_time:.1f} by time: {cost['trial_seconds'] / 60:.1f} min of trials, "
               f"one full training {cost['full_training_seconds']:.0f} s)"
               if by_time is not None else "")
            + (f"; wall time {wall / 60:.1f} min" if wall is not None else "")
            + (f"; {devices}" if devices else ""))


# --- output --------------------------------------------------------------------------------------


def _pm(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    text = f"{mean:+.{digits}f}" if digits == 2 else f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def to_markdown(outcome: BenchmarkOutcome, header: list[str], method: str) -> str:
    """The benchmark as Markdown: context lines, the summary table (primary metrics), the
    verdicts, the search cost and the per-seed table."""
    info, summary, runs = outcome.metrics_info, outcome.summary, outcome.runs
    primary = _primary(info)
    lines = ["# Benchmark: searched policy vs standard augmentations", "", *header, ""]
    head = ["contender", "Δm% (test)", *(f"{t} {m}" for t, m in primary),
            "searched − contender [95% CI]",
            f"p ({'paired t-test' if method == 'ttest' else 'Wilcoxon'})", "p (Holm)",
            "verdict", "s / run"]
    lines += ["| " + " | ".join(head) + " |",
              "|---|" + "---:|" * (len(head) - 3) + "---|---:|"]  # verdict: left-aligned
    for _, row in summary.iterrows():
        cells = [str(row["contender"]), _pm(row["delta_m"], row["delta_m_std"], 2)]
        cells += [_pm(row[f"{t}.{m}"], row[f"{t}.{m}_std"], 3) for t, m in primary]
        if row["contender"] == SEARCHED:
            cells += ["", "", "", ""]
        else:
            diff = row["diff"]
            ci = (f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
                  if math.isfinite(row["ci_low"]) else "")
            cells += [f"{diff:+.2f}{ci}" if math.isfinite(diff) else "–",
                      _p(row["p_value"]), _p(row["p_holm"]), str(row["verdict"])]
        cells.append(f"{row['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± std over seeds. Brackets: 95% t interval of the paired difference in "
              f"Δm% (searched − contender, paired by seed). p (Holm): adjusted for the "
              f"{int(summary['p_value'].notna().sum()) if 'p_value' in summary else 0} "
              f"comparisons of this table; a verdict needs it below {ALPHA}.", ""]
    lines += [f"- {v}" for v in outcome.verdicts]
    if outcome.cost is not None:
        lines += ["", cost_line(outcome.cost) + "."]
    lines += ["", "## Every run", ""]
    cols = ["contender", "seed", "delta_m", *(f"{t}.{m}" for t, m in primary), "seconds"]
    lines += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for _, row in runs.iterrows():
        cells = [str(row["contender"]), str(int(row["seed"])),
                 f"{row['delta_m']:+.2f}" if math.isfinite(row["delta_m"]) else "–"]
        cells += [f"{row[c]:.4f}" for c in cols[3:-1]]
        cells.append(f"{row['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _p(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "–"


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the finite ``values`` and the half-width of its 95% t interval (NaN with
    fewer than two)."""
    from scipy import stats

    finite = [v for v in values if math.isfinite(v)]
    mean, std = _mean_std(finite)
    if len(finite) < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, len(finite) - 1)) * std / math.sqrt(len(finite))


_VERDICT_COLOURS = {WINS: "#1b9e77", LOSES: "#d95f02", NO_DIFFERENCE: "#7570b3"}


def plot(summary: pd.DataFrame, runs: pd.DataFrame, path: Path, title: str) -> Path:
    """Two panels. Left: each contender's Δm% (mean with its 95% t interval over seeds,
    every seed as a dot), the searched policy highlighted. Right: the searched policy's
    paired difference to each contender (searched − contender, 95% t interval), coloured by
    the Holm-corrected verdict: the comparison the table's tests make."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["contender"].tolist()
    intervals = [mean_interval(runs.loc[runs["contender"] == n, "delta_m"].tolist())
                 for n in names]
    colors = [{SEARCHED: "#d95f02", "ablation": "#1b9e77"}.get(contender_kind(n), "#7570b3")
              for n in names]
    others = summary[summary["contender"] != SEARCHED]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(1.1 * len(names) + 6.5, 4.4), dpi=120,
        gridspec_kw={"width_ratios": [max(len(names), 1), 6]})
    xs = list(range(len(names)))
    left.bar(xs, [_nan0(m) for m, _ in intervals], yerr=[_nan0(h) for _, h in intervals],
             capsize=4, color=colors, alpha=0.85)
    for x, name in zip(xs, names, strict=True):
        values = runs.loc[runs["contender"] == name, "delta_m"].to_numpy()
        left.scatter([x] * len(values), values, color="black", s=8, zorder=3)
    left.axhline(0.0, color="grey", linewidth=0.8)
    left.set_xticks(xs, names, rotation=35, ha="right", fontsize=8)
    left.set_ylabel("Δm% on the test split (mean, 95% interval)")
    left.set_title(title, fontsize=9)
    if "diff" in others.columns and len(others):
        ys = list(range(len(others)))[::-1]
        verdicts = others["verdict"].tolist()
        for y, diff, low, high, v in zip(ys, others["diff"], others["ci_low"],
                                         others["ci_high"], verdicts, strict=True):
            colour = _VERDICT_COLOURS.get(v, "grey")
            if math.isfinite(low) and math.isfinite(high):
                right.plot([low, high], [y, y], color=colour, linewidth=2)
            right.scatter([diff], [y], color=colour, s=25, zorder=3)
        right.set_yticks(ys, others["contender"].tolist(), fontsize=8)
        handles = [plt.Line2D([], [], color=c, marker="o", label=v)
                   for v, c in _VERDICT_COLOURS.items() if v in verdicts]
        if handles:
            right.legend(handles=handles, fontsize=7, loc="best")
    right.axvline(0.0, color="grey", linewidth=0.8)
    right.set_xlabel("searched − contender, paired by seed (95% interval, unadjusted)")
    right.set_title("verdicts: Holm-corrected paired tests", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- the command ---------------------------------------------------------------------------------


def run_benchmark(options: BenchmarkOptions, progress: Say | None = None,
                  events: BenchmarkListener | None = None) -> BenchmarkOutcome:
    """Train every contender for every seed (reusing stored runs), evaluate on the test split
    and write ``benchmark.md``, ``benchmark.csv`` (one row per contender), ``runs.csv`` (one
    row per run), ``benchmark.json`` and ``benchmark.png`` into ``options.out``.

    ``progress`` gets a line per step; ``events`` each run's ``BenchmarkEvent`` (start, every
    epoch, end)."""
    from policysearch.data.subset import SubsetError
    from policysearch.space_adapt import load_adapted
    from policysearch.training import resolve_device

    say = progress or (lambda line: None)
    _check_options(options)
    policy = load_policy(options.policy)
    records = _search_records(options, say)
    space = resolve_benchmark_space(options, records)
    resolve_device(options.device)
    options.check_encoder(space)
    try:
        adapted, dataset = load_adapted(space)
    except SubsetError as err:  # the subset comes from --subset: the stored one is dropped
        raise UserError(err.message, field="--subset") from None
    space = adapted.space
    for line in SpaceAdapted(space.name, space.dataset, list(adapted.changes),
                             list(adapted.warnings)).lines():
        say(line)
    if len(dataset.split("test")) == 0:
        raise UserError("the test split is empty: the benchmark evaluates on it",
                        source=space.dataset, field="dataset")
    tasks = {t.name: t.kind for t in dataset.tasks}
    if set(policy.tasks) != set(tasks):
        raise UserError(f"the policy's tasks ({', '.join(policy.tasks)}) are not the "
                        f"dataset's ({', '.join(tasks)})", source=str(options.policy),
                        field="tasks")
    from policysearch.tasks import make_task

    info = metrics_info_from_tasks([make_task(spec) for spec in dataset.tasks])
    contenders = _contenders(options, policy, tasks)
    ablated = ablations(policy, [space.reference], tasks) if options.ablations else []
    contenders += ablated
    if options.ablations and not ablated:
        say("no ablations: the searched policy weighs every loss 1, as the baselines do")
    excluded = selection_seeds(policy, records, str(options.policy))
    seeds = benchmark_seeds(options.seed, options.seeds, excluded)
    skipped = sorted(excluded & set(range(options.seed, seeds[-1] + 1)))
    if skipped:
        say(f"seeds {', '.join(map(str, skipped))} left out: the searched policy was selected "
            "on them")
    budget = space.budget
    training = training_set(dataset, records)
    say(f"benchmark: {len(contenders)} contenders × {len(seeds)} seeds on {space.dataset} "
        f"(test split: {len(dataset.split('test'))} samples), {budget.epochs} epochs each; "
        f"{training['line']}")
    runs, trained, reused = _train_runs(contenders, seeds, space, dataset, options, say, events)
    weights = dict(space.task_weights or {}) or None
    frame = runs_frame(runs, [c.name for c in contenders], seeds, info, options.reference,
                       weights)
    best = best_baseline(frame)
    if ablated and best is not None and best != space.reference:
        say(f"best baseline: {best}; training it with the searched loss weights")
        extra = ablations(policy, [best], tasks)[1:]
        more = _train_runs(extra, seeds, space, dataset, options, say, events)
        contenders += extra
        runs.update(more[0])
        trained, reused = trained + more[1], reused + more[2]
        frame = runs_frame(runs, [c.name for c in contenders], seeds, info, options.reference,
                           weights)
    summary = summary_frame(frame, info, options.significance)
    searched_seconds = float(frame.loc[frame["contender"] == SEARCHED, "seconds"].mean())
    outcome = BenchmarkOutcome(runs=frame, summary=summary, metrics_info=info,
                               cost=cost_summary(records, budget.epochs, searched_seconds),
                               verdicts=verdicts(summary, options.significance),
                               trained=trained, reused=reused)
    outcome.files = _write(outcome, options, space, policy, seeds, sorted(excluded),
                           len(dataset.split("test")), training)
    return outcome


def training_set(dataset: MultiTaskDataset, records: StudyRecords | None) -> dict[str, Any]:
    """Which training samples the benchmark's runs train on: ``train_size``, ``subset`` (its
    ``{n, seed, of, stratified_by}`` under ``--subset``, else None), the search's subset
    (``search_subset``, None when it searched on everything or is unknown) and ``line``, the
    sentence of benchmark.md's header."""
    from policysearch.data.subset import subset_of

    choice = subset_of(dataset)
    train_size = len(dataset.split("train"))
    searched = records.subset if records is not None else None
    if choice is not None:
        how = (f"stratified by {choice.stratified_by}" if choice.stratified_by
               else "a random sample")
        line = (f"training set: a subset of {choice.n} of the {choice.of} training samples "
                f"(--subset; {how}, subset seed {choice.seed})")
    else:
        line = f"training set: the whole training split ({train_size} samples)"
        if searched is not None:
            line += (f"; the search trained its trials on a subset of {searched.get('n')} of "
                     "them")
    return {"train_size": train_size, "subset": choice.to_dict() if choice else None,
            "search_subset": searched, "line": line}


def _write(outcome: BenchmarkOutcome, options: BenchmarkOptions, space: SearchSpace,
           policy: Policy, seeds: list[int], excluded: list[int], n_test: int,
           training: dict[str, Any]) -> list[Path]:
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    budget = space.budget
    prov = policy.provenance or {}
    origin = (f" (study {prov['study']}, trial {prov.get('trial')})" if prov.get("study")
              else "")
    device = ", ".join(sorted({str(d) for d in outcome.runs["device"]}))
    header = [
        f"Policy `{options.policy}`{origin} against {', '.join(outcome.summary['contender'][1:])}"
        f"; dataset `{space.dataset}`, test split ({n_test} samples), never seen by the search.",
        f"Budget per run: {budget.epochs} epochs, batch {budget.batch_size}, lr {budget.lr:g}, "
        f"{budget.optimizer}, encoder `{budget.encoder}`, image size {budget.image_size}; "
        f"seeds {', '.join(map(str, seeds))}; device `{device}`.",
        training["line"][:1].upper() + training["line"][1:] + ".",
        "Seeds the searched policy was selected on (left out): "
        + (", ".join(map(str, excluded)) if excluded else
           "unknown (no search found and none in the policy's provenance)") + ".",
        f"Δm%: against `{options.reference}` trained with the same seed (primary metrics; "
        f"mean over tasks). Baselines weigh every task's loss 1; `searched` uses its own "
        f"loss weighting ({policy.weighting.method})"
        + ("; ablations: `searched/equal-weights` is the searched augmentation with every "
           "loss weighing 1, `<baseline>/searched-weights` that baseline with the searched "
           "loss weighting." if any(contender_kind(n) == "ablation"
                                    for n in outcome.summary["contender"]) else "."),
    ]
    md = out / "benchmark.md"
    md.write_text(to_markdown(outcome, header, options.significance))
    csv, runs_csv = out / "benchmark.csv", out / "runs.csv"
    outcome.summary.to_csv(csv, index=False)
    outcome.runs.to_csv(runs_csv, index=False)
    js = out / "benchmark.json"
    js.write_text(json.dumps({
        "policy": str(options.policy), "reference": options.reference,
        "significance": options.significance, "seeds": seeds,
        "selection_seeds": excluded, "alpha": ALPHA, "correction": "holm",
        "dataset": space.dataset, "train_size": training["train_size"],
        "subset": training["subset"], "search_subset": training["search_subset"],
        "budget": budget.model_dump(mode="json"), "cost": outcome.cost,
        "verdicts": outcome.verdicts,
        "summary": json.loads(outcome.summary.to_json(orient="records")),
        "runs": json.loads(outcome.runs.to_json(orient="records")),
    }, indent=1, ensure_ascii=False) + "\n")
    png = plot(outcome.summary, outcome.runs, out / "benchmark.png",
               f"{space.dataset}: Δm% vs {options.reference} on the test split "
               f"({len(seeds)} seeds, {budget.epochs} epochs)")
    return [md, csv, runs_csv, js, png]


__all__ = ["ALL_BASELINES", "BenchmarkOptions", "BenchmarkOutcome", "ablations",
           "benchmark_seeds", "holm", "paired_test", "run_benchmark", "selection_seeds",
           "summary_frame", "wilcoxon_min_p"]
