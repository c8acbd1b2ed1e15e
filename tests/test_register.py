"""The register stage with tracking switched off ends the pipeline normally and says why nothing was registered."""

from pathlib import Path

from segpipe import io
from segpipe.config import parse_params
from segpipe.paths import ProjectPaths
from segpipe.stages.register import run_register


def test_register_without_tracking_records_the_best_model_and_registers_nothing(tmp_path: Path, capsys):
    paths = ProjectPaths(tmp_path)
    io.write_text(paths.leaderboard_csv, "rank,architecture,family,test_miou\n1,majority_class,reference,0.9\n"
                                         "2,fcn8s,seed,0.40\n3,unet,seed,0.31\n")
    params = parse_params({"tracking": {"enabled": False}})
    assert run_register(params, paths) is None
    record = io.read_json(paths.registry_record)
    assert record["registered"] is False and record["architecture"] == "fcn8s" and record["value"] == 0.40
    assert "tracking.enabled is false" in record["reason"] and "fcn8s" in capsys.readouterr().out
