"""DVC stage `register`: the best model becomes a new MLflow registry version with alias `challenger`."""

import sys

from segpipe.stages.entry import stage_main
from segpipe.stages.register import run_register


def main(argv=None) -> int:
    return stage_main(__doc__, lambda params, paths, _: run_register(params, paths), argv)


if __name__ == "__main__":
    sys.exit(main())
