"""dvc.yaml: every stage depends on all the segpipe code its script imports, on the params that change its
results and on no params that do not (so pointing tracking at another server, say, re-runs no training)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from segpipe import io
from segpipe.config import PrepareParams, TrainParams, parse_params
from segpipe.data.prepare import prepare_dataset
from segpipe.paths import ProjectPaths
from segpipe.stages.compare import run_compare

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]

#: TrainParams keys that change no trained model: the list of stages, and how an interrupted run resumes.
NON_RESULT_TRAIN_KEYS = {"architectures", "resume", "checkpoint_every_steps"}
#: TrainParams keys a denoiser does not read (it trains for ``denoise.epochs`` with ``denoise.loss``).
NOT_READ_BY_DENOISE = {"epochs", "loss"}


def module_file(name: str) -> Path | None:
    """The file that defines segpipe module ``name`` (a package's ``__init__.py``); None if there is none."""
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports only a type checker runs."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree``, function bodies included, except those under ``if TYPE_CHECKING:``."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        children = ast.iter_child_nodes(node)
        if _is_type_checking(node):
            children = node.orelse
        pending.extend(children)


def _with_parents(name: str) -> set[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = name.split(".")
    return {".".join(parts[: index + 1]) for index in range(len(parts))}


def imported_names(path: Path, package: str) -> set[str]:
    """Every module name the file at ``path`` (in ``package``) imports, anywhere in its code, absolute."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imported_modules(path: Path, package: str) -> set[str]:
    """The segpipe modules the file at ``path`` runs by importing, with the packages above them."""
    modules = {
        name
        for name in imported_names(path, package)
        if name.split(".")[0] == "segpipe" and module_file(name)
    }
    return set().union(*(_with_parents(name) for name in modules)) if modules else set()


def import_closure(script: Path) -> dict[str, Path]:
    """Every segpipe module ``script`` runs, directly or through other segpipe modules, with its file."""
    seen: dict[str, Path] = {}
    pending = sorted(imported_modules(script, ""))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen[name] = module_file(name)
        package = name if seen[name].name == "__init__.py" else name.rpartition(".")[0]
        pending.extend(imported_modules(seen[name], package) - set(seen))
    return seen


def stage_script(stage: dict) -> Path:
    [script] = re.findall(r"pipelines/\w+\.py", stage["cmd"])
    return ROOT / script


def code_deps(stage: dict) -> list[Path]:
    return [ROOT / dep for dep in stage.get("deps", []) if "${" not in dep]


def covered(file: Path, deps: list[Path]) -> bool:
    return any(file == dep or dep in file.parents for dep in deps)


def param_deps(stage: dict) -> set[str]:
    entries = stage.get("params", [])
    return {key for entry in entries for key in ([entry] if isinstance(entry, str) else entry)}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_every_module_its_script_runs(name):
    stage = STAGES[name]
    script = stage_script(stage)
    deps = code_deps(stage)
    assert covered(script, deps), f"dvc.yaml: add {script.relative_to(ROOT)} to the deps of stage {name}"
    missing = sorted(
        f"{module} ({file.relative_to(ROOT)})"
        for module, file in import_closure(script).items()
        if file.stat().st_size and not covered(file, deps)  # an empty __init__.py runs nothing
    )
    assert not missing, f"dvc.yaml: stage {name} runs {', '.join(missing)}: add them (or a folder) to deps"


#: Files a stage reads that other stages write: without them DVC may run the stage first.
DATA_DEPS = {
    "validate": {"data/prepared"},
    "train": {"data/prepared", "reports/validation/summary.json"},
    "denoise_train": {"data/prepared", "reports/validation/summary.json"},
    "evaluate": {"data/prepared", "models/${item.architecture}"},
    "denoise_evaluate": {"data/prepared", "models/denoise/${item.architecture}"},
    "compare": {"data/prepared", "reports/metrics"},
    "track": {
        "reports/metrics",
        "reports/confusion",
        "reports/leaderboard.json",
        "reports/plots/predictions",
    },
    "register": {"data/prepared", "reports/metrics", "reports/leaderboard.csv", "reports/tracking.json"},
    "models_table": {"data/prepared"},
}


@pytest.mark.parametrize("name", sorted(DATA_DEPS))
def test_stage_depends_on_the_outputs_it_reads(name):
    missing = DATA_DEPS[name] - set(STAGES[name]["deps"])
    assert not missing, f"dvc.yaml: stage {name} reads {sorted(missing)}: add them to its deps"


def test_import_closure_follows_imports_inside_functions_and_skips_type_checking_ones():
    closure = set(import_closure(ROOT / "pipelines" / "prepare.py"))
    assert {"segpipe", "segpipe.stages.entry", "segpipe.data.prepare", "segpipe.data.download"} <= closure
    # paths.py imports segpipe.tasks for type checkers only
    assert "segpipe.tasks" not in import_closure(ROOT / "pipelines" / "models_table.py")


def test_every_declared_code_dependency_exists():
    for name, stage in STAGES.items():
        for dep in code_deps(stage):
            if dep.is_relative_to(ROOT / "src") or dep.is_relative_to(ROOT / "pipelines"):
                assert dep.exists(), f"dvc.yaml: stage {name} depends on missing {dep.relative_to(ROOT)}"


@pytest.mark.parametrize(("stage", "ignored"), [("train", set()), ("denoise_train", NOT_READ_BY_DENOISE)])
def test_training_depends_on_every_param_that_changes_the_model(stage, ignored):
    declared = param_deps(STAGES[stage])
    expected = {f"train.{key}" for key in TrainParams.model_fields} - {
        f"train.{key}" for key in NON_RESULT_TRAIN_KEYS | ignored | {"models"}
    }
    assert expected <= declared, f"dvc.yaml: {stage} lacks params {sorted(expected - declared)}"
    assert "train.models.${item.architecture}" in declared  # its own model's options, not every model's
    assert not declared & {f"train.{key}" for key in NON_RESULT_TRAIN_KEYS | ignored}


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"track", "register"}))
def test_tracking_params_rerun_no_stage_but_track_and_register(name):
    assert not any(key == "tracking" or key.startswith("tracking.") for key in param_deps(STAGES[name]))


def test_tracking_params_rerun_track_and_register():
    assert {"tracking"} <= param_deps(STAGES["track"]) and {"tracking"} <= param_deps(STAGES["register"])


def test_every_param_dep_is_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in STAGES.items():
        for key in param_deps(stage):
            if "${" in key:
                continue
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (
                    f"dvc.yaml: stage {name} depends on {key}: add {key} to params.yaml"
                )
                node = node[part]


def test_register_follows_track_and_compare_runs_no_tracking_code():
    track_outs = {next(iter(out)) if isinstance(out, dict) else out for out in STAGES["track"]["outs"]}
    assert "reports/tracking.json" in track_outs and "reports/tracking.json" in STAGES["register"]["deps"]
    compare = import_closure(stage_script(STAGES["compare"]))
    assert not [module for module in compare if module.startswith(("segpipe.tracking", "segpipe.registry"))]


def _metrics_record(architecture: str, miou: float, class_names: tuple[str, ...]) -> dict[str, object]:
    return {
        "architecture": architecture,
        "task": "segment",
        "family": "builtin",
        "test_miou": miou,
        "test_dice": miou,
        "test_pixel_acc": 0.9,
        "test_mean_class_acc": miou,
        "params_m": 1.0,
        "gflops": 0.1,
        "infer_img_per_s": 100.0,
        "train_seconds": 3.0,
        "best_epoch": 1,
        "run_key": f"key-{architecture}",
        f"test_iou_{class_names[0]}": None,
        **{f"test_iou_{name}": miou for name in class_names[1:]},
    }


def test_compare_stage_runs_without_mlflow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # any import of mlflow now fails
    paths = ProjectPaths(tmp_path)
    prepare = PrepareParams(seed=7, image_size=(32, 32), splits={"train": 4, "val": 2, "test": 2})
    info = prepare_dataset(prepare, paths.prepared)
    for architecture, miou in (("unet", 0.5), ("fcn8s", 0.7)):
        io.write_json(paths.metrics(architecture), _metrics_record(architecture, miou, info.class_names))
    params = parse_params({"train": {"architectures": ["unet", "fcn8s"]}, "denoise": {"architectures": []}})
    frame = run_compare(params, paths)
    assert list(frame["architecture"][:2]) == ["fcn8s", "unet"] and "run_id" not in frame
    assert io.read_json(paths.leaderboard_summary)["best_architecture"] == "fcn8s"
    per_class = paths.leaderboard_md.read_text().split("## Per-class IoU")[1]
    assert f"| {' | '.join(info.class_names)} |" in per_class and "| unet |  | 0.500 |" in per_class
    assert (paths.plots / "per_class_iou.png").stat().st_size > 1000


def test_training_curves_are_dvc_plots():
    outs = [next(iter(out)) for out in STAGES["train"]["outs"] if isinstance(out, dict)]
    assert "reports/curves/${item.architecture}.csv" in outs
    plots = {next(iter(plot)): plot[next(iter(plot))] for plot in DVC["plots"]}
    segment, denoise = plots["reports/curves"], plots["reports/curves/denoise"]
    assert segment["x"] == "epoch" and {"val_miou", "train_loss"} <= set(segment["y"])
    assert denoise["x"] == "epoch" and "val_psnr" in denoise["y"]
