"""Every flag does what it says (issue 22, point 4): each ``search``, ``benchmark`` and
``preview`` flag *takes effect*, not only that it is stored, and ``results --top N`` prints
exactly N rows.

tests/test_cli_api.py checks that every option reaches the API with its value; this file checks
what training then does with it, on a 1-trial, 1-epoch search of 48 tiny images. Where a
recorded output shows the effect (a trial's metrics, runs.csv, benchmark.csv/.json, the PNG)
the test reads it; where none does (the optimizer's learning rate, the network's input, the
steps per epoch, the encoder built, the torch threads) ``trainings`` watches the training: it
wraps ``Trainer._build`` to see the optimizer, the network and the training split each trial
or benchmark run was built with, and their use step by step.

Ray-only flags (``--cpus-per-trial``, ``--scheduler``) are checked at the boundary to Ray: what
the engine hands ``tune.Tuner`` (the resource request of each trial, the trial scheduler),
without starting Ray (tests/test_ray_engine.py runs real searches on a real head); given to
an Optuna-engine search they change nothing, which the command says on standard error.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from policysearch import api
from policysearch.augment import get_baseline
from policysearch.cli import app
from policysearch.data import get_dataset
from policysearch.evaluation.benchmark import SEARCHED, paired_test
from policysearch.reporting.preview import preview_layout
from policysearch.training import Trainer
from tests.conftest import TINY_SPACE

runner = CliRunner()

# TINY_SPACE (shapes, 48 training images of 32×32) trained 1 epoch; no per-task slots, so that
# --dataset can swap in a dataset with other tasks. The space's own values, which each flag
# must change: lr 0.003, batch size 16, 32×32 images, the small encoder, shapes' 4 tasks.
SPACE = {**{k: v for k, v in TINY_SPACE.items() if k != "per_task"},
         "budget": {**TINY_SPACE["budget"], "epochs": 1}}
N_TRAIN = SPACE["dataset_options"]["n_train"]
SHAPES_TASKS = ["shape", "seg", "objects", "depth"]
DIGITS_TASKS = ["left_digit", "right_digit", "seg"]


# --- watching the training ---------------------------------------------------------------------


@dataclass
class Training:
    """What one ``Trainer`` (a search trial, a benchmark run) was built with and did."""

    tasks: list[str]
    train_size: int
    epochs: int
    encoder: str
    encoder_state: dict[str, torch.Tensor]
    threads: int
    initial_lr: float  # the optimizer's learning rate before its schedule
    step_lrs: list[float] = field(default_factory=list)  # in force at each optimizer step
    train_inputs: list[tuple[int, ...]] = field(default_factory=list)  # network input per step
    eval_inputs: list[tuple[int, ...]] = field(default_factory=list)
    steps_per_epoch: list[int] = field(default_factory=list)

    @property
    def batch_sizes(self) -> list[int]:
        return [shape[0] for shape in self.train_inputs]


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Training]]:
    """Every training started in this process during the test, in order."""
    seen: list[Training] = []
    build, train_epoch = Trainer._build, Trainer.train_epoch

    def watched_build(self: Trainer, policy: Any, budget: Any) -> None:
        build(self, policy, budget)
        watch = Training(
            tasks=list(self.task_names), train_size=len(self.train), epochs=budget.epochs,
            encoder=type(self.model.encoder).__name__,
            encoder_state={k: v.detach().clone()
                           for k, v in self.model.encoder.state_dict().items()},
            threads=torch.get_num_threads(),
            initial_lr=self.optimizer.param_groups[0]["initial_lr"])
        seen.append(watch)
        self._watch = watch  # type: ignore[attr-defined]
        features, step = self.model.features, self.optimizer.step

        def watched_features(images: torch.Tensor) -> Any:
            inputs = watch.train_inputs if self.model.training else watch.eval_inputs
            inputs.append(tuple(images.shape))
            return features(images)

        def watched_step(*args: Any, **kwargs: Any) -> Any:
            watch.step_lrs.append(self.optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        self.model.features = watched_features  # type: ignore[method-assign]
        self.optimizer.step = watched_step  # type: ignore[method-assign]

    def watched_train_epoch(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        watch: Training = self._watch  # type: ignore[attr-defined]
        before = len(watch.step_lrs)
        losses = train_epoch(self, *args, **kwargs)
        watch.steps_per_epoch.append(len(watch.step_lrs) - before)
        return losses

    monkeypatch.setattr(Trainer, "_build", watched_build)
    monkeypatch.setattr(Trainer, "train_epoch", watched_train_epoch)
    threads = torch.get_num_threads()
    yield seen
    torch.set_num_threads(threads)  # (a trial sets this process's threads)


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return path


def _ok(result: Any) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def _search(space: Path, out: Path, *flags: str) -> None:
    _ok(runner.invoke(app, ["search", "--space", str(space), "--out", str(out), "--trials", "1",
                            "--device", "cpu", "--threads", "1", "--no-report", "--quiet",
                            *flags]))


def _weights_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state-dict file of the small encoder unlike any initialisation of the trial seeds."""
    from policysearch.models import make_encoder

    torch.manual_seed(12345)
    state = {k: v + 0.5 if v.is_floating_point() else v
             for k, v in make_encoder("small").state_dict().items()}
    path = tmp_path / "small.pt"
    torch.save(state, path)
    return path, state


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _check_defaults(t: Training) -> None:
    """The space's own values, which every case below changes."""
    assert t.initial_lr == pytest.approx(0.003) and t.step_lrs[0] == pytest.approx(0.003)
    assert t.batch_sizes == [16, 16, 16] and t.steps_per_epoch == [3]
    assert {s[2:] for s in t.train_inputs + t.eval_inputs} == {(32, 32)}
    assert t.encoder == "SmallCNN" and t.tasks == SHAPES_TASKS
    assert t.train_size == N_TRAIN and t.threads == 1


# --- search ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    flags: tuple[str, ...]
    check: Callable[[Training, Path], None]  # the trial's training, the search's --out


def _lr(t: Training, out: Path) -> None:
    # One epoch of 3 steps has no warm-up: the first step runs at the flag's rate, which the
    # cosine schedule then lowers.
    assert t.initial_lr == 0.0123 and t.step_lrs[0] == pytest.approx(0.0123)
    assert t.step_lrs == sorted(t.step_lrs, reverse=True)


def _batch_size(t: Training, out: Path) -> None:
    # 48 images in batches of 7: ceil(48 / 7) = 7 steps, the last of 6.
    assert t.steps_per_epoch == [math.ceil(N_TRAIN / 7)]
    assert t.batch_sizes == [7] * 6 + [6]


def _image_size(t: Training, out: Path) -> None:
    assert t.train_inputs and {s[1:] for s in t.train_inputs + t.eval_inputs} == {(3, 48, 48)}


def _epochs(t: Training, out: Path) -> None:
    assert t.steps_per_epoch == [3, 3]
    assert [r.epochs for r in api.records(out).records] == [2]


def _encoder(t: Training, out: Path) -> None:
    assert t.encoder == "MobileNetV3Encoder"


def _dataset(t: Training, out: Path) -> None:
    # The trial trained and was evaluated on multidigits' tasks: the dataset read was it.
    assert t.tasks == DIGITS_TASKS
    found = api.records(out)
    assert found.dataset == "multidigits"
    assert list(found.records[0].metrics or {}) == DIGITS_TASKS


def _subset(t: Training, out: Path) -> None:
    assert t.train_size == 20 and sum(t.batch_sizes) == 20


def _threads(t: Training, out: Path) -> None:
    assert t.threads == 2


SEARCH_CASES = {
    "lr": Case(("--lr", "0.0123"), _lr),
    "batch-size": Case(("--batch-size", "7"), _batch_size),
    "image-size": Case(("--image-size", "48"), _image_size),
    "epochs": Case(("--epochs", "2"), _epochs),
    "encoder": Case(("--encoder", "mobilenet_v3_small"), _encoder),
    "dataset": Case(("--dataset", "multidigits"), _dataset),
    "subset": Case(("--subset", "20"), _subset),
    "threads": Case(("--threads", "2"), _threads),  # (the last --threads given counts)
}
# Two torch threads on a busy 2-core machine can take a minute where one takes a second.
SLOW = {"threads"}


def _cases(table: dict[str, Case]) -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
            for name in table]


def test_without_flags_a_trial_trains_as_the_space_says(space: Path, tmp_path: Path,
                                                        trainings: list[Training]) -> None:
    _search(space, tmp_path / "out")
    assert len(trainings) == 1
    _check_defaults(trainings[0])
    assert not (tmp_path / "out" / "report.html").exists()  # --no-report


@pytest.mark.parametrize("name", _cases(SEARCH_CASES))
def test_a_search_flag_changes_how_the_trial_trains(name: str, space: Path, tmp_path: Path,
                                                    trainings: list[Training]) -> None:
    case = SEARCH_CASES[name]
    _search(space, tmp_path / "out", *case.flags)
    assert len(trainings) == 1  # --trials 1: the reference trial alone
    case.check(trainings[0], tmp_path / "out")


def test_search_weights_initialise_the_encoder(space: Path, tmp_path: Path,
                                               trainings: list[Training]) -> None:
    path, state = _weights_file(tmp_path)
    _search(space, tmp_path / "out", "--weights", str(path))
    assert _equal_states(trainings[0].encoder_state, state)
    _search(space, tmp_path / "plain")
    assert not _equal_states(trainings[1].encoder_state, state)


def test_search_seed_sets_the_trials_numbers(space: Path, tmp_path: Path) -> None:
    def metrics(seed: int, name: str) -> dict:
        _search(space, tmp_path / name, "--seed", str(seed))
        found = api.records(tmp_path / name)
        assert found.seed == seed
        return found.records[0].metrics or {}

    first = metrics(3, "a")
    assert metrics(3, "b") == first  # the same seed: the same training, the same numbers
    assert metrics(4, "c") != first


def test_search_method_sets_the_sampler_that_proposes_the_trials(space: Path,
                                                                 tmp_path: Path) -> None:
    """``--method random`` makes the study a random search (its stored space says so, and a
    resume under another method is refused); ``--method tpe`` a TPE one."""
    from policysearch.search.options import SearchOptions, resolve_space
    from policysearch.search.sampling import make_sampler

    _search(space, tmp_path / "r", "--method", "random")
    assert api.records(tmp_path / "r").space["sampler"]["name"] == "random"
    for method, kind in (("random", optuna.samplers.RandomSampler),
                         ("tpe", optuna.samplers.TPESampler)):
        resolved = resolve_space(SearchOptions(space=space, method=method))
        assert isinstance(make_sampler(resolved, seed=0, n_existing=0), kind)
    resumed = runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "r"),
                                  "--trials", "1", "--device", "cpu", "--threads", "1",
                                  "--quiet", "--no-report", "--method", "tpe"])
    assert resumed.exit_code == 2
    assert "sampler.name: 'random' → 'tpe'" in " ".join(resumed.output.split())


def test_search_report_flag_writes_the_report(space: Path, tmp_path: Path) -> None:
    _ok(runner.invoke(app, ["search", "--space", str(space), "--out", str(tmp_path / "out"),
                            "--trials", "1", "--device", "cpu", "--threads", "1", "--quiet"]))
    assert "<html" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8").lower()


# --- search: the Ray engine's flags, at the boundary to Ray -------------------------------------


class Handed(Exception):
    """Raised by the recording ``tune.Tuner``: the search reached Ray (and goes no further)."""


@pytest.fixture
def tuner(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What the Ray engines hand ``tune.Tuner``, recorded instead of run; the connection to a
    cluster is replaced by the per-trial resources the engine would check against it."""
    pytest.importorskip("policysearch.search.ray_engine")
    import ray
    from ray import tune

    from policysearch.search import ray_engine, ray_pbt

    calls: list[dict[str, Any]] = []

    def record(trainable: Any, **kwargs: Any) -> None:
        calls.append({"trainable": trainable, **kwargs})
        raise Handed

    @contextlib.contextmanager
    def connected(options: Any) -> Iterator[dict[str, float]]:
        yield options.ray_resources()

    monkeypatch.setattr(tune, "Tuner", record)
    for module in (ray_engine, ray_pbt):
        monkeypatch.setattr(module, "ray_connected", connected)
    # tune.with_parameters leaves a hook holding the dataset for the next ray.init.
    hooks = ray._private.worker._post_init_hooks
    kept = list(hooks)
    yield calls
    hooks[:] = kept


def _ray_search(space: Path, out: Path, *flags: str) -> Any:
    return runner.invoke(app, ["search", "--engine", "ray", "--space", str(space), "--out",
                               str(out), "--trials", "3", "--device", "cpu", "--threads", "1",
                               "--no-report", "--quiet", *flags])


def test_ray_cpus_per_trial_and_scheduler_are_what_ray_is_asked_for(
        tmp_path: Path, tuner: list[dict[str, Any]]) -> None:
    from policysearch.search.ray_engine import SearchTrialsASHA

    path = tmp_path / "asha.yaml"  # a pruner, which --scheduler asha follows
    path.write_text(yaml.safe_dump({**SPACE, "pruner": {"name": "median", "n_startup_trials": 0,
                                                       "n_warmup_steps": 0}}))

    def handed(out: str, *flags: str) -> dict[str, Any]:
        result = _ray_search(path, tmp_path / out, *flags)
        assert isinstance(result.exception, Handed), result.output
        return tuner[-1]

    def cpus(call: dict[str, Any]) -> float:
        return call["trainable"]._resources.required_resources["CPU"]

    asha = handed("asha", "--cpus-per-trial", "2")
    assert cpus(asha) == 2.0
    assert isinstance(asha["tune_config"].scheduler, SearchTrialsASHA)
    assert cpus(handed("threads")) == 1.0  # without the flag: --threads
    assert handed("none", "--scheduler", "none")["tune_config"].scheduler is None
    # pbt: the PBT engine, which trains its reference runs first (with the same resources).
    pbt = handed("pbt", "--scheduler", "pbt", "--cpus-per-trial", "2")
    assert type(pbt["tune_config"].search_alg).__name__ == "_References"
    assert cpus(pbt) == 2.0


def test_ray_flags_on_an_optuna_search_are_said_to_be_ignored(
        space: Path, tmp_path: Path, trainings: list[Training]) -> None:
    def stderr(out: str, *flags: str) -> str:
        result = runner.invoke(app, ["search", "--space", str(space), "--out",
                                     str(tmp_path / out), "--trials", "1", "--device", "cpu",
                                     "--threads", "1", "--no-report", "--quiet", *flags])
        _ok(result)
        return result.stderr

    assert ("warning: --cpus-per-trial, --scheduler: only for --engine ray; ignored with "
            "--engine optuna") in stderr("o", "--scheduler", "none", "--cpus-per-trial", "2")
    assert [t.threads for t in trainings] == [1]  # --threads, not --cpus-per-trial
    assert "--engine ray" not in stderr("plain")


# --- benchmark -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-trial search of SPACE as study ``flags``: its --out folder."""
    folder = tmp_path_factory.mktemp("searched")
    path = folder / "flags.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    _search(path, folder / "s", "--study", "flags")
    return folder / "s"


def _bench(policy: Path, out: Path, *flags: str) -> pd.DataFrame:
    _ok(runner.invoke(app, ["benchmark", "--policy", str(policy), "--out", str(out),
                            "--seeds", "1", "--baselines", "none", "--reference", "none",
                            "--no-ablations", "--device", "cpu", "--threads", "1", "--quiet",
                            *flags]))
    return pd.read_csv(out / "runs.csv")


def _other_space(tmp_path: Path) -> Path:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({
        **SPACE, "name": "other", "dataset_options": {**SPACE["dataset_options"], "n_train": 40},
        "budget": {**SPACE["budget"], "image_size": 24}}))
    return path


def test_without_flags_the_benchmark_trains_as_the_search(searched: Path, tmp_path: Path,
                                                          trainings: list[Training]) -> None:
    runs = _bench(searched / "best_policy.yaml", tmp_path / "b")
    assert sorted(runs["contender"]) == sorted([SEARCHED, "none"])
    assert len(trainings) == 2
    for t in trainings:
        _check_defaults(t)


BENCHMARK_CASES = {
    "lr": Case(("--lr", "0.0123"), _lr),
    "batch-size": Case(("--batch-size", "7"), _batch_size),
    "image-size": Case(("--image-size", "48"), _image_size),
    "encoder": Case(("--encoder", "mobilenet_v3_small"), _encoder),
    "subset": Case(("--subset", "20"), _subset),
    "threads": Case(("--threads", "2"), _threads),
}


@pytest.mark.parametrize("name", _cases(BENCHMARK_CASES))
def test_a_benchmark_flag_changes_how_every_run_trains(name: str, searched: Path,
                                                       tmp_path: Path,
                                                       trainings: list[Training]) -> None:
    case = BENCHMARK_CASES[name]
    _bench(searched / "best_policy.yaml", tmp_path / "b", *case.flags)
    assert len(trainings) == 2  # the searched policy and the baseline, one seed each
    for t in trainings:
        case.check(t, tmp_path / "b")


def test_benchmark_epochs_and_seed(searched: Path, tmp_path: Path,
                                   trainings: list[Training]) -> None:
    runs = _bench(searched / "best_policy.yaml", tmp_path / "b", "--epochs", "2", "--seed", "5")
    assert all(t.steps_per_epoch == [3, 3] for t in trainings)
    assert (runs["epochs"] == 2).all() and set(runs["seed"]) == {5}


def test_benchmark_space_replaces_the_searchs_dataset_and_budget(
        searched: Path, tmp_path: Path, trainings: list[Training]) -> None:
    _bench(searched / "best_policy.yaml", tmp_path / "b", "--space", str(_other_space(tmp_path)))
    for t in trainings:
        assert t.train_size == 40 and {s[2:] for s in t.train_inputs} == {(24, 24)}


def test_benchmark_dataset_is_the_dataset_read(searched: Path, tmp_path: Path,
                                               trainings: list[Training]) -> None:
    policy = tmp_path / "digits.yaml"
    policy.write_text(yaml.safe_dump(get_baseline(
        "flipcrop", dict.fromkeys(DIGITS_TASKS[:2], "classification") | {"seg": "segmentation"}
    ).to_dict()))
    runs = _bench(policy, tmp_path / "b", "--search", str(searched), "--dataset", "multidigits")
    assert [t.tasks for t in trainings] == [DIGITS_TASKS] * 2
    assert {c.split(".")[0] for c in runs.columns if "." in c} == set(DIGITS_TASKS)
    assert json.loads((tmp_path / "b" / "benchmark.json").read_text())["dataset"] == "multidigits"


def test_benchmark_storage_and_study_name_the_search_read(searched: Path, tmp_path: Path,
                                                          trainings: list[Training]) -> None:
    # The policy file alone, away from its search: the study comes from --storage/--study,
    # and with it the study's dataset and budget (the default space's otherwise) and its cost.
    policy = tmp_path / "policy.yaml"
    policy.write_bytes((searched / "best_policy.yaml").read_bytes())
    _bench(policy, tmp_path / "b", "--storage", str(searched / "study.journal"),
           "--study", "flags")
    for t in trainings:
        _check_defaults(t)  # SPACE's budget and data, as the study stored them
    report = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert report["cost"]["study"] == "flags" and report["cost"]["trial_epochs"] == 1


def test_benchmark_significance_picks_the_test(searched: Path, tmp_path: Path) -> None:
    # Two seeds: both tests have a p-value, and they differ (Wilcoxon's two pairs give 0.5 or 1).
    for method, header in (("ttest", "p (paired t-test)"), ("wilcoxon", "p (Wilcoxon)")):
        out = tmp_path / method
        runs = _bench(searched / "best_policy.yaml", out, "--seeds", "2",
                      "--significance", method)
        paired = runs.pivot(index="seed", columns="contender", values="delta_m")
        p = pd.read_csv(out / "benchmark.csv").set_index("contender").loc["none", "p_value"]
        expected = {m: paired_test(list(paired[SEARCHED]), list(paired["none"]), m)["p"]
                    for m in ("ttest", "wilcoxon")}
        assert p == pytest.approx(expected[method])
        assert p != pytest.approx(expected["wilcoxon" if method == "ttest" else "ttest"])
        assert header in (out / "benchmark.md").read_text()


# --- preview -------------------------------------------------------------------------------------


def _preview(tmp_path: Path, name: str, *flags: str) -> Image.Image:
    to = tmp_path / f"{name}.png"
    _ok(runner.invoke(app, ["preview", "--policy", "flipcrop", "--to", str(to), "--n", "2",
                            "--draws", "2", *flags]))
    return Image.open(io.BytesIO(to.read_bytes())).convert("RGB")


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, ...]]]:
    """The image shapes of the samples each preview drew (the PNG scales them to its cells)."""
    from policysearch.reporting import preview

    seen: list[list[tuple[int, ...]]] = []
    render = preview.render_preview

    def watched(policy: Any, samples: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append([tuple(np.asarray(s["image"]).shape) for s in samples])
        return render(policy, samples, *args, **kwargs)

    monkeypatch.setattr(preview, "render_preview", watched)
    return seen


def test_preview_n_draws_and_dataset_shape_the_grid(tmp_path: Path) -> None:
    # The grid's rows are the dataset's tasks per sample; its columns the draws.
    for dataset in ("shapes", "multidigits"):
        for n, draws in ((2, 2), (3, 1)):
            image = _preview(tmp_path, f"{dataset}-{n}-{draws}", "--dataset", dataset,
                             "--n", str(n), "--draws", str(draws))
            data = get_dataset(dataset)
            policy = get_baseline("flipcrop", {t.name: t.kind for t in data.tasks})
            assert image.size == preview_layout(policy, data.tasks, n, draws=draws).size


def test_preview_seed_and_policy_change_the_draws(tmp_path: Path) -> None:
    def cells(image: Image.Image, policy: str) -> list[np.ndarray]:
        """The first row's cells: the untouched sample, then its 2 draws."""
        data = get_dataset("shapes")
        layout = preview_layout(get_baseline(policy, {t.name: t.kind for t in data.tasks}),
                                data.tasks, 2, draws=2)
        return [np.asarray(image.crop(layout.cell_box(0, c))) for c in range(3)]

    first = _preview(tmp_path, "a", "--seed", "1")
    assert np.array_equal(np.asarray(_preview(tmp_path, "b", "--seed", "1")), np.asarray(first))
    assert not np.array_equal(np.asarray(_preview(tmp_path, "c", "--seed", "2")),
                              np.asarray(first))
    # --policy none: every draw is the untouched sample (column 0); flipcrop's are not.
    original, *draws = cells(_preview(tmp_path, "none", "--policy", "none"), "none")
    assert all(np.array_equal(d, original) for d in draws)
    assert not all(np.array_equal(d, original) for d in cells(first, "flipcrop")[1:])


def test_preview_image_size_resizes_the_samples(tmp_path: Path,
                                                drawn: list[list[tuple[int, ...]]]) -> None:
    _preview(tmp_path, "default")
    _preview(tmp_path, "48", "--image-size", "48")
    own = get_dataset("shapes").split("val")[0]["image"].shape  # shapes' own size: 64
    assert own != (48, 48, 3)
    assert drawn == [[own] * 2, [(48, 48, 3)] * 2]


# --- results --top -------------------------------------------------------------------------------


STORED = Path(__file__).resolve().parent / "fixtures" / "stored_studies" / "optuna"  # 3 trials
# A data row of the table: its rank (a number, or - when unranked) and trial number cells.
TABLE_ROW = re.compile(r"^│\s*(?:\d+|-)\s*│\s*\d+\s*│")


def _rows(text: str, format: str) -> int:
    if format == "csv":
        return len(pd.read_csv(io.StringIO(text)))
    if format == "json":
        return len(json.loads(text))
    if format == "md":
        return sum(bool(re.match(r"^\|\s*(?:\d+|-)?\s*\|\s*\d+\s*\|", line))
                   for line in text.splitlines())
    return sum(bool(TABLE_ROW.match(line)) for line in text.splitlines())


@pytest.mark.parametrize("format", ["table", "csv", "md", "json"])
def test_results_top_prints_exactly_n_rows(format: str, tmp_path: Path) -> None:
    out = tmp_path / "study"
    shutil.copytree(STORED, out)  # (results may write beside the study)
    counts = {}
    for top in (None, 1, 2, 3, 5):
        args = ["results", "--out", str(out), "--format", format]
        result = runner.invoke(app, args + (["--top", str(top)] if top else []))
        _ok(result)
        counts[top] = _rows(result.stdout, format)
    assert counts == {None: 3, 1: 1, 2: 2, 3: 3, 5: 3}
