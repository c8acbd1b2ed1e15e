"""Benchmark: what MLflow tracking adds to the default pipeline — `dvc repro -f` with tracking on vs off.

    python benchmarks/tracking_cost.py [--rounds 2] [--set tracking.live=true]

Clones the committed HEAD twice into a temporary folder, one copy with ``tracking.enabled: false``, and runs
the whole default pipeline in each, alternating (off, on, off, on, …) so that drift in the machine's speed
hits both alike. Each copy runs its own code (``PYTHONPATH``), with this environment's packages. Per run it
records the wall time, the CPU time of all its processes, and the seconds the training epochs themselves took
(from ``models/**/history.json``): the wall time outside the epochs is where tracking costs, and it is much
less sensitive to the machine's speed than the total. Writes ``reports/benchmarks/tracking_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from segpipe import io

ROOT = Path(__file__).resolve().parents[1]


def clone(target: Path, tracking: bool, overrides: list[str]) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    params_file = target / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["tracking"]["enabled"] = tracking
    for override in overrides:
        dotted, value = override.split("=", 1)
        *sections, key = dotted.split(".")
        section = params
        for name in sections:
            section = section[name]
        section[key] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def training_seconds(project: Path) -> float:
    """Seconds the training epochs took, summed over every trained model."""
    return sum(
        epoch["seconds"]
        for history in (project / "models").rglob("history.json")
        for epoch in json.loads(history.read_text())["epochs"]
    )


def repro(project: Path) -> dict[str, float]:
    """``dvc repro -f`` in ``project``: wall and CPU seconds, and the training epochs' seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": str(project / "src"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["dvc", "repro", "-f", "-q"], cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    epochs = training_seconds(project)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "epochs_s": round(epochs, 1),
        "outside_epochs_s": round(wall - epochs, 1),
    }


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]}


def markdown(report: dict) -> str:
    off, on = report["median"]["off"], report["median"]["on"]
    lines = [
        "# Tracking cost: default `dvc repro -f`, tracking on vs off",
        "",
        f"{report['machine']}; torch {report['torch']}; {report['rounds']} alternating round(s); "
        f"tracking settings: {report['tracking']}",
        "",
        "| run | wall s | CPU s | training epochs s | wall outside the epochs s |",
        "|---|---:|---:|---:|---:|",
    ]
    pairs = zip(report["runs"]["off"], report["runs"]["on"], strict=True)
    for index, (off_run, on_run) in enumerate(pairs, start=1):
        for name, run in (("off", off_run), ("on", on_run)):
            lines.append(
                f"| {name} {index} | {run['wall_s']} | {run['cpu_s']} | {run['epochs_s']} | "
                f"{run['outside_epochs_s']} |"
            )
    added = report["added"]
    lines += [
        f"| **median off** | {off['wall_s']} | {off['cpu_s']} | {off['epochs_s']} | "
        f"{off['outside_epochs_s']} |",
        f"| **median on** | {on['wall_s']} | {on['cpu_s']} | {on['epochs_s']} | {on['outside_epochs_s']} |",
        "",
        f"Tracking adds **{added['wall_pct']:+.1f} %** wall time ({added['wall_s']:+.1f} s), "
        f"**{added['cpu_pct']:+.1f} %** CPU time, and {added['outside_epochs_s']:+.1f} s outside "
        f"the training epochs ({added['outside_epochs_pct']:+.1f} % of the off run's wall time).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating off/on pairs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override for both copies, e.g. tracking.live=true",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="segpipe-tracking-cost-"))
    try:
        projects = {
            "off": clone(scratch / "off", False, args.set),
            "on": clone(scratch / "on", True, args.set),
        }
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for round_index in range(args.rounds):
            for name in ("off", "on"):
                runs[name].append(repro(projects[name]))
                print(f"round {round_index + 1} tracking {name}: {runs[name][-1]}", flush=True)
        tracking = yaml.safe_load((projects["on"] / "params.yaml").read_text())["tracking"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    median = {name: summary(values) for name, values in runs.items()}
    off, on = median["off"], median["on"]
    added = {
        "wall_s": on["wall_s"] - off["wall_s"],
        "wall_pct": 100 * (on["wall_s"] / off["wall_s"] - 1),
        "cpu_pct": 100 * (on["cpu_s"] / off["cpu_s"] - 1),
        "outside_epochs_s": on["outside_epochs_s"] - off["outside_epochs_s"],
        "outside_epochs_pct": 100 * (on["outside_epochs_s"] - off["outside_epochs_s"]) / off["wall_s"],
    }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "rounds": args.rounds,
        "tracking": tracking,
        "runs": runs,
        "median": median,
        "added": {key: round(value, 2) for key, value in added.items()},
    }
    io.write_json(args.out / "tracking_cost.json", report)
    io.write_text(args.out / "tracking_cost.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
