"""DVC stage `prepare`: generate or import the dataset into data/prepared (manifest + array cache)."""

import sys

from segpipe.cli import stage_main
from segpipe.data.prepare import prepare_dataset


def main(argv=None) -> int:
    return stage_main(__doc__, lambda params, paths, _: prepare_dataset(params.prepare, paths.prepared), argv)


if __name__ == "__main__":
    sys.exit(main())
