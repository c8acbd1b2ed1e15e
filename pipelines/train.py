"""DVC stages `train@<architecture>` and `denoise_train@<architecture>`: train one architecture for one task,
checkpoint the best epoch, track it in MLflow."""

import sys

from segpipe.cli import stage_main
from segpipe.stages.train import run_train


def main(argv=None) -> int:
    return stage_main(
        __doc__,
        lambda params, paths, args: run_train(params, args.architecture, paths, task=args.task),
        argv,
        with_architecture=True,
    )


if __name__ == "__main__":
    sys.exit(main())
