"""Shared command-line plumbing for the stage entry points in ``pipelines/``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from segpipe.config import ConfigError, Params, load_params
from segpipe.paths import ProjectPaths
from segpipe.tracking.spool import ServerUnreachable
from segpipe.data.validation import DataValidationError

StageFunction = Callable[[Params, ProjectPaths, argparse.Namespace], object]

#: Errors that mean "the user must fix an input": printed as one clear message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataValidationError, FileNotFoundError, ValueError, ServerUnreachable,
)


def stage_main(
    description: str,
    run: StageFunction,
    argv: Sequence[str] | None = None,
    with_architecture: bool = False,
) -> int:
    """Parse ``--params`` / ``--root`` (and ``--architecture``), load params, run the stage, map errors to exit codes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root holding data/, models/, reports/")
    if with_architecture:
        parser.add_argument("--architecture", required=True, help="a name listed in train.architectures")
        parser.add_argument("--task", choices=("segment", "denoise"), default="segment",
                            help="segment (default; train.architectures) or denoise (denoise.architectures)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also in CI logs
    try:
        params = load_params(args.params)
        run(params, ProjectPaths(args.root), args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
