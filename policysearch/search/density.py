"""``policysearch search --method density``: a policy search without training under the
candidates (Fast AutoAugment's density matching, Lim et al. 2019, for multi-task networks).

1. The training split is cut into K folds (``data.folds``: seeded, stratified, a held-out share
   of 0.4 by default).
2. On each fold a network is trained once under the space's reference (the budget's epochs on
   the fold's training part): K trainings of that part's size.
3. Per fold, TPE (the space's sampler) proposes candidate policies from the space; each is
   scored by the fold's network on the fold's held-out part augmented by it
   (``density.DensityScorer``: per sample the lowest weighted loss over its augmented copies,
   each task on the view that feeds it). Lower is better.
4. The ``keep`` best candidates of each fold are kept, and the exported policy is their union:
   a ``subpolicies`` policy whose shared sub-policies are the kept candidates' shared parts
   and, per task with a view of its own, whose task sub-policies are their views of it (one
   picked per sample, each apart), duplicates dropped; the space's ``base`` stays the base.

Loss weights are not searched (a candidate is never trained): the folds train and the tasks'
losses combine with the weights the space fixes (``equal``, or a single adaptive method whose
hyper-parameters are all fixed, whose learned weights then combine the losses); a space that
searches them trains with every task weighing 1, and the results say so.

Stored in ``OUT/density/``: ``state.json`` (what a resume must match, and each fold model's
record), ``fold-<k>.pt`` (each fold model's weights) and ``candidates.journal`` (Optuna: a study
per fold, a trial per candidate, its value the candidate's loss). Running the same command
again resumes: stored fold models are read back, scored candidates are kept, and a candidate
left half-scored by a kill is failed and proposed again. ``OUT`` gets ``results.csv`` /
``results.md`` (every candidate), ``best_policy.yaml`` with its albumentations files, and
``report.html``. The cost is counted in full trainings: each fold's training as its share of a
full training's images, plus the scoring time over the time of a full training (estimated from
the folds' own: their seconds over their share).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch

from policysearch.augment import Policy, Slot, SubPolicies, Weighting
from policysearch.augment.draws import SEEDING_VERSION
from policysearch.config import SearchSpace
from policysearch.data.folds import Fold, FoldDataset, dataset_folds
from policysearch.errors import UserError
from policysearch.events import CandidateScored, DensityStarted, FoldTrained
from policysearch.search.lifecycle import first_difference, reference_policy
from policysearch.search.options import SearchOptions, SearchRun
from policysearch.search.sampling import make_sampler, suggest
from policysearch.search.space import WEIGHT_METHOD, parameters, policy_from_params

DENSITY_DIR = "density"
STATE_VERSION = 1
# A candidate whose every sample lost a target: a finite value Optuna can rank (it is last).
_WORST = 1e9


@dataclass(frozen=True)
class DensitySettings:
    """How the density search runs: ``folds`` fold models, each holding out ``heldout`` of the
    training split; ``candidates`` proposed per fold; ``copies`` augmented copies of each
    held-out sample; the ``keep`` best candidates of each fold make the union. Fast
    AutoAugment: 5 folds, 0.4 held out, 5 copies (its ``num_policy``), the 10 best of 200."""

    folds: int = 5
    heldout: float = 0.4
    candidates: int = 32
    copies: int = 5
    keep: int = 10

    def check(self) -> None:
        for name, value, low in (("--folds", self.folds, 1), ("--trials", self.candidates, 1),
                                 ("--copies", self.copies, 1), ("--keep", self.keep, 1)):
            if value < low:
                raise UserError(f"must be at least {low}, got {value}", field=name)
        if not 0.0 < self.heldout < 1.0:
            raise UserError(f"must be between 0 and 1, got {self.heldout:g}",
                            field="--heldout")

    def to_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "heldout": self.heldout, "candidates": self.candidates,
                "copies": self.copies, "keep": self.keep}


def settings_of(options: SearchOptions) -> DensitySettings:
    """``--method density``'s settings: ``--trials`` candidates per fold, ``--folds``,
    ``--heldout``, ``--copies`` and ``--keep`` where given, else the defaults."""
    defaults = DensitySettings()
    return DensitySettings(
        folds=defaults.folds if options.folds is None else options.folds,
        heldout=defaults.heldout if options.heldout is None else options.heldout,
        candidates=options.trials,
        copies=defaults.copies if options.copies is None else options.copies,
        keep=defaults.keep if options.keep is None else options.keep)


def check_space(space: SearchSpace) -> None:
    """A space density matching can search: its union is a ``subpolicies`` policy, so the
    shared part must be slots (``sequence``) or sub-policies, and the objective Δm% (a
    candidate has one loss, no per-task metrics)."""
    if space.structure == "randaugment":
        raise UserError("density matching exports the union of its best candidates as "
                        "sub-policies; a randaugment space has none to unite (search its N and "
                        "M with the default method)", source=space.name, field="structure")
    if space.objective == "pareto":
        raise UserError("density matching scores a candidate by one loss; it has no per-task "
                        "objectives", field="--objective")
    if space.shared.slots == 0 and not space.per_task.names:
        raise UserError("the space searches no augmentation (no shared or per-task slots)",
                        source=space.name, field="shared.slots")


def density_weighting(space: SearchSpace, tasks: Sequence[str]) -> tuple[Weighting, str]:
    """The weighting that trains the fold models and combines the tasks' losses, and the
    results' words for it: what the space fixes (``equal``; a single adaptive method with
    fixed hyper-parameters), else every task weighing 1 (density matching searches no
    weights)."""
    from policysearch.weighting_schema import USES_WEIGHTS, defaults

    equal = Weighting("static", {t: 1.0 for t in tasks})
    methods = space.weights.methods
    if len(methods) > 1:
        return equal, ("every task 1 (the space searches among weighting methods, which "
                       "density matching cannot)")
    method = methods[0]
    if method == "equal":
        return equal, "every task 1 (equal, as the space fixes)"
    if method in USES_WEIGHTS:
        return equal, (f"every task 1 (the space searches {method} weights in "
                       f"{list(space.weights.range)}, which density matching cannot)")
    hyper = space.weights.hyper(method)
    if any(isinstance(v, tuple) for v in hyper.values()):
        return equal, (f"every task 1 (the space searches {method}'s hyper-parameters, which "
                       "density matching cannot)")
    params = {**defaults(method), **{k: float(v) for k, v in hyper.items()}}  # type: ignore[arg-type]
    return Weighting(method, {}, params), (f"{method}, as the space fixes it; each fold's "
                                           "learned weights combine its losses")


def _is_weight(name: str) -> bool:
    return name == WEIGHT_METHOD or name.startswith("weight.")


def _augmentation_params(space: SearchSpace, tasks: Sequence[str]) -> list[Any]:
    """The parameters a candidate is proposed in: the space's, less the loss weights'."""
    return [p for p in parameters(space, tasks) if not _is_weight(p.name)]


def _weight_placeholders(space: SearchSpace, tasks: Sequence[str]) -> dict[str, Any]:
    """A valid value of each weight parameter: what ``policy_from_params`` reads before the
    candidate's weighting is replaced by the density weighting."""
    return {p.name: (p.choices[0] if p.kind == "categorical" else p.low)
            for p in parameters(space, tasks) if _is_weight(p.name)}


@dataclass
class FoldModel:
    """A fold's trained network and what its record says."""

    fold: Fold
    model: torch.nn.Module
    seconds: float
    share: float  # its training part's size over the whole training split's
    metrics: dict[str, dict[str, float]]
    weights: dict[str, float]
    reused: bool


@dataclass
class DensityOutcome:
    """What ``search_density`` produced (the driver wraps it into a ``SearchOutcome``)."""

    table: pd.DataFrame
    policy: Policy | None
    files: list[Path] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    export: Any = None


class DensitySearch:
    """One density search of a ``SearchRun`` (see the module docstring)."""

    def __init__(self, run: SearchRun, settings: DensitySettings):
        settings.check()
        check_space(run.space)
        self.run = run
        self.settings = settings
        self.space = run.space
        self.tasks = dict(run.tasks)
        self.names = list(self.tasks)
        self.seed = run.options.seed
        self.folder = run.out_dir / DENSITY_DIR
        self.weighting, self.weighting_text = density_weighting(self.space, self.names)
        self.params = _augmentation_params(self.space, self.names)
        self._placeholders = _weight_placeholders(self.space, self.names)
        self.folds = dataset_folds(run.dataset, settings.folds, settings.heldout, self.seed)
        self.train_size = len(run.dataset.split("train"))

    # --- state -----------------------------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        """What a resume must match."""
        return {"version": STATE_VERSION, "space": self.space.canonical(), "seed": self.seed,
                "seeding": SEEDING_VERSION, "settings": self.settings.to_dict(),
                "folds": [f.digest() for f in self.folds]}

    def _state_path(self) -> Path:
        return self.folder / "state.json"

    def _load_state(self) -> dict[str, Any]:
        path = self._state_path()
        wanted = self.definition()
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            state = {"definition": wanted, "folds": {}}
            self._save_state(state)
            return state
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read the density search's state: {err}",
                            source=str(path)) from None
        stored = state.get("definition")
        if stored != wanted:
            raise UserError("refusing to resume: the density search differs from the stored "
                            f"one ({first_difference(stored, wanted)}); use another --out",
                            source=str(path), field="definition")
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        path = self._state_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)

    # --- fold models -------------------------------------------------------------------------

    def fold_policy(self) -> Policy:
        """The reference every fold trains under, with the density weighting."""
        from dataclasses import replace

        return replace(reference_policy(self.space.reference, self.tasks),
                       weighting=self.weighting)

    def fold_model(self, fold: Fold, state: dict[str, Any]) -> FoldModel:
        """Fold ``fold``'s network: read back when stored, else trained and stored."""
        from policysearch.models import build_network
        from policysearch.tasks import make_task
        from policysearch.training import Trainer, resolve_device

        options = self.run.options
        path = self.folder / f"fold-{fold.number}.pt"
        record = state["folds"].get(str(fold.number))
        share = len(fold.train) / self.train_size
        device = resolve_device(options.device)
        if record is not None and path.exists():
            tasks = [make_task(spec) for spec in self.run.dataset.tasks]
            model = build_network(tasks, self.space.budget.encoder)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return FoldModel(fold, model.to(device), float(record["seconds"]), share,
                             record["metrics"], record["weights"], reused=True)
        data = FoldDataset(self.run.dataset, fold)
        with Trainer(self.fold_policy(), data, self.space.budget, seed=self.seed,
                     device=options.device, threads=self.run.threads,
                     eval_split="val") as trainer:
            result = trainer.run()
            model = trainer.model
            weights = dict(result.weights)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        state["folds"][str(fold.number)] = {"seconds": result.seconds,
                                            "metrics": result.metrics, "weights": weights,
                                            "train": len(fold.train),
                                            "heldout": len(fold.heldout)}
        self._save_state(state)
        return FoldModel(fold, model, result.seconds, share, result.metrics, weights,
                         reused=False)

    # --- candidates ----------------------------------------------------------------------------

    def _storage(self) -> optuna.storages.BaseStorage:
        from policysearch.search.optuna_study import open_storage

        store, _ = open_storage(str(self.folder / "candidates.journal"), self.folder)
        return store  # type: ignore[return-value]

    def _study(self, storage: Any, fold: int) -> optuna.Study:
        study = optuna.create_study(storage=storage, study_name=f"fold-{fold}",
                                    direction="minimize", load_if_exists=True)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # cut off by a kill
        return study

    def candidate_policy(self, values: Mapping[str, Any]) -> Policy:
        """A candidate's policy: the space's policy of its values, with the fixed weighting."""
        from dataclasses import replace

        return replace(policy_from_params(self.space, self.tasks,
                                          {**self._placeholders, **values}),
                       weighting=self.weighting)

    def score_fold(self, fold_model: FoldModel, study: optuna.Study) -> None:
        """Propose and score candidates on the fold until it has ``candidates`` of them."""
        from policysearch.density import DensityScorer
        from policysearch.tasks import make_task
        from policysearch.training import resolve_device

        settings, fold = self.settings, fold_model.fold
        weights = ({t: float(w) for t, w in self.weighting.weights.items()}
                   if self.weighting.weights else fold_model.weights)
        scorer = DensityScorer(
            fold_model.model, [make_task(s) for s in self.run.dataset.tasks],
            FoldDataset(self.run.dataset, fold).split("val"), weights=weights, seed=self.seed,
            device=resolve_device(self.run.options.device), copies=settings.copies,
            batch_size=max(self.space.budget.batch_size, 32), amp=self.space.budget.amp)
        started, scored_now = time.perf_counter(), 0
        while True:
            done = _complete(study)
            if len(done) >= settings.candidates:
                return
            sampler = make_sampler(self.space, self.seed * 1_009 + fold.number, len(done))
            study.sampler = sampler
            trial = study.ask()
            values = suggest(trial, self.params)
            policy = self.candidate_policy(values)
            t0 = time.perf_counter()
            score = scorer.score(policy)
            seconds = time.perf_counter() - t0
            trial.set_user_attr("lost", score.lost)
            trial.set_user_attr("seconds", seconds)
            trial.set_user_attr("policy", policy.summary())
            loss = score.loss if math.isfinite(score.loss) else _WORST
            study.tell(trial, loss)
            scored_now += 1
            best = min([loss, *(t.value for t in done if t.value is not None)])
            rate = scored_now / max(1e-9, time.perf_counter() - started)
            self.run.emit(CandidateScored(fold=fold.number, folds=len(self.folds),
                                          number=len(done), candidates=settings.candidates,
                                          loss=loss, best=best, rate=rate,
                                          policy=policy.summary()))

    # --- the union -----------------------------------------------------------------------------

    def kept(self, studies: Sequence[optuna.Study]) -> list[tuple[int, optuna.trial.FrozenTrial]]:
        """(fold, trial) of each fold's ``keep`` lowest-loss candidates."""
        chosen = []
        for fold, study in enumerate(studies):
            ranked = sorted(_complete(study), key=lambda t: (t.value, t.number))
            chosen += [(fold, t) for t in ranked[:self.settings.keep]]
        return chosen

    def union(self, kept: Sequence[tuple[int, optuna.trial.FrozenTrial]]) -> Policy:
        """The exported policy: the kept candidates' shared parts as sub-policies, each task
        view likewise, duplicates dropped (first kept first)."""
        shared: list[tuple[Slot, ...]] = []
        views: dict[str, list[tuple[Slot, ...]]] = {}
        for _, trial in kept:
            candidate = self.candidate_policy(trial.params)
            shared += [p for p in _sub_policies(candidate.shared) if p not in shared]
            for task, view in candidate.per_task.items():
                own = views.setdefault(task, [])
                own += [s for s in _sub_policies(view) if s not in own]
        base = self.candidate_policy(kept[0][1].params).base
        provenance = {
            "method": "density", "space": self.space.name, "dataset": self.run.dataset.name,
            "seed": self.seed, "image_size": self.space.budget.image_size,
            "density": {**self.settings.to_dict(),
                        "kept": [{"fold": f, "trial": t.number, "loss": t.value}
                                 for f, t in kept],
                        "weighting": self.weighting_text}}
        return Policy(tasks=self.tasks, structure="subpolicies", base=base,
                      shared=SubPolicies(tuple(shared or [()])),
                      per_task={t: SubPolicies(tuple(v)) for t, v in views.items() if v},
                      weighting=self.weighting, provenance=provenance)

    # --- the whole search ------------------------------------------------------------------------

    def search(self) -> DensityOutcome:
        from policysearch.exports.best_policy import export_policy

        state = self._load_state()
        storage = self._storage()
        studies = [self._study(storage, f.number) for f in self.folds]
        stored = sum(1 for f in self.folds if str(f.number) in state["folds"]
                     and (self.folder / f"fold-{f.number}.pt").exists())
        self.run.emit(DensityStarted(
            folds=len(self.folds), train=len(self.folds[0].train),
            heldout=len(self.folds[0].heldout), candidates=self.settings.candidates,
            copies=self.settings.copies, reference=self.space.reference,
            weighting=self.weighting_text, stored=stored,
            scored=sum(len(_complete(s)) for s in studies)))
        for fold, study in zip(self.folds, studies, strict=True):
            record = state["folds"].get(str(fold.number))
            if record is not None and len(_complete(study)) >= self.settings.candidates:
                # Scored already: the model need not even be read back.
                self.run.emit(FoldTrained(fold=fold.number, folds=len(self.folds),
                                          seconds=float(record["seconds"]), reused=True,
                                          metrics=record["metrics"]))
                continue
            model = self.fold_model(fold, state)
            self.run.emit(FoldTrained(fold=fold.number, folds=len(self.folds),
                                      seconds=model.seconds, reused=model.reused,
                                      metrics=model.metrics))
            self.score_fold(model, study)
        table = self.table(studies)
        kept = self.kept(studies)
        cost = self.cost(state, studies)
        outcome = DensityOutcome(table=table, policy=None, cost=cost)
        out = self.run.out_dir
        table.to_csv(out / "results.csv", index=False)
        (out / "results.md").write_text(self.markdown(table, cost), encoding="utf-8")
        outcome.files += [out / "results.csv", out / "results.md"]
        if kept:
            outcome.policy = self.union(kept)
            outcome.export = export_policy(outcome.policy, out / "best_policy.yaml")
            outcome.files.append(outcome.export.yaml_path)
            outcome.files.extend(outcome.export.albumentations.values())
        if self.run.options.report:
            report = out / "report.html"
            report.write_text(self.report(table, cost, outcome.policy), encoding="utf-8")
            outcome.files.append(report)
        return outcome

    # --- results ---------------------------------------------------------------------------------

    def table(self, studies: Sequence[optuna.Study]) -> pd.DataFrame:
        """Every scored candidate: fold, candidate, loss, rank in its fold, kept, lost share,
        seconds, policy."""
        rows = []
        for fold, study in enumerate(studies):
            ranked = sorted(_complete(study), key=lambda t: (t.value, t.number))
            for rank, trial in enumerate(ranked, start=1):
                rows.append({"fold": fold, "candidate": trial.number, "loss": trial.value,
                             "rank": rank, "kept": rank <= self.settings.keep,
                             "lost": trial.user_attrs.get("lost", 0.0),
                             "seconds": trial.user_attrs.get("seconds"),
                             "policy": trial.user_attrs.get("policy", "")})
        return pd.DataFrame(rows, columns=["fold", "candidate", "loss", "rank", "kept", "lost",
                                           "seconds", "policy"])

    def cost(self, state: dict[str, Any], studies: Sequence[optuna.Study]) -> dict[str, Any]:
        """The search's cost in full trainings: the folds' shares, plus the scoring seconds over
        a full training's seconds (estimated from the folds: seconds over share)."""
        records = [state["folds"][str(f.number)] for f in self.folds
                   if str(f.number) in state["folds"]]
        shares = [r["train"] / self.train_size for r in records]
        fold_seconds = sum(float(r["seconds"]) for r in records)
        full_seconds = (fold_seconds / sum(shares)) if shares and sum(shares) else None
        scoring = sum(float(t.user_attrs.get("seconds", 0.0)) for s in studies
                      for t in _complete(s))
        candidates = sum(len(_complete(s)) for s in studies)
        inference = scoring / full_seconds if full_seconds else None
        return {"folds": len(records), "fold_trainings": sum(shares),
                "fold_seconds": fold_seconds, "candidates": candidates,
                "scoring_seconds": scoring, "full_training_seconds": full_seconds,
                "scoring_trainings": inference,
                "full_trainings": (sum(shares) + inference) if inference is not None else None,
                "candidates_per_second": candidates / scoring if scoring else None}

    def cost_line(self, cost: Mapping[str, Any]) -> str:
        total = cost.get("full_trainings")
        rate = cost.get("candidates_per_second")
        return (f"search cost: {cost['folds']} fold trainings = {cost['fold_trainings']:.2f} "
                f"full trainings ({cost['fold_seconds'] / 60:.1f} min), "
                f"{cost['candidates']} candidates scored in {cost['scoring_seconds'] / 60:.1f} "
                "min" + (f" ({rate:.2f} candidates/s)" if rate else "")
                + (f" = {cost['scoring_trainings']:.2f} full trainings; "
                   f"{total:.2f} full trainings in all" if total is not None else ""))

    def markdown(self, table: pd.DataFrame, cost: Mapping[str, Any]) -> str:
        lines = [f"# Density matching: {self.space.name} on {self.run.dataset.name}", "",
                 f"{self.settings.folds} folds (held out {self.settings.heldout:g}), "
                 f"{self.settings.candidates} candidates per fold, {self.settings.copies} "
                 f"copies per held-out sample, the {self.settings.keep} best of each fold "
                 f"kept; folds trained under {self.space.reference}; loss weights: "
                 f"{self.weighting_text}.", "", self.cost_line(cost) + ".", "",
                 "Loss: the mean over held-out samples of each sample's lowest weighted loss "
                 "over its augmented copies (lower is better); each fold's model scores its "
                 "own held-out part, so losses compare within a fold only.", ""]
        lines.append(table.to_markdown(index=False, floatfmt=".4f") if not table.empty
                     else "(no candidate scored yet)")
        return "\n".join(lines) + "\n"

    def report(self, table: pd.DataFrame, cost: Mapping[str, Any],
               policy: Policy | None) -> str:
        from policysearch.reporting.policy_table import policy_rows
        from policysearch.reporting.report import html_page

        summary = (f"<p>{html.escape(self.cost_line(cost))}.</p>"
                   f"<p class=\"note\">Loss weights: {html.escape(self.weighting_text)}.</p>")
        folds = pd.DataFrame([
            {"fold": k, "candidates": int((table["fold"] == k).sum()),
             "best loss": table.loc[table["fold"] == k, "loss"].min()}
            for k in range(len(self.folds))])
        sections = [("summary", "Summary", summary),
                    ("folds", "Folds", folds.to_html(index=False, classes="cost",
                                                      float_format="%.4f")),
                    ("candidates", "Candidates", "<div class=\"scroll\">" + table.to_html(
                        index=False, classes="results", float_format="%.4f") + "</div>")]
        if policy is not None:
            rows = pd.DataFrame(policy_rows(policy))
            sections.insert(1, ("policy", "Exported policy (the union)",
                                rows.to_html(index=False, classes="cost")))
        return html_page(f"density matching: {self.space.name}",
                         [f"dataset {self.run.dataset.name}",
                          f"reference {self.space.reference}"], sections)


def _sub_policies(part: Any) -> tuple[tuple[Slot, ...], ...]:
    """A candidate's shared part or task view as sub-policies: its own, or its slots as one
    (a randaugment space is refused before any candidate)."""
    if isinstance(part, SubPolicies):
        return part.policies
    return (tuple(part),)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def search_density(run: SearchRun, settings: DensitySettings) -> DensityOutcome:
    """Run or resume the density search of ``run`` (see the module docstring)."""
    return DensitySearch(run, settings).search()
