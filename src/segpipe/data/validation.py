"""The validate stage's data-quality gate: a great-expectations suite over what prepare wrote.

Files are re-read (not trusted from the manifest): decodability, image/mask sizes, mask label
values, agreement of the array cache with the files, id uniqueness, split coverage and
cross-split leaks by content hash. Failures name the offending files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segpipe import io
from segpipe.data.cache import load_split
from segpipe.data.manifest import SPLITS, DatasetInfo, content_hash, read_manifest

if TYPE_CHECKING:
    import pandas as pd


class DataValidationError(ValueError):
    """The prepared data failed at least one expectation; nothing downstream may run."""


@dataclass(frozen=True)
class Check:
    """One expectation with the frame it runs on and the column that names files in its failures."""

    name: str
    frame: str
    expectation: Any
    file_column: str
    fix: str


def _read_array(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def inspect_prepared(prepared_dir: Path, info: DatasetInfo) -> dict[str, pd.DataFrame]:
    """Build the frames the suite checks: one row per sample, per (mask, label value), per (hash, split)."""
    import pandas as pd  # the train stage imports this module for require_passed alone

    manifest = read_manifest(prepared_dir)
    caches = {
        split: load_split(prepared_dir, split) for split in SPLITS if (manifest["split"] == split).any()
    }
    samples, labels = [], []
    for row in manifest.itertuples(index=False):
        image = _read_array(prepared_dir / row.image_path)
        mask = _read_array(prepared_dir / row.mask_path)
        cache = caches.get(row.split)
        in_cache = cache is not None and 0 <= row.index < len(cache)
        samples.append(
            {
                "id": row.id,
                "split": row.split,
                "image_path": row.image_path,
                "mask_path": row.mask_path,
                "image_readable": image is not None,
                "mask_readable": mask is not None and mask.ndim == 2,
                "image_size": "x".join(map(str, image.shape[:2])) if image is not None else "unreadable",
                "mask_size": "x".join(map(str, mask.shape[:2])) if mask is not None else "unreadable",
                "cache_matches_files": bool(
                    in_cache
                    and image is not None
                    and mask is not None
                    and np.array_equal(cache.image(row.index), image)
                    and np.array_equal(cache.mask(row.index), mask)
                ),
                "content_hash": content_hash(image) if image is not None else f"unreadable:{row.id}",
            }
        )
        if mask is not None:
            labels += [{"mask_path": row.mask_path, "value": int(v)} for v in np.unique(mask)]
    samples_frame = pd.DataFrame(samples)
    hashes = samples_frame.drop_duplicates(["content_hash", "split"])[["content_hash", "split", "image_path"]]
    return {
        "samples": samples_frame,
        "labels": pd.DataFrame(labels, columns=["mask_path", "value"]),
        "hashes": hashes,
    }


def build_checks(info: DatasetInfo) -> list[Check]:
    import great_expectations as gx

    expect = gx.expectations
    allowed = sorted({*range(info.num_classes), info.ignore_index})
    regenerate = "re-run prepare (dvc repro -f prepare) or fix the source files"
    in_range = f"mask values in class ids 0..{info.num_classes - 1} or ignore_index {info.ignore_index}"
    return [
        Check("images decode", "samples", _all_true(expect, "image_readable"), "image_path", regenerate),
        Check(
            "masks decode as single-channel",
            "samples",
            _all_true(expect, "mask_readable"),
            "mask_path",
            regenerate,
        ),
        Check(
            "image and mask sizes match",
            "samples",
            expect.ExpectColumnPairValuesToBeEqual(column_A="image_size", column_B="mask_size"),
            "mask_path",
            "resize the mask to its image (nearest neighbour) or drop the pair",
        ),
        Check(
            in_range,
            "labels",
            expect.ExpectColumnValuesToBeInSet(column="value", value_set=allowed),
            "mask_path",
            "remap the label values or set prepare.ignore_index",
        ),
        Check(
            "array cache equals the files",
            "samples",
            _all_true(expect, "cache_matches_files"),
            "image_path",
            regenerate,
        ),
        Check(
            "no empty split",
            "samples",
            expect.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(SPLITS)),
            "split",
            "give every split at least one sample",
        ),
        Check(
            "sample ids unique",
            "samples",
            expect.ExpectColumnValuesToBeUnique(column="id"),
            "image_path",
            "rename duplicated samples",
        ),
        Check(
            "no image shared between splits",
            "hashes",
            expect.ExpectColumnValuesToBeUnique(column="content_hash"),
            "image_path",
            "remove the duplicate from all but one split",
        ),
    ]


def _all_true(expect: Any, column: str) -> Any:
    """Every value of the boolean ``column`` is True."""
    return expect.ExpectColumnValuesToBeInSet(column=column, value_set=[True])


def run_suite(frames: dict[str, pd.DataFrame], info: DatasetInfo) -> dict[str, Any]:
    """Validate every frame with great-expectations; return a JSON-ready summary."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("prepared")
    checks = build_checks(info)
    outcomes = []
    for frame_name, frame in frames.items():
        chosen = [check for check in checks if check.frame == frame_name]
        suite = gx.ExpectationSuite(name=frame_name)
        for check in chosen:
            suite.add_expectation(check.expectation)
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe("all")
        index_columns = sorted({check.file_column for check in chosen} - {"split"})
        result = batch.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns}
        )
        for check, item in zip(chosen, result.results, strict=True):
            details = item.to_json_dict()["result"]
            offending = sorted(
                {str(row[check.file_column]) for row in details.get("unexpected_index_list") or []}
            )
            if check.file_column == "split" and not item.success:
                offending = sorted(set(SPLITS) - set(frame["split"]))
            outcomes.append(
                {
                    "expectation": check.name,
                    "type": item.expectation_config.type,
                    "success": bool(item.success),
                    "unexpected_count": int(details.get("unexpected_count") or len(offending)),
                    "offending": offending,
                    "fix": check.fix,
                }
            )
    order = {check.name: i for i, check in enumerate(checks)}
    outcomes.sort(key=lambda outcome: order[outcome["expectation"]])
    return {
        "success": all(outcome["success"] for outcome in outcomes),
        "dataset": info.name,
        "samples": int(len(frames["samples"])),
        "split_sizes": {split: int((frames["samples"]["split"] == split).sum()) for split in SPLITS},
        "expectations": outcomes,
    }


def failure_message(summary: dict[str, Any], prepared_dir: Path, max_listed: int) -> str:
    lines = [f"data validation failed for {prepared_dir}:"]
    for outcome in summary["expectations"]:
        if outcome["success"]:
            continue
        files = [str(prepared_dir / name) if "/" in name else name for name in outcome["offending"]]
        shown = ", ".join(files[:max_listed]) + (
            f" (+{len(files) - max_listed} more)" if len(files) > max_listed else ""
        )
        lines.append(
            f"  - {outcome['expectation']}: {outcome['unexpected_count']} failing: {shown}. Fix: "
            f"{outcome['fix']}"
        )
    return "\n".join(lines)


def validate_prepared(prepared_dir: Path, summary_path: Path, max_listed: int = 20) -> dict[str, Any]:
    """Run the suite, write the summary (pass or fail), raise :class:`DataValidationError` on failure."""
    info = DatasetInfo.load(prepared_dir)
    summary = run_suite(inspect_prepared(prepared_dir, info), info)
    io.write_json(summary_path, summary)
    if not summary["success"]:
        raise DataValidationError(failure_message(summary, prepared_dir, max_listed))
    return summary


def require_passed(summary_path: Path) -> None:
    """Refuse to train on data whose validation did not pass."""
    if not summary_path.is_file():
        raise DataValidationError(
            f"{summary_path} is missing: run the validate stage first (dvc repro validate)"
        )
    if not io.read_json(summary_path).get("success"):
        raise DataValidationError(
            f"{summary_path} records a failed validation: fix the data and re-run validate"
        )
