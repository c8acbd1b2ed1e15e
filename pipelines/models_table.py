"""DVC stage `models_table`: params, GFLOPs and output stride of every architecture into reports/models.*"""

import sys

from segpipe.stages.entry import stage_main
from segpipe.stages.models_table import run_models_table


def main(argv=None) -> int:
    return stage_main(__doc__, lambda params, paths, _: run_models_table(params, paths), argv)


if __name__ == "__main__":
    sys.exit(main())
