"""DVC stage `evaluate@<architecture>`: test-split metrics and inference speed into reports/metrics/."""

import sys

from segpipe.cli import stage_main
from segpipe.stages.evaluate import run_evaluate


def main(argv=None) -> int:
    return stage_main(
        __doc__, lambda params, paths, args: run_evaluate(params, args.architecture, paths), argv, with_architecture=True
    )


if __name__ == "__main__":
    sys.exit(main())
