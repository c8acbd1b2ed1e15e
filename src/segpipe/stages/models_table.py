"""The models_table stage: a models table (params, GFLOPs at a reference size, output stride) for every
architecture."""

from __future__ import annotations

import pandas as pd

from segpipe import io
from segpipe.config import Params
from segpipe.data.manifest import DatasetInfo
from segpipe.models import available_architectures, build_model, count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.models.zoo import architecture_family
from segpipe.paths import ProjectPaths


def models_table(params: Params, num_classes: int) -> pd.DataFrame:
    """One row per registered architecture, built with its options from ``train.models``."""
    height, width = params.models_table.image_size
    rows = []
    for name in available_architectures():
        model = build_model(name, num_classes, options=params.train.model_options(name))
        rows.append(
            {
                "architecture": name,
                "family": architecture_family(name),
                "params_m": round(count_params_m(model), 3),
                f"gflops_{height}x{width}": round(gflops_per_image(model, height, width), 3),
                "output_stride": model.output_stride,
                "in_default_run": name in params.train.architectures,
            }
        )
    return pd.DataFrame(rows)


def run_models_table(params: Params, paths: ProjectPaths) -> pd.DataFrame:
    """Write ``reports/models.csv`` and ``reports/models.md``."""
    info = DatasetInfo.load(paths.prepared)
    table = models_table(params, info.num_classes)
    height, width = params.models_table.image_size
    lines = [
        f"# Models ({info.num_classes} classes, GFLOPs per {height}×{width} image, from "
        "`torch.utils.flop_counter`)",
        "",
        "| Architecture | Kind | Params (M) | GFLOPs | Output stride | In `train.architectures` |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row[0]} | {row[1]} | {row[2]:.3f} | {row[3]:.3f} | {row[4]} | {'yes' if row[5] else 'no'} |"
        )
    io.write_text(paths.reports / "models.csv", table.to_csv(index=False))
    io.write_text(paths.reports / "models.md", "\n".join(lines) + "\n")
    return table
