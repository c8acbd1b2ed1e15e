"""DVC stage `track`: publish the pipeline execution to MLflow (spooled training runs, each model's test
metrics and figures, the leaderboard in the parent run); run ids into reports/tracking.json."""

import sys

from segpipe.stages.entry import stage_main
from segpipe.stages.track import run_track
from segpipe.tracking.spool import ServerUnreachable


def main(argv=None) -> int:
    return stage_main(
        __doc__, lambda params, paths, _: run_track(params, paths), argv, user_errors=(ServerUnreachable,)
    )


if __name__ == "__main__":
    sys.exit(main())
