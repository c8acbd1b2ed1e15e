"""What system-metric sampling costs a train stage: the stage with ``tracking.system_metrics`` on and off, in
alternating rounds on the project's prepared data (deferred tracking, as the default pipeline runs).

    python benchmarks/system_metrics_cost.py [--architecture unet] [--rounds 3] [--interval 1]

Run it after ``dvc repro prepare validate``; the stage runs in a scratch copy of ``data/prepared``. Writes
``reports/benchmarks/system_metrics_cost.{json,md}`` (median wall and CPU seconds of each setting).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from segpipe import io
from segpipe.config import load_params, parse_params
from segpipe.paths import ProjectPaths
from segpipe.stages.train import run_train

ROOT = Path(__file__).resolve().parents[1]


def timed_stage(project: Path, architecture: str, sampling: bool, interval: float) -> tuple[float, float]:
    """Wall and CPU seconds of one train stage with sampling on or off."""
    raw = load_params(ROOT / "params.yaml").model_dump(by_alias=True)
    raw["tracking"].update(live=False, system_metrics=sampling, system_metrics_interval_s=interval)
    raw["train"]["resume"] = "never"
    params = parse_params(raw)
    start, cpu = time.perf_counter(), time.process_time()
    run_train(params, architecture, ProjectPaths(project), progress=False)
    return time.perf_counter() - start, time.process_time() - cpu


def scratch_project(folder: Path) -> Path:
    shutil.copytree(ROOT / "data" / "prepared", folder / "data" / "prepared")
    shutil.copytree(ROOT / "reports" / "validation", folder / "reports" / "validation")
    if (ROOT / "dvc.lock").is_file():
        shutil.copyfile(ROOT / "dvc.lock", folder / "dvc.lock")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architecture", default="unet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples when on")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        project = scratch_project(Path(scratch))
        os.chdir(project)
        for round_index in range(args.rounds):
            for sampling in (False, True) if round_index % 2 == 0 else (True, False):
                times[sampling].append(timed_stage(project, args.architecture, sampling, args.interval))
                print(f"round {round_index} sampling={sampling}: {times[sampling][-1][0]:.2f} s", flush=True)
    medians = {
        key: {"wall_s": statistics.median(t[0] for t in runs), "cpu_s": statistics.median(t[1] for t in runs)}
        for key, runs in (("off", times[False]), ("on", times[True]))
    }
    overhead = 100 * (medians["on"]["wall_s"] - medians["off"]["wall_s"]) / medians["off"]["wall_s"]
    report = {**vars(args), "out": str(args.out), "medians": medians, "wall_overhead_percent": overhead}
    io.write_json(args.out / "system_metrics_cost.json", report)
    io.write_text(
        args.out / "system_metrics_cost.md",
        f"# System metrics: cost on the train stage ({args.architecture}, {args.rounds} alternating rounds, "
        f"one sample every {args.interval:g} s)\n\n"
        "| sampling | median wall s | median CPU s |\n|---|---:|---:|\n"
        + "".join(f"| {key} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} |\n" for key, m in medians.items())
        + f"\nWall-time overhead: {overhead:+.2f} %.\n",
    )
    print(f"overhead {overhead:+.2f} %")


if __name__ == "__main__":
    main()
