"""Headless matplotlib and atomic PNG writes, shared by every stage that draws."""

from __future__ import annotations

from pathlib import Path

from segpipe import io


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported only where a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, target: Path) -> None:
    """Write ``figure`` to ``target`` atomically and release it."""
    io.write_with(target, lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    pyplot().close(figure)
