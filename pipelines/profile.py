"""DVC stage `profile`: models table (params, GFLOPs, output stride) of every architecture into reports/."""

import sys

from segpipe.cli import stage_main
from segpipe.stages.profile import run_profile


def main(argv=None) -> int:
    return stage_main(__doc__, lambda params, paths, _: run_profile(params, paths), argv)


if __name__ == "__main__":
    sys.exit(main())
