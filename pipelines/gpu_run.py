"""Train every architecture on a CamVid pack within a time budget, on a lent GPU machine (or a CPU for --smoke).

    bash scripts/gpu_run.sh --pack pack/camvid.npz --out "$OUT/gpu" --minutes-total 8
    python pipelines/gpu_run.py --smoke --pack pack/camvid.npz --out /tmp/gpu-smoke

Needs torch, torchvision, timm, numpy, pillow, safetensors, tqdm, pydantic (and smp for the smp baselines); never
MLflow, DVC or great-expectations. Writes run.json, metrics.json, leaderboard.csv/.md, model.json and the best
model's bfloat16 safetensors shards into --out (see segpipe.remote.run); `segpipe import-run` brings them into MLflow.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # the budget covers the imports below (torch, smp: seconds)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, default=Path("pack/camvid.npz"), help="pack file from pipelines/pack.py")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes-total", type=float, help="wall-clock budget of the whole run (default 8)")
    budget.add_argument("--seconds-per-model", type=float, help="fixed budget per architecture instead")
    parser.add_argument("--architectures", nargs="+", help="default: all eleven (smoke: unet dilated smp_fpn)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="stretch to this size first")
    parser.add_argument("--max-per-split", type=int, help="use only the first N samples of each split")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (costs budget to compile)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 8 samples per split at 90x120, "
                        "3 small models, 1-2 epochs each")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    from segpipe.remote.run import ARCHITECTURES, SMOKE_ARCHITECTURES, RunSettings, run_gpu

    if args.smoke:
        settings = RunSettings.smoke_preset(args.pack, args.out, args.device,
                                            tuple(args.architectures or SMOKE_ARCHITECTURES))
    else:
        settings = RunSettings(
            args.pack, args.out, tuple(args.architectures or ARCHITECTURES),
            seconds_total=None if args.seconds_per_model else 60 * (args.minutes_total or 8.0),
            seconds_per_model=args.seconds_per_model,
            image_size=tuple(args.image_size) if args.image_size else None, max_per_split=args.max_per_split,
            batch_size=args.batch_size, lr=args.lr, device=args.device, compile=args.compile,
        )
    try:
        run = run_gpu(settings, started)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    leaderboard = (settings.out / "leaderboard.md").read_text()
    print(leaderboard)
    best = run["best"]
    print(f"best: {best['architecture']} (test mIoU {best['test_miou']:.4f})" if best else "no architecture finished")
    print(f"wrote {settings.out} in {run['wall_seconds']:.0f} s; failures: {run['failures'] or 'none'}")
    return 1 if run["failures"] or not best else 0


if __name__ == "__main__":
    sys.exit(main())
