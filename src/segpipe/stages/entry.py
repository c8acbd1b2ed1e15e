"""Shared command-line plumbing for the stage entry points in ``pipelines/``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from segpipe.config import ConfigError, Params, load_params
from segpipe.paths import ProjectPaths
from segpipe.serving import disallow_pickle_loading

StageFunction = Callable[[Params, ProjectPaths, argparse.Namespace], object]

#: Errors that mean "the user must fix an input" (failed data validation is a ValueError): printed as one
#: clear message, no traceback. Builtins and config only, so that no stage imports code it does not run.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, ValueError)


def stage_main(
    description: str,
    run: StageFunction,
    argv: Sequence[str] | None = None,
    with_architecture: bool = False,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``--params`` / ``--root`` (and ``--architecture``), load params, run the stage, map errors to
    exit codes; ``user_errors`` adds the stage's own input errors to :data:`USER_ERRORS`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)"
    )
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="project root holding data/, models/, reports/"
    )
    if with_architecture:
        parser.add_argument("--architecture", required=True, help="a name listed in train.architectures")
        parser.add_argument(
            "--task",
            choices=("segment", "denoise"),
            default="segment",
            help="segment (default; train.architectures) or denoise (denoise.architectures)",
        )
    args = parser.parse_args(argv)
    disallow_pickle_loading()
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also in CI logs
    try:
        params = load_params(args.params)
        run(params, ProjectPaths(args.root), args)
    except (*USER_ERRORS, *user_errors) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
