"""Run this bundle on a host that has Python, torch, numpy and Pillow:

    python run.py [--out DIR] [--device cuda|cpu|auto] [--architectures A B] [--epochs N] [--time-limit S]

Joins split files, unpacks the bundle's wheels into ``.site/``, puts them and the bundle's segpipe code first
on ``sys.path``, then runs ``segpipe remote run`` on this bundle. (``segpipe remote pack`` copies this file to
the bundle's root as ``run.py``.)
"""

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def unpack_wheels(site: Path) -> None:
    """Unzip every wheel of ``wheels/`` into ``site`` once (a listing file marks a finished unpack)."""
    wheels = sorted((ROOT / "wheels").glob("*.whl"))
    done = site / ".unpacked"
    names = "\n".join(wheel.name for wheel in wheels)
    if done.is_file() and done.read_text() == names:
        return
    site.mkdir(exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    done.write_text(names)


def main() -> int:
    sys.dont_write_bytecode = True  # the bundle's files stay exactly those of its manifest
    sys.path.insert(0, str(ROOT / "src"))
    from segpipe.remote.manifest import join_parts

    join_parts(ROOT)
    unpack_wheels(ROOT / ".site")
    sys.path.insert(
        1, str(ROOT / ".site")
    )  # after unpacking: a missing folder on sys.path is cached as empty
    from segpipe.cli import main as segpipe

    return segpipe(["remote", "run", str(ROOT), *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
