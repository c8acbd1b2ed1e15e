"""Code-shape rules a reviewer would otherwise check by hand: short functions, stage scripts that only parse
arguments and call the library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_function_in_src_is_longer_than_the_limit() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}:{name} ({lines} lines)"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for name, lines in _functions(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


@pytest.mark.parametrize("script", sorted((ROOT / "pipelines").glob("*.py")), ids=lambda path: path.name)
def test_stage_scripts_stay_short(script: Path) -> None:
    assert len(script.read_text(encoding="utf-8").splitlines()) <= 40, (
        f"{script.name}: move the logic into segpipe"
    )
