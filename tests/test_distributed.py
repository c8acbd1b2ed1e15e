"""Data-parallel training: two torchrun processes (gloo, CPU) train like one process with the global batch,
only rank 0 writes, a resumed two-process run ends where an uninterrupted one does; the loader's sharding and
the launcher decisions as unit tests.

Run as a script (``python tests/test_distributed.py OUT`` under torchrun), this file is the worker: it trains
each scenario on its rank and saves the rank's weights and history to OUT for the tests to compare.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segpipe.data.cache import SplitArrays
from segpipe.data.loader import BatchLoader, Loader, Sampling
from segpipe.data.streaming import StreamingLoader
from segpipe.tasks.segment import SegmentTask
from segpipe.training import distributed
from segpipe.training.distributed import SINGLE_PROCESS, DistributedContext
from segpipe.training.state import SavedState, StateStore, read_state
from segpipe.training.tracker import NullTracker, Tracker
from segpipe.training.trainer import Trainer, TrainerSettings, TrainingDiverged, TrainResult

WORLD_SIZE = 2
GLOBAL_BATCH = 4
EPOCHS = 3  # 16 training samples: 4 steps per epoch
EVERY = 3  # mid-epoch states after steps 3, 6 and 9
RESUME_FROM = "state-00000006.safetensors"  # epoch 2, batch 2
CPU = torch.device("cpu")


def tiny_model(batchnorm: bool) -> nn.Module:
    """A two-layer conv net, the same weights on every rank."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(8, 2, 1))


def random_split(count: int, seed: int) -> SplitArrays:
    """Random images and two-class masks without ignored pixels (so per-rank mean losses average exactly)."""
    rng = np.random.default_rng(seed)
    return SplitArrays(
        rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8),
        rng.integers(0, 2, (count, 16, 16), dtype=np.uint8),
    )


@dataclasses.dataclass
class PoisonedTask(SegmentTask):
    """Segmentation whose loss turns NaN on rank ``rank`` at step ``bad_step`` (counting from 1)."""

    rank: int = 0
    bad_step: int = 0
    steps: int = 0

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        loss = super().loss(outputs, targets)
        return loss * torch.nan if (self.rank, self.steps) == (1, self.bad_step) else loss


class RecordingTracker:
    """Appends one line per call to ``calls-rank<rank>.txt``."""

    run_key = None

    def __init__(self, folder: Path, rank: int) -> None:
        self.calls = folder / f"calls-rank{rank}.txt"

    def record(self, call: str) -> None:
        with self.calls.open("a") as file:
            file.write(call + "\n")

    def log_params(self, params) -> None:
        self.record("log_params")

    def log_metrics(self, metrics, step=None) -> None:
        self.record(f"log_metrics {step}")

    def log_model(self, model, input_example) -> None:
        self.record("log_model")

    def on_best(self, model, record) -> None:
        self.record("on_best")


class RecordingStore(StateStore):
    """A state store that also records each save with the tracker."""

    def __init__(self, folder: Path, tracker: RecordingTracker) -> None:
        super().__init__(folder, "digest", keep=50)
        self.tracker = tracker

    def save(self, global_step: int, payload: dict) -> Path:
        self.tracker.record(f"save {global_step}")
        return super().save(global_step, payload)


def train(
    context: DistributedContext,
    batchnorm: bool = False,
    channels_last: bool = False,
    record_in: Path | None = None,
    resume: SavedState | None = None,
    nan_on_rank_1_at: int = 0,
    streaming: bool = False,
) -> tuple[nn.Module, TrainResult]:
    """Train the tiny model for ``EPOCHS`` on this rank's share of a global batch of ``GLOBAL_BATCH``; with
    ``record_in``, record tracker calls, ``on_best`` calls and state saves there; with ``streaming``, each
    rank's batches are read from the split by a worker process."""
    model = distributed.wrap_model(tiny_model(batchnorm), context, channels_last=channels_last)
    sampling = Sampling(
        GLOBAL_BATCH // context.world_size,
        shuffle=True,
        hflip=True,
        vflip=True,
        seed=5,
        drop_last=True,
        rank=context.rank,
        world_size=context.world_size,
    )
    train_loader = loader(random_split(16, 0), sampling, streaming)
    val_loader = loader(random_split(8, 1), Sampling(8), streaming)
    tracker: Tracker = NullTracker()
    states, on_best = None, None
    if record_in is not None:
        recorder = tracker = RecordingTracker(record_in, context.rank)
        states, on_best = RecordingStore(record_in / "states", recorder), recorder.on_best
    settings = TrainerSettings(
        EPOCHS, 1e-2, 1e-4, progress=False, channels_last=channels_last, checkpoint_every_steps=EVERY
    )
    task = PoisonedTask(2, 255, context.rank, nan_on_rank_1_at)
    trainer = Trainer(task, settings, tracker, on_best=on_best, states=states, context=context)
    result = trainer.fit(model, train_loader, val_loader, resume)
    return distributed.unwrap(model), result


def loader(split: SplitArrays, sampling: Sampling, streaming: bool) -> Loader:
    """The in-memory loader, or with ``streaming`` one worker process reading each batch from the split."""
    if streaming:
        return StreamingLoader(split, sampling, CPU, workers=1)
    return BatchLoader.from_sampling(split, sampling, CPU)


def worker(out: Path) -> None:
    """One rank of the two-process job: every scenario, each rank's weights and history saved to ``out``."""
    torch.set_num_threads(1)
    # DDP's warning when the weights' layout changed after wrapping (a gradient copy per step)
    warnings.filterwarnings("error", message="Grad strides do not match bucket view strides")
    with distributed.session(CPU) as context:
        scenarios = {
            "plain": {},
            "streaming": {"streaming": True},
            "batchnorm": {"batchnorm": True},
            "recorded": {"record_in": out, "channels_last": True},
        }
        for name, options in scenarios.items():
            save_outcome(out / f"{name}-rank{context.rank}.pt", *train(context, **options))
        distributed.barrier(context)  # every state is written before rank 0 reads one
        path = out / "states" / RESUME_FROM
        state = SavedState(path, read_state(path)) if context.is_main else None
        resumed = train(context, channels_last=True, resume=distributed.broadcast_from_main(state, context))
        save_outcome(out / f"resumed-rank{context.rank}.pt", *resumed)
        try:
            train(context, nan_on_rank_1_at=6)
        except TrainingDiverged as error:
            (out / f"diverged-rank{context.rank}.txt").write_text(str(error))


def save_outcome(path: Path, model: nn.Module, result: TrainResult) -> None:
    history = [
        {key: value for key, value in dataclasses.asdict(record).items() if "seconds" not in key}
        for record in result.history
    ]  # what every rank must agree on: all but the timings
    torch.save({"weights": model.state_dict(), "history": history}, path)


def load_outcome(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outcomes of the two-process job (``torchrun --standalone``, gloo)."""
    out = tmp_path_factory.mktemp("ddp")
    command = distributed.torchrun_command(Path(__file__), [str(out)], WORLD_SIZE)
    finished = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180
    )
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-4000:]
    return out


def assert_same_weights(expected: dict, actual: dict, exact: bool = True) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        if exact:
            assert torch.equal(value, actual[key]), key
        else:
            torch.testing.assert_close(actual[key], value, atol=1e-5, rtol=1e-5, msg=key)


def test_two_processes_with_half_batches_train_like_one_process_with_the_whole_batch(two_ranks):
    reference, expected = train(SINGLE_PROCESS)
    ranks = [load_outcome(two_ranks / f"plain-rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert_same_weights(ranks[0]["weights"], ranks[1]["weights"])
    assert_same_weights(reference.state_dict(), ranks[0]["weights"], exact=False)
    assert ranks[0]["history"] == ranks[1]["history"]
    for record, single in zip(ranks[0]["history"], expected.history, strict=True):
        assert record["train_loss"] == pytest.approx(single.train_loss, rel=1e-5)
        assert record["validation"] == pytest.approx(single.validation, rel=1e-5)


def test_two_streaming_processes_train_like_one_in_memory_process(two_ranks):
    """Each rank reads only its shard of every global batch from the split: the same training."""
    reference, expected = train(SINGLE_PROCESS)
    ranks = [load_outcome(two_ranks / f"streaming-rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert_same_weights(ranks[0]["weights"], ranks[1]["weights"])
    assert_same_weights(reference.state_dict(), ranks[0]["weights"], exact=False)
    assert ranks[0]["history"] == load_outcome(two_ranks / "plain-rank0.pt")["history"]
    for record, single in zip(ranks[0]["history"], expected.history, strict=True):
        assert record["train_loss"] == pytest.approx(single.train_loss, rel=1e-5)


def test_batchnorm_statistics_end_the_same_on_every_rank(two_ranks):
    """Each rank's BatchNorm updates its running statistics from its own shard; the main rank's are
    broadcast before validation, so every rank validates and returns the model the main rank saves."""
    ranks = [load_outcome(two_ranks / f"batchnorm-rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert "1.running_mean" in ranks[0]["weights"]
    assert_same_weights(ranks[0]["weights"], ranks[1]["weights"])
    assert ranks[0]["history"] == ranks[1]["history"]


def test_sync_batchnorm_on_the_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
        distributed.wrap_model(tiny_model(True), DistributedContext(0, 2, 0, "gloo"), sync_batchnorm=True)


def test_only_rank_0_saves_states_calls_on_best_and_logs(two_ranks):
    calls = (two_ranks / "calls-rank0.txt").read_text().splitlines()
    assert not (two_ranks / "calls-rank1.txt").exists()
    logged = [c for c in calls if c.startswith("log_metrics")]
    assert logged == [f"log_metrics {e}" for e in range(1, EPOCHS + 1)]
    assert [c for c in calls if c.startswith("save")] == [f"save {s}" for s in (3, 4, 6, 8, 9, 12)]
    assert "on_best" in calls
    ranks = [load_outcome(two_ranks / f"recorded-rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert_same_weights(ranks[0]["weights"], ranks[1]["weights"])


def test_two_process_training_resumed_mid_epoch_ends_like_an_uninterrupted_run(two_ranks):
    uninterrupted = load_outcome(two_ranks / "recorded-rank0.pt")
    for rank in range(WORLD_SIZE):
        resumed = load_outcome(two_ranks / f"resumed-rank{rank}.pt")
        assert_same_weights(uninterrupted["weights"], resumed["weights"])
        for before, after in zip(uninterrupted["history"], resumed["history"], strict=True):
            assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-6)
            assert after["validation"] == before["validation"]


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    """Rank 1's loss turns NaN at step 6 (rank 0's one step later, through the averaged gradients): both ranks
    raise at the check after step 6, naming it, instead of one rank waiting for the other forever."""
    messages = [(two_ranks / f"diverged-rank{rank}.txt").read_text() for rank in range(WORLD_SIZE)]
    assert messages[0] == messages[1]
    assert "NaN/Inf at epoch 2, step 6 (batch 2 of 4)" in messages[0]


def test_rank_batches_together_are_the_single_process_global_batch():
    split = random_split(13, 3)
    single = BatchLoader(split, 4, CPU, shuffle=True, hflip=True, vflip=True, seed=9, drop_last=True)
    ranks = [
        BatchLoader(
            split,
            2,
            CPU,
            shuffle=True,
            hflip=True,
            vflip=True,
            seed=9,
            drop_last=True,
            rank=rank,
            world_size=2,
        )
        for rank in range(2)
    ]
    for loader in (single, *ranks):
        loader.set_epoch(4)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3
    for (images, masks), *shards in zip(single, *ranks, strict=True):
        assert torch.equal(images, torch.cat([shard_images for shard_images, _ in shards]))
        assert torch.equal(masks, torch.cat([shard_masks for _, shard_masks in shards]))
    with pytest.raises(ValueError, match="needs drop_last"):
        BatchLoader(split, 2, CPU, rank=1, world_size=2)
    with pytest.raises(ValueError, match="not one of the 2 ranks"):
        BatchLoader(split, 2, CPU, drop_last=True, rank=2, world_size=2)


def test_fit_refuses_a_model_or_loader_not_set_up_for_its_context():
    loader = BatchLoader(random_split(8, 0), 2, CPU, drop_last=True)
    settings = TrainerSettings(1, 1e-2, 0.0, progress=False)
    trainer = Trainer(SegmentTask(2, 255), settings, context=DistributedContext(0, 2, 0, "gloo"))
    with pytest.raises(ValueError, match="wrap the model"):
        trainer.fit(tiny_model(False), loader, loader)


def test_context_comes_from_the_launcher_environment():
    torchrun = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "29500",
    }
    assert DistributedContext.from_environment(CPU, {}) == SINGLE_PROCESS
    one_rank = {**torchrun, "RANK": "0", "WORLD_SIZE": "1"}
    assert DistributedContext.from_environment(CPU, one_rank) == SINGLE_PROCESS
    on_cpu = DistributedContext.from_environment(CPU, torchrun)
    assert on_cpu == DistributedContext(3, 4, 1, "gloo") and not on_cpu.is_main
    assert on_cpu.local_device(CPU) == CPU
    on_cuda = DistributedContext.from_environment(torch.device("cuda"), torchrun)
    assert on_cuda.backend == "nccl" and on_cuda.local_device(torch.device("cuda")) == torch.device("cuda", 1)


def test_a_plain_process_initialises_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    model = tiny_model(False)
    with distributed.session(CPU) as context:
        assert context == SINGLE_PROCESS and context.is_main
        assert not torch.distributed.is_initialized()
        assert distributed.wrap_model(model, context, sync_batchnorm=True) is model
        value = torch.tensor(2.0)
        assert distributed.mean_across_ranks(value, context) is value
        assert distributed.broadcast_from_main("state", context) == "state"


def test_torchrun_command_for_one_node_and_for_several():
    python = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4"]
    one_node = distributed.torchrun_command("pipelines/train.py", ["--architecture", "unet"], 4)
    assert one_node == [*python, "--standalone", "pipelines/train.py", "--architecture", "unet"]
    several = distributed.torchrun_command(
        "train.py", [], 4, nnodes=2, node_rank=1, rdzv_endpoint="node0:29400"
    )
    assert several == [
        *python,
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--rdzv-endpoint",
        "node0:29400",
        "train.py",
    ]
    with pytest.raises(ValueError, match="rendezvous endpoint"):
        distributed.torchrun_command("train.py", [], 4, nnodes=2)


def test_a_stage_relaunches_under_torchrun_only_for_several_processes_and_not_under_it(monkeypatch):
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    assert not distributed.needs_torchrun(1, {})
    assert distributed.needs_torchrun(2, {})
    assert not distributed.needs_torchrun(2, torchrun)
    executed = []
    monkeypatch.setattr(os, "execv", lambda path, argv: executed.append((path, argv)))
    command = distributed.torchrun_command("pipelines/train.py", ["--architecture", "unet"], 2)
    distributed.exec_torchrun(command)
    assert executed == [(sys.executable, command)]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
