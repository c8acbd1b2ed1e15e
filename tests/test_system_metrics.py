"""System metrics of a training run: CPU and memory (and GPU through NVML) sampled in a background thread
under MLflow's names, spooled with their timestamps by a deferred run and sent by the track stage, or logged
live; switched off by ``tracking.system_metrics``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types

import mlflow
import psutil
import pytest

from segpipe.config import TrackingParams
from segpipe.tracking.deferred import spool_run
from segpipe.tracking.mlflow_tracking import start_run, sync_spools
from segpipe.tracking.spool import Progress, Spool
from segpipe.tracking.system_metrics import GpuReader, SystemSampler, system_metrics
from segpipe.training.tracker import NullTracker

CPU_AND_MEMORY = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
}


class Recorder:
    run_key = "key"

    def __init__(self) -> None:
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


def fast(tracker, interval_s: float = 0.05) -> SystemSampler:
    """A started sampler with an interval below what params allow, to get samples quickly."""
    sampler = SystemSampler(tracker, interval_s)
    sampler.start(psutil)
    return sampler


def test_samples_are_logged_under_mlflows_names_at_consecutive_steps():
    recorder = Recorder()
    sampler = fast(recorder)
    time.sleep(0.4)
    sampler.stop()
    assert len(recorder.logged) >= 3
    assert [step for step, _ in recorder.logged] == list(range(len(recorder.logged)))
    for _, sample in recorder.logged:
        assert set(sample) >= CPU_AND_MEMORY
        assert 0 <= sample["system/cpu_utilization_percentage"] <= 100
        assert 0 < sample["system/system_memory_usage_percentage"] <= 100
    count = len(recorder.logged)
    time.sleep(0.15)
    assert len(recorder.logged) == count  # stopped means stopped


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_the_first_sample_measures_the_cpu_since_the_start():
    recorder = Recorder()
    sampler = fast(recorder, 0.5)
    busy(0.7)  # this thread keeps a core busy through the first interval
    sampler.stop()
    [(_, first), *_] = recorder.logged
    assert first["system/cpu_utilization_percentage"] > 100 / psutil.cpu_count() / 2


def test_switched_off_or_untracked_runs_sample_nothing():
    with system_metrics(Recorder(), TrackingParams(system_metrics=False)) as sampler:
        assert sampler is None
    with system_metrics(NullTracker(), TrackingParams()) as sampler:
        assert sampler is None
    with system_metrics(Recorder(), TrackingParams(system_metrics_interval_s=1)) as sampler:
        assert sampler is not None and sampler.interval_s == 1
    assert not sampler._thread.is_alive()


def test_without_psutil_the_training_runs_unsampled(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psutil", None)  # import fails
    with system_metrics(Recorder(), TrackingParams()) as sampler:
        assert sampler is None
    assert "psutil is not installed" in capsys.readouterr().err


def test_nvml_devices_are_sampled_under_mlflows_gpu_names(monkeypatch):
    memory = types.SimpleNamespace(used=2e9, total=8e9)
    fake = types.SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: f"gpu{index}",
        nvmlDeviceGetMemoryInfo=lambda handle: memory,
        nvmlDeviceGetPowerUsage=lambda handle: 150_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 300_000,
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=87),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert GpuReader().sample() == {
        "gpu_0_memory_usage_percentage": 25.0,
        "gpu_0_memory_usage_megabytes": 2000.0,
        "gpu_0_utilization_percentage": 87.0,
        "gpu_0_power_usage_watts": 150.0,
        "gpu_0_power_usage_percentage": 50.0,
    }


def test_without_nvml_only_cpu_and_memory_are_sampled(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert GpuReader().sample() == {}


def test_a_failing_tracker_stops_the_sampling_not_the_training(capsys):
    class Refusing(Recorder):
        def log_metrics(self, metrics, step=None) -> None:
            raise ValueError("store refused")

    sampler = fast(Refusing())
    time.sleep(0.2)
    assert not sampler._thread.is_alive()
    sampler.stop()
    assert "system metrics stopped: ValueError: store refused" in capsys.readouterr().err


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_deferred_samples_keep_their_timestamps_when_sent(store, tmp_path):
    spools = tmp_path / "spools"
    with spool_run("toy", "unet", {}, None, "key-1", spools) as tracker:
        sampler = fast(tracker)
        for epoch in range(1, 6):  # the training's own calls interleave with the sampler's
            tracker.log_metrics({"val_miou": 0.1 * epoch}, step=epoch)
            time.sleep(0.06)
        sampler.stop()
    [path] = spools.glob("*.jsonl")
    calls, _ = Spool(path).read()
    spooled = {
        call["step"]: call["timestamp"]
        for call in calls
        if call["op"] == "log_metrics" and "system/cpu_utilization_percentage" in call["metrics"]
    }
    assert len(spooled) >= 3
    time.sleep(0.05)  # sent later than sampled
    [(_, run_id)] = sync_spools(store, spools)
    client = mlflow.MlflowClient(store.uri)
    for key in CPU_AND_MEMORY:
        history = client.get_metric_history(run_id, key)
        assert {metric.step: metric.timestamp for metric in history} == spooled
    assert len(client.get_metric_history(run_id, "val_miou")) == 5


def test_live_runs_log_samples_as_they_come(store):
    with start_run(store, "toy", "unet", {}) as tracker:
        sampler = fast(tracker, 0.2)
        deadline = time.monotonic() + 20
        client = mlflow.MlflowClient(store.uri)
        while not client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage"):
            assert time.monotonic() < deadline, "no sample reached the store while the run was going"
            time.sleep(0.1)
        sampler.stop()
    logged = client.get_run(tracker.run_id).data.metrics
    assert set(logged) >= CPU_AND_MEMORY


def append_many(spool: Spool, writer: int) -> None:
    for index in range(200):
        spool.append({"op": "log_metrics", "writer": writer, "index": index})


def test_records_written_from_two_threads_stay_whole(tmp_path):
    spool = Spool(tmp_path / "run.jsonl")
    spool.create(Progress())
    writers = [threading.Thread(target=append_many, args=(spool, writer)) for writer in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    spool.close()
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines[1:]]
    written = sorted((record["writer"], record["index"]) for record in records)
    assert written == [(writer, index) for writer in range(2) for index in range(200)]


def test_what_the_train_stage_calls_imports_no_mlflow():
    code = (
        "import sys, segpipe.tracking.system_metrics, segpipe.tracking.dataset\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'mlflow', 'psutil', 'pydantic'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]
