"""DVC stage `validate`: great-expectations suite over data/prepared; fails the pipeline on bad data."""

import sys

from segpipe.data.validation import validate_prepared
from segpipe.stages.entry import stage_main


def main(argv=None) -> int:
    return stage_main(
        __doc__,
        lambda params, paths, _: validate_prepared(
            paths.prepared, paths.validation_summary, params.validate_.max_listed_failures
        ),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
