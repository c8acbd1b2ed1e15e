"""DVC stages `evaluate@<architecture>` and `denoise_evaluate@<architecture>`: test-split metrics and
inference speed into reports/metrics/ (denoisers: reports/metrics/denoise/ and example images)."""

import sys

from segpipe.stages.entry import stage_main
from segpipe.stages.evaluate import run_evaluate, run_evaluate_denoise


def main(argv=None) -> int:
    def run(params, paths, args):
        evaluate = run_evaluate_denoise if args.task == "denoise" else run_evaluate
        return evaluate(params, args.architecture, paths)

    return stage_main(__doc__, run, argv, with_architecture=True)


if __name__ == "__main__":
    sys.exit(main())
