"""Pack CamVid into one checksummed file for the lent GPU machine (JPEG images, PNG masks, class names).

    python pipelines/pack.py --root ../shared/datasets/camvid --out pack/camvid.npz [--quality 90]

The pack is the data that pipelines/gpu_run.py trains on and that ``segpipe import-run`` re-evaluates with;
keep it out of git (pack/ is ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from segpipe.remote.bundle import CAMVID_SIZE, DEFAULT_QUALITY, MAX_PACK_MIB, build_pack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CamVid folder: {train,val,test}/{images,masks}")
    parser.add_argument("--out", type=Path, default=Path("pack/camvid.npz"), help="pack file (default: pack/camvid.npz)")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help=f"JPEG quality (default {DEFAULT_QUALITY})")
    parser.add_argument("--image-size", type=int, nargs=2, default=list(CAMVID_SIZE), metavar=("H", "W"),
                        help="stored size, stretched if it differs (default: CamVid's 360 480)")
    parser.add_argument("--max-per-split", type=int, help="keep only the first N samples of each split (tests)")
    parser.add_argument("--max-mib", type=float, default=MAX_PACK_MIB,
                        help=f"refuse a larger pack (default {MAX_PACK_MIB:g})")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes (default 2)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        info = build_pack(args.root, args.out, args.quality, tuple(args.image_size), args.max_per_split,
                          args.max_mib, args.workers)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{split} {count}" for split, count in info.split_sizes.items())
    print(f"wrote {info.path}: {info.bytes / 2**20:.2f} MiB, {sizes} samples at {info.image_size[0]}x{info.image_size[1]}, "
          f"JPEG q{info.jpeg_quality}, {info.num_classes} classes, ignore {info.ignore_index}, sha256 {info.sha256[:12]}... "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
