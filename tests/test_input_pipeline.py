"""The input pipeline: batches prepared in loader worker processes give the numbers of batches
prepared in the training process; draws keyed by (seed, epoch, sample, view, slot); the three
seeds apart; a dead worker fails the trial; no worker outlives its trial."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import policysearch.input_pipeline as pipeline
import policysearch.training as training
from policysearch.augment import MultiTaskAugment, Phase, Policy, Slot, Weighting
from policysearch.config import Budget
from policysearch.data import get_dataset
from policysearch.errors import UserError
from policysearch.training import Seeds, Trainer, TrialFailed, run_trial
from tests.reliability_counts import Recorder

BUDGET = Budget(epochs=2, batch_size=8, image_size=32)


@pytest.fixture(scope="module")
def dataset():  # noqa: ANN201
    return get_dataset("shapes", size=32, n_train=40, n_val=16, n_test=16)


def _tasks(dataset) -> dict[str, str]:  # noqa: ANN001
    return {t.name: t.kind for t in dataset.tasks}


def _scheduled(tasks: dict[str, str]) -> Policy:
    """A schedule whose phase changes after epoch 0, with a per-task view in both phases."""
    dense = next(n for n, k in tasks.items() if k == "segmentation")
    own = {dense: (Slot("solarize", 0.5, 0.5),)}
    first = (Slot("hflip", 0.5, 1.0), Slot("rotate", 0.7, 0.5), Slot("brightness", 0.5, 0.6))
    second = (Slot("crop", 0.8, 0.4), Slot("invert", 0.3, 1.0))
    return Policy(tasks=tasks, weighting=Weighting("equal"),
                  schedule=[Phase(0, first, own), Phase(1, second, own)])


def _children() -> set[int]:
    """Live loader workers of this process: its descendants (read from /proc), but for the
    helpers that multiprocessing keeps for the whole process (the forkserver, whose children
    the workers are when it starts them, and the resource tracker)."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), command)
    me = os.getpid()
    helpers = {pid for pid, (parent, command) in table.items() if parent == me
               and (b"forkserver import main" in command or b"resource_tracker" in command)}
    found: set[int] = set()
    frontier = {me}
    while frontier:
        frontier = {pid for pid, (parent, _) in table.items()
                    if parent in frontier and pid not in found}
        found |= frontier
    return found - helpers


def _same(a: training.TrialResult, b: training.TrialResult) -> bool:
    return a.history == b.history and a.weights == b.weights and a.metrics == b.metrics


def test_the_numbers_do_not_depend_on_the_number_of_loader_workers(dataset) -> None:  # noqa: ANN001
    policy = _scheduled(_tasks(dataset))
    results = {w: run_trial(policy, dataset, BUDGET.model_copy(update={"loader_workers": w}),
                            seed=3, device="cpu", threads=1)
               for w in (0, 1, 2)}
    assert _same(results[0], results[1]) and _same(results[0], results[2])
    assert results[2].loader_workers == 2
    # And they are a real function of the seed, not a constant.
    other = run_trial(policy, dataset, BUDGET, seed=4, device="cpu", threads=1)
    assert not _same(results[0], other)


def test_workers_started_by_forkserver_give_the_same_numbers(dataset, monkeypatch) -> None:  # noqa: ANN001
    # The start method of a process with threads (Optuna's heartbeat, a Ray actor): the
    # dataset and policies are pickled to the workers instead of inherited.
    policy = _scheduled(_tasks(dataset))
    alone = run_trial(policy, dataset, BUDGET, seed=1, device="cpu", threads=1)
    monkeypatch.setattr(pipeline, "start_method", lambda: "forkserver")
    parallel = run_trial(policy, dataset, BUDGET.model_copy(update={"loader_workers": 2}),
                         seed=1, device="cpu", threads=1)
    assert _same(alone, parallel)


def test_fork_only_in_a_process_without_other_threads() -> None:
    # Native threads count: this process has run OpenCV and torch, whose pools are threads.
    expected = "fork" if len(os.listdir("/proc/self/task")) == 1 else "forkserver"
    assert pipeline.start_method() == expected
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert pipeline.start_method() == "forkserver"
    finally:
        stop.set()
        thread.join(timeout=10)


def test_auto_is_no_worker_on_the_cpu_and_all_cpus_but_one_on_a_gpu() -> None:
    import torch

    assert pipeline.default_loader_workers(torch.device("cpu"), 8) == 0
    assert pipeline.default_loader_workers(torch.device("cuda"), 8) == 7
    assert pipeline.default_loader_workers(torch.device("cuda"), 1) == 1


# --- keyed draws ---------------------------------------------------------------------------------


def _sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {"image": rng.integers(0, 255, (24, 24, 3), dtype=np.uint8),
            "mask": rng.integers(0, 3, (24, 24)).astype(np.int64)}


def test_a_sample_draws_the_same_whatever_ran_before() -> None:
    policy = Policy(tasks={"seg": "segmentation"},
                    shared=(Slot("hflip", 0.5, 1.0), Slot("rotate", 0.5, 0.8),
                            Slot("brightness", 0.5, 0.5)))
    samples = [_sample(i) for i in range(12)]
    forward = MultiTaskAugment(policy, seed=5)
    backward = MultiTaskAugment(policy, seed=5)
    ahead = [forward(s, index=i)["shared"]["image"] for i, s in enumerate(samples)]
    behind = [backward(s, index=i)["shared"]["image"]
              for i, s in reversed(list(enumerate(samples)))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(ahead, behind, strict=True))
    # Epoch and seed are part of the key.
    forward.set_epoch(1)
    later = [forward(s, index=i)["shared"]["image"] for i, s in enumerate(samples)]
    assert not all(np.array_equal(a, b) for a, b in zip(ahead, later, strict=True))
    reseeded = MultiTaskAugment(policy, seed=6)
    other = [reseeded(s, index=i)["shared"]["image"] for i, s in enumerate(samples)]
    assert not all(np.array_equal(a, b) for a, b in zip(ahead, other, strict=True))


def test_policies_that_share_a_slot_draw_the_same_numbers_for_it() -> None:
    # Common random numbers: slot 0 is the same random flip in both policies, slot 1 differs
    # (never / always invert), so each sample is flipped alike and the outputs are inverses.
    tasks = {"seg": "segmentation"}
    never = Policy(tasks=tasks, shared=(Slot("hflip", 0.5, 1.0), Slot("invert", 0.0, 1.0)))
    always = Policy(tasks=tasks, shared=(Slot("hflip", 0.5, 1.0), Slot("invert", 1.0, 1.0)))
    a, b = MultiTaskAugment(never, seed=2), MultiTaskAugment(always, seed=2)
    flips = set()
    for i in range(40):
        s = _sample(i)
        x, y = a(s, index=i)["shared"], b(s, index=i)["shared"]
        assert np.array_equal(255 - x["image"], y["image"])
        assert np.array_equal(x["mask"], y["mask"])
        flips.add(np.array_equal(x["mask"], s["mask"]))
    assert flips == {True, False}  # and the flip is random


def test_a_task_view_draws_apart_from_the_shared_view() -> None:
    policy = Policy(tasks={"seg": "segmentation", "c": "classification"},
                    shared=(Slot("hflip", 0.5, 1.0),), per_task={"seg": (Slot("hflip", 0.5, 1.0),)})
    aug = MultiTaskAugment(policy, seed=0)
    same = {np.array_equal(v["shared"]["image"], v["seg"]["image"])
            for v in (aug(_sample(i), index=i) for i in range(40))}
    assert same == {True, False}


# --- seeds ---------------------------------------------------------------------------------------


def test_model_order_and_augmentation_seeds_can_be_set_apart(dataset) -> None:  # noqa: ANN001
    import torch

    policy = _scheduled(_tasks(dataset))

    def parts(seeds: Seeds) -> tuple[list, list, np.ndarray]:
        with Trainer(policy, dataset, BUDGET, seed=seeds, device="cpu", threads=1) as t:
            params = [p.detach().clone() for p in t.model.parameters()]
            order = [b.tolist() for b in t.batch_order(0)]
            request = t._requests(policy.at_epoch(0), [list(range(8))])[0]
            images = t.pipeline.batches.prepare(request)["images"]["shared"].numpy()
        return params, order, images

    base = parts(Seeds.of(0))
    for changed, seeds in ((0, Seeds(1, 0, 0)), (1, Seeds(0, 1, 0)), (2, Seeds(0, 0, 1))):
        other = parts(seeds)
        same = [all(torch.equal(x, y) for x, y in zip(base[0], other[0], strict=True)),
                base[1] == other[1], np.array_equal(base[2], other[2])]
        assert same == [i != changed for i in range(3)], seeds


# --- measuring and faults ------------------------------------------------------------------------


def test_every_epoch_records_its_data_wait(dataset) -> None:  # noqa: ANN001
    result = run_trial(_scheduled(_tasks(dataset)), dataset, BUDGET, seed=0, device="cpu",
                       threads=1)
    assert len(result.data_wait) == BUDGET.epochs
    # With no worker the whole preparation is waiting: never nothing.
    assert all(0.0 < w <= 1.0 for w in result.data_wait)


def test_no_worker_outlives_its_trial(dataset) -> None:  # noqa: ANN001
    before = _children()
    budget = BUDGET.model_copy(update={"loader_workers": 2})
    run_trial(_scheduled(_tasks(dataset)), dataset, budget, seed=0, device="cpu", threads=1)
    assert _children() == before


def test_ctrl_c_mid_epoch_leaves_no_worker(dataset, monkeypatch,  # noqa: ANN001
                                           reliability: Recorder) -> None:
    before = _children()
    seen: list[set[int]] = []
    real = Trainer._step_losses

    def interrupted(self, batch):  # noqa: ANN001, ANN202
        seen.append(_children() - before)
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(Trainer, "_step_losses", interrupted)
    budget = BUDGET.model_copy(update={"loader_workers": 2})
    with pytest.raises(KeyboardInterrupt):
        run_trial(_scheduled(_tasks(dataset)), dataset, budget, seed=0, device="cpu", threads=1)
    assert len(seen[-1]) == 2  # the workers ran (and persisted into epoch 1) …
    assert _children() == before  # … and are gone
    reliability.fault("Ctrl-C mid-epoch with loader workers", trials=1)


def _wait_dead(pid: int) -> None:
    """Until ``pid`` is a zombie or gone (bounded: a killed process ends at once)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)  # polling a state, not timing an assertion


def test_a_killed_worker_fails_the_trial_with_the_reason(dataset, monkeypatch,  # noqa: ANN001
                                                         reliability: Recorder) -> None:
    before = _children()
    real = Trainer._step_losses
    killed: list[int] = []

    def kill_one(self, batch):  # noqa: ANN001, ANN202
        if not killed:
            victim = min(_children() - before)
            killed.append(victim)
            os.kill(victim, signal.SIGKILL)
            _wait_dead(victim)
        return real(self, batch)

    monkeypatch.setattr(Trainer, "_step_losses", kill_one)
    budget = BUDGET.model_copy(update={"loader_workers": 2, "epochs": 3})
    with pytest.raises(TrialFailed, match=r"a loader worker died at epoch \d: DataLoader worker"):
        run_trial(_scheduled(_tasks(dataset)), dataset, budget, seed=0, device="cpu", threads=1)
    assert _children() == before
    reliability.fault("a loader worker killed", trials=1)


def test_a_corrupt_sample_met_in_a_worker_names_its_file(tmp_path: Path,
                                                         reliability: Recorder) -> None:
    from tests.test_folder import build as build_folder

    root = build_folder(tmp_path / "folder", n=12)
    data = get_dataset(f"folder:{root}", size=32)
    # A file whose header is fine but whose pixels cannot be decoded: found only when read.
    victim = root / "images" / "img3.png"
    victim.write_bytes(victim.read_bytes()[:60])
    policy = Policy(tasks=_tasks(data), shared=(Slot("hflip", 0.5, 1.0),))
    budget = BUDGET.model_copy(update={"loader_workers": 1, "epochs": 1})
    with pytest.raises(UserError) as caught:
        run_trial(policy, data, budget, seed=0, device="cpu", threads=1)
    assert str(caught.value).startswith(f"{victim}: corrupt image")
    assert "\n" not in str(caught.value)
    reliability.fault("a corrupt image met in a loader worker", trials=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coco", "nyuv2", "attributes", "folder", "multidigits"])
def test_every_dataset_format_gives_the_same_numbers_in_workers(tmp_path: Path, name: str,
                                                                monkeypatch) -> None:  # noqa: ANN001
    from tests.test_formats_e2e import FORMATS

    source = FORMATS[name][0](tmp_path / "data")
    data = get_dataset(source, size=32) if ":" in source else get_dataset(
        source, size=32, n_train=24, n_val=8, n_test=8)
    tasks = _tasks(data)
    dense = next((n for n, k in tasks.items() if k in ("segmentation", "depth")), None)
    own = {dense: (Slot("brightness", 0.5, 0.5),)} if dense else {}
    policy = Policy(tasks=tasks, weighting=Weighting("equal"),
                    shared=(Slot("hflip", 0.5, 1.0), Slot("rotate", 0.5, 0.5)), per_task=own)
    budget = BUDGET.model_copy(update={"epochs": 1, "batch_size": 4})
    alone = run_trial(policy, data, budget, seed=0, device="cpu", threads=1)
    forked = run_trial(policy, data, budget.model_copy(update={"loader_workers": 2}), seed=0,
                       device="cpu", threads=1)
    monkeypatch.setattr(pipeline, "start_method", lambda: "forkserver")
    pickled = run_trial(policy, data, budget.model_copy(update={"loader_workers": 1}), seed=0,
                        device="cpu", threads=1)
    assert _same(alone, forked) and _same(alone, pickled)


def test_persistent_workers_take_a_new_policy_between_epochs(dataset, monkeypatch) -> None:  # noqa: ANN001
    # What a PBT member's exploit step does: the next epoch trains under another policy.
    originals = {dataset.split("train")[i]["image"].tobytes() for i in range(40)}
    inverted = {(255 - dataset.split("train")[i]["image"]).tobytes() for i in range(40)}
    kinds: list[set[str]] = []
    real = training.normalise

    def spy(images):  # noqa: ANN001, ANN202
        kinds[-1].update("inverted" if i.tobytes() in inverted else
                         "original" if i.tobytes() in originals else "other"
                         for i in images.numpy())
        return real(images)

    monkeypatch.setattr(training, "normalise", spy)
    tasks = _tasks(dataset)
    plain = Policy(tasks=tasks, weighting=Weighting("equal"))
    invert = Policy(tasks=tasks, weighting=Weighting("equal"), shared=(Slot("invert", 1.0, 1.0),))
    budget = BUDGET.model_copy(update={"loader_workers": 2, "epochs": 3})
    with Trainer(plain, dataset, budget, seed=0, device="cpu", threads=1) as trainer:
        for policy in (plain, invert, plain):
            kinds.append(set())
            trainer.train_epoch(policy)
    assert kinds == [{"original"}, {"inverted"}, {"original"}]


def test_a_batch_crosses_to_the_trainer_as_one_small_message() -> None:
    import torch

    images = torch.arange(2 * 5 * 5 * 3, dtype=torch.uint8).reshape(2, 5, 5, 3)
    batch = {"images": {"shared": images},
             "targets": {"c": torch.tensor([1, 0]),
                         "d": {"boxes": [torch.rand(3, 4), torch.zeros(0, 4)],
                               "valid": torch.tensor([True, False]), "image_size": (5, 5)},
                         "m": torch.rand(5, 5, 2).permute(2, 0, 1)},  # not contiguous
             "views": {"c": "shared"}, "size": 2}
    shipped = pipeline._Shipped.of(batch)
    # What goes through the pipe: a handle, far under the 4,096 bytes a pipe writes atomically.
    from multiprocessing.reduction import ForkingPickler

    assert len(ForkingPickler.dumps(shipped)) < 4096
    back = shipped.unpack()
    assert back["views"] == batch["views"] and back["size"] == 2
    assert back["targets"]["d"]["image_size"] == (5, 5)
    assert torch.equal(back["images"]["shared"], batch["images"]["shared"])
    assert torch.equal(back["targets"]["d"]["valid"], batch["targets"]["d"]["valid"])
    assert [b.shape for b in back["targets"]["d"]["boxes"]] == [(3, 4), (0, 4)]
    assert torch.equal(back["targets"]["d"]["boxes"][0], batch["targets"]["d"]["boxes"][0])
    assert torch.equal(back["targets"]["m"], batch["targets"]["m"])
    assert back["targets"]["c"].dtype == torch.int64
    with pytest.raises(pipeline._NotShippable):
        pipeline._Shipped.of({"odd": object()})


def _flat(batch: dict) -> list:
    """A prepared batch's tensors and values, copied, in a fixed order."""
    import torch

    out: list = []

    def walk(value) -> None:  # noqa: ANN001
        if isinstance(value, torch.Tensor):
            out.append(value.clone())
        elif isinstance(value, dict):
            for key in sorted(value):
                out.append(key)
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        else:
            out.append(value)

    walk(batch)
    return out


def _equal(a: list, b: list) -> bool:
    import torch

    return len(a) == len(b) and all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
                                    for x, y in zip(a, b, strict=True))


def test_a_worker_never_overwrites_a_batch_the_trainer_still_holds(dataset) -> None:  # noqa: ANN001
    # Workers reuse their shared-memory blocks: holding every batch of an epoch at once, dropping
    # each at once, and a prefetch for other requests drained unread all give the true batches.
    import torch

    policy = _scheduled(_tasks(dataset)).at_epoch(0)
    samples, tasks = dataset.split("train"), [training.make_task(t) for t in dataset.tasks]

    def requests(epoch: int) -> list:
        order = np.random.default_rng(epoch).permutation(len(samples))
        return [pipeline.BatchRequest(epoch=epoch, indices=tuple(int(i) for i in order[s:s + 4]),
                                      seed=1, phase=policy, key=policy.augmentation_key())
                for s in range(0, len(order), 4)]

    cpu = torch.device("cpu")
    inline = pipeline.InputPipeline(samples, tasks, workers=0, device=cpu)
    expected = {e: [_flat(b) for b in inline.epoch(requests(e))] for e in range(3)}
    workers = pipeline.InputPipeline(samples, tasks, workers=1, device=cpu)
    try:
        held = list(workers.epoch(requests(0)))  # 10 batches, more than a worker's pool
        assert len(held) > pipeline._POOLED_BLOCKS
        assert all(_equal(_flat(b), x) for b, x in zip(held, expected[0], strict=True))
        del held
        assert all(_equal(_flat(b), x)
                   for b, x in zip(workers.epoch(requests(1)), expected[1], strict=True))
        workers.prefetch(requests(0))
        assert all(_equal(_flat(b), x)
                   for b, x in zip(workers.epoch(requests(2)), expected[2], strict=True))
        workers.prefetch(requests(1))
        assert all(_equal(_flat(b), x)
                   for b, x in zip(workers.epoch(requests(1)), expected[1], strict=True))
    finally:
        workers.close()


def test_a_worker_reuses_a_block_once_the_trainer_lets_it_go() -> None:
    blocks = pipeline._Blocks()
    taken = [blocks.take(1000) for _ in range(pipeline._POOLED_BLOCKS + 1)]
    assert all(pipeline._flag(b)[0] == 1 for b in taken)
    assert len(blocks.pool) == pipeline._POOLED_BLOCKS  # the last one is not kept
    pipeline._release(pipeline._flag(taken[1]))
    assert blocks.take(900).data_ptr() == taken[1].data_ptr()
    pipeline._release(pipeline._flag(taken[2]))
    bigger = blocks.take(5000)  # too small: replaced by a larger one
    assert bigger.numel() >= 5000 and blocks.pool[2] is bigger


def test_a_received_batch_frees_its_block_only_when_its_last_tensor_goes() -> None:
    import gc
    import pickle as plain_pickle
    from multiprocessing.reduction import ForkingPickler

    import torch

    batch = {"images": {"shared": torch.ones(2, 4, 4, 3, dtype=torch.uint8)},
             "targets": {"c": torch.tensor([1, 0])}, "views": {"c": "shared"}, "size": 2}
    blocks = pipeline._Blocks()
    sent = pipeline._Shipped.of(batch, blocks)
    # As the DataLoader sends it: the received block maps the same shared memory.
    received = plain_pickle.loads(ForkingPickler.dumps(sent))
    flag = pipeline._flag(sent.block)
    assert flag[0] == 1
    kept = received.unpack()["targets"]["c"][1:]
    del received
    gc.collect()
    assert flag[0] == 1  # a tensor of the batch is still held
    del kept
    gc.collect()
    assert flag[0] == 0
    unread = plain_pickle.loads(ForkingPickler.dumps(pipeline._Shipped.of(batch, blocks)))
    assert flag[0] == 1
    del unread  # dropped unread (an epoch's end drains a prefetch)
    gc.collect()
    assert flag[0] == 0


@pytest.mark.parametrize("value", ["x", "-1", "65", "1.5"])
def test_a_bad_loader_workers_flag_is_one_line_and_exit_2(value: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from policysearch.cli import app

    result = CliRunner().invoke(app, ["search", "--loader-workers", value,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --loader-workers: expected 'auto'")
    assert not (tmp_path / "run").exists()
