"""The great-expectations gate passes clean data and names the offending file for each kind of fault."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segpipe.data.validation import DataValidationError, require_passed, validate_prepared


def run(prepared, tmp_path):
    return validate_prepared(prepared, tmp_path / "reports" / "summary.json")


def test_clean_data_passes_and_writes_summary(prepared, tmp_path):
    summary = run(prepared, tmp_path)
    assert summary["success"] is True
    written = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert written["samples"] == 12
    assert {e["expectation"] for e in written["expectations"]} >= {"no empty split", "sample ids unique"}
    require_passed(tmp_path / "reports" / "summary.json")


def test_out_of_range_mask_value_names_the_file(prepared, tmp_path):
    bad = prepared / "val" / "masks" / "val_00001.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[0, 0] = 42
    Image.fromarray(mask).save(bad)
    with pytest.raises(DataValidationError) as error:
        run(prepared, tmp_path)
    message = str(error.value)
    assert "mask values in class ids" in message and str(bad) in message
    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert summary["success"] is False
    with pytest.raises(DataValidationError, match="failed validation"):
        require_passed(tmp_path / "reports" / "summary.json")


def test_size_mismatch_names_the_file(prepared, tmp_path):
    bad = prepared / "train" / "masks" / "train_00002.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(bad)
    with pytest.raises(DataValidationError, match="image and mask sizes match.*train_00002.png"):
        run(prepared, tmp_path)


def test_corrupt_image_names_the_file(prepared, tmp_path):
    bad = prepared / "test" / "images" / "test_00000.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataValidationError, match="images decode.*test_00000.png"):
        run(prepared, tmp_path)


def test_image_shared_between_splits_is_a_leak(prepared, tmp_path):
    shutil.copy(
        prepared / "train" / "images" / "train_00000.png", prepared / "test" / "images" / "test_00002.png"
    )
    with pytest.raises(DataValidationError, match="no image shared between splits.*train_00000.png"):
        run(prepared, tmp_path)


def test_missing_summary_blocks_training(tmp_path):
    with pytest.raises(DataValidationError, match="run the validate stage"):
        require_passed(tmp_path / "nothing.json")


def test_the_training_gate_needs_no_great_expectations(tmp_path):
    """The train stage imports this module for ``require_passed`` on hosts without great-expectations."""
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"success": True}))
    code = (
        "import sys; sys.modules['great_expectations'] = None; "  # importing it now fails
        "from segpipe.data.validation import require_passed; "
        f"require_passed(__import__('pathlib').Path({str(summary)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert issubclass(DataValidationError, ValueError)  # a stage prints it as a one-line error


def test_mixed_size_cache_is_checked_sample_by_sample(tmp_path):
    from test_cache import MIXED, make_folder, native_params

    from segpipe.data.cache import packed_paths
    from segpipe.data.prepare import prepare_dataset

    prepared = tmp_path / "prepared"
    prepare_dataset(native_params(make_folder(tmp_path / "raw", MIXED)), prepared)
    assert run(prepared, tmp_path)["success"] is True
    blob_path, index_path = packed_paths(prepared, "train")
    blob = np.load(blob_path)
    blob[np.load(index_path)[2, 0]] ^= 1  # the first pixel of train sample 2
    np.save(blob_path, blob)
    with pytest.raises(DataValidationError, match=r"array cache equals the files: 1 failing: .*train_2.png"):
        run(prepared, tmp_path)
