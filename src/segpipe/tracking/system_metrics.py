"""CPU, memory and (with ``nvidia-ml-py`` and an NVIDIA GPU) GPU use of a training run, sampled in a
background thread and logged through the run's tracker as MLflow's system metrics (``system/...``, the names
and units of MLflow's own monitor), so the UI's System metrics tab shows them. Going through the tracker, the
samples are spooled with their timestamps by a deferred run and sent live by a live one, without MLflow in the
training process."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from segpipe.training.tracker import Tracker

if TYPE_CHECKING:
    from segpipe.config import TrackingParams

PREFIX = "system/"
MEGABYTE = 1e6


def cpu_memory_sample(psutil: Any) -> dict[str, float]:
    """CPU use since the previous sample (all cores, %) and system memory in use."""
    memory = psutil.virtual_memory()
    return {
        "cpu_utilization_percentage": float(psutil.cpu_percent()),
        "system_memory_usage_megabytes": memory.used / MEGABYTE,
        "system_memory_usage_percentage": memory.used / memory.total * 100,
    }


class GpuReader:
    """NVIDIA GPUs through NVML (``nvidia-ml-py``); no GPUs where the package or a driver is missing."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no package or no driver: CPU and memory only
            return
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for index, handle in enumerate(self.handles):
            try:
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                power = self.nvml.nvmlDeviceGetPowerUsage(handle)
                limit = self.nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
                busy = self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            except self.nvml.NVMLError:
                continue  # a device that does not report one of them is left out of this sample
            values |= {
                f"gpu_{index}_memory_usage_percentage": memory.used / memory.total * 100,
                f"gpu_{index}_memory_usage_megabytes": memory.used / MEGABYTE,
                f"gpu_{index}_utilization_percentage": float(busy),
                f"gpu_{index}_power_usage_watts": power / 1000,
                f"gpu_{index}_power_usage_percentage": power / limit * 100,
            }
        return values

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.nvmlShutdown()


class SystemSampler:
    """Logs one sample every ``interval_s`` (the first after one interval, as MLflow's monitor does) until
    stopped; sample ``n`` is logged at step ``n``."""

    def __init__(self, tracker: Tracker, interval_s: float) -> None:
        self.tracker = tracker
        self.interval_s = interval_s
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segpipe-system-metrics", daemon=True)

    def start(self, psutil: Any) -> None:
        self._psutil = psutil
        self._gpus = GpuReader()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._gpus.close()

    def sample(self) -> dict[str, float]:
        """One sample under MLflow's names."""
        values = cpu_memory_sample(self._psutil) | self._gpus.sample()
        return {PREFIX + name: round(value, 1) for name, value in values.items()}

    def _run(self) -> None:
        self._psutil.cpu_percent()  # starts the first sample's interval (psutil keeps one per thread)
        while not self._stop.wait(self.interval_s):
            try:
                self.tracker.log_metrics(self.sample(), step=self.samples)
            except Exception as error:  # the training goes on without system metrics
                print(f"system metrics stopped: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                return
            self.samples += 1


@contextlib.contextmanager
def system_metrics(tracker: Tracker, params: TrackingParams) -> Iterator[SystemSampler | None]:
    """Sample the machine into ``tracker``'s run while the block runs (``tracking.system_metrics``, every
    ``tracking.system_metrics_interval_s``); nothing for an untracked run."""
    if tracker.run_key is None or not params.system_metrics:
        yield None
        return
    try:
        import psutil  # only where system metrics are recorded
    except ImportError:
        print("system metrics are not recorded: psutil is not installed", file=sys.stderr, flush=True)
        yield None
        return
    sampler = SystemSampler(tracker, params.system_metrics_interval_s)
    sampler.start(psutil)
    try:
        yield sampler
    finally:
        sampler.stop()
