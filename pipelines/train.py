"""DVC stages `train@<architecture>` and `denoise_train@<architecture>`: train one architecture for one
task, checkpoint the best epoch, write its curves, track it in MLflow. With `train.nproc` > 1 the stage
relaunches itself under torchrun (data-parallel on that many processes)."""

import sys
from pathlib import Path

from segpipe.stages.entry import stage_main
from segpipe.stages.train import run_train
from segpipe.training import distributed


def main(argv=None) -> int:
    def train(params, paths, args):
        if distributed.needs_torchrun(params.train.nproc):
            stage_args = sys.argv[1:] if argv is None else argv
            command = distributed.torchrun_command(Path(__file__), stage_args, params.train.nproc)
            distributed.exec_torchrun(command)
        return run_train(params, args.architecture, paths, task=args.task)

    return stage_main(__doc__, train, argv, with_architecture=True)


if __name__ == "__main__":
    sys.exit(main())
