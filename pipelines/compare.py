"""DVC stage `compare`: leaderboard CSV/Markdown/JSON and plots across all architectures, from the metrics
files alone (the `track` stage publishes them to MLflow)."""

import sys

from segpipe.stages.compare import run_compare
from segpipe.stages.entry import stage_main


def main(argv=None) -> int:
    return stage_main(__doc__, lambda params, paths, _: run_compare(params, paths), argv)


if __name__ == "__main__":
    sys.exit(main())
