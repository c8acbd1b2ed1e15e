"""DVC stage `compare`: leaderboard CSV/Markdown and plots across all architectures."""

import sys

from segpipe.stages.entry import stage_main
from segpipe.stages.compare import run_compare


def main(argv=None) -> int:
    return stage_main(__doc__, lambda params, paths, _: run_compare(params, paths), argv)


if __name__ == "__main__":
    sys.exit(main())
