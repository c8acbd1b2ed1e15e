"""The ``segpipe`` command: registry operations and prediction (the pipeline itself runs with ``dvc repro``).

segpipe promote            # challenger -> champion if it passes the gates (params.yaml: promote)
segpipe rollback [--from V] # champion -> the previous champion (--from: only while V is champion)
segpipe models             # versions, aliases, metrics
segpipe sync               # send tracking buffered while the MLflow server was down
segpipe predict IMAGE... --model models:/segpipe-synthetic@champion --out predictions/
segpipe export --model models:/segpipe-synthetic@champion --format onnx --out model.onnx
segpipe remote pack BUNDLE [--vendor-environment]  # code, prepared data and params for another machine
segpipe remote run BUNDLE --out DIR                  # there: train and test (or: python BUNDLE/run.py)
segpipe remote import DIR                            # here: check, re-evaluate, log and register
segpipe convert-checkpoint models/unet/model.pt      # a previous-format checkpoint -> model.safetensors
segpipe server --backend-store-uri postgresql://... --artifacts-destination DIR  # a team MLflow server
segpipe ui [--port 5000] [--dataset NAME]          # MLflow UI on the local store, at the latest runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from segpipe.config import ConfigError, load_params
from segpipe.paths import ProjectPaths
from segpipe.serving import disallow_pickle_loading


def _promote(args: argparse.Namespace) -> None:
    from segpipe.registry.promotion import promote

    params = load_params(args.params)
    if args.require_gpu:
        params = params.model_copy(
            update={"promote": params.promote.model_copy(update={"require_gpu": True})}
        )
    decision = promote(params, ProjectPaths(args.root))
    print(
        f"{'PROMOTED' if decision.promoted else 'KEPT'} {decision.model}: "
        f"challenger v{decision.challenger_version} vs {decision.baseline}: {decision.reason}"
    )


def _rollback(args: argparse.Namespace) -> None:
    from segpipe.registry.promotion import rollback

    record = rollback(load_params(args.params), ProjectPaths(args.root), replacing=args.replacing)
    if record["action"] == "already_rolled_back":
        print(
            f"nothing to do: the champion of {record['model']} is version {record['champion_version']}, "
            f"not {record['replaced_version']} (already rolled back)"
        )
        return
    print(
        f"champion of {record['model']} is version {record['champion_version']} again "
        f"(was {record['replaced_version']})"
    )


def _models(args: argparse.Namespace) -> None:
    from segpipe.data.manifest import DatasetInfo
    from segpipe.registry.promotion import list_versions

    params = load_params(args.params)
    dataset = args.dataset or DatasetInfo.load(ProjectPaths(args.root).prepared).name
    rows = list_versions(params, dataset)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    columns = ["version", "aliases", "architecture", "test_miou", "device", "promotion"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[column]) for column in columns))
    for row in rows:
        if row["refused"]:
            print(row["refused"], file=sys.stderr)


def _predict(args: argparse.Namespace) -> None:
    from segpipe.inference import WHOLE, InferenceSettings
    from segpipe.predict import predict_files
    from segpipe.tracking.mlflow_tracking import tracking_uri
    from segpipe.training.device import resolve_device

    params = load_params(args.params) if Path(args.params).is_file() else None
    if args.model.startswith(("models:/", "runs:/")):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri(load_params(args.params).tracking))
    written = predict_files(
        args.images,
        args.model,
        args.out,
        resolve_device(args.device),
        tuple(args.size) if args.size else None,
        precision=args.precision,
        # the project's evaluate settings (whole image or sliding windows, flips), as the test scores used
        inference=InferenceSettings.from_params(params.evaluate) if params else WHOLE,
    )
    print(f"wrote {len(written)} files to {args.out}")


def _export(args: argparse.Namespace) -> None:
    from segpipe.serving.logged import model_checkpoint
    from segpipe.serving.onnx_export import OPSET, export_onnx
    from segpipe.training.checkpoint import load_checkpoint

    _use_tracking_store(args)
    with model_checkpoint(args.model) as checkpoint:
        model, meta = load_checkpoint(checkpoint)
    export_onnx(model, meta.architecture, args.out)
    print(
        f"wrote {args.out}: ONNX opset {OPSET}, input images float32 (N, 3, H, W) in [0, 1] with H and W "
        f"multiples of {getattr(model, 'output_stride', 1)}, output logits (N, {meta.num_classes}, H, W)"
    )


def _use_tracking_store(args: argparse.Namespace) -> None:
    """Point MLflow at params' tracking store for an MLflow URI; FileNotFoundError for a missing file."""
    if args.model.startswith(("models:/", "runs:/")):
        import mlflow

        from segpipe.tracking.mlflow_tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(load_params(args.params).tracking))
    elif not Path(args.model).exists():
        raise FileNotFoundError(
            f"{args.model} does not exist: pass --model models:/<name>@<alias>, models:/<name>/<version>, "
            f"an MLflow model folder or a models/<architecture>/model.safetensors written by the train stage"
        )


def _sync(args: argparse.Namespace) -> None:
    from segpipe.tracking.mlflow_tracking import sync_spools

    sent = sync_spools(load_params(args.params).tracking, args.spool_dir)
    for spool, run_id in sent:
        print(f"sent {spool.name} -> run {run_id}")
    print(f"{len(sent)} buffered run(s) sent" if sent else "nothing to send: no buffered tracking left")


def _remote_pack(args: argparse.Namespace) -> None:
    from segpipe.remote.bundle import PackOptions, pack_bundle

    manifest = pack_bundle(
        PackOptions(
            args.bundle,
            args.root,
            args.params,
            args.wheels,
            args.vendor_environment,
            args.shard_mb,
            args.max_bundle_mb,
        )
    )
    print(
        f"wrote {args.bundle}: {len(manifest['files'])} files, {manifest['bytes'] / 2**20:.1f} MiB; on the "
        f"other machine run: python {args.bundle.name}/run.py --out OUT"
    )


def _remote_run(args: argparse.Namespace) -> None:
    from segpipe.remote.run import RunOptions, run_bundle

    out = args.out or args.bundle.with_name(f"{args.bundle.name}-out")
    run = run_bundle(
        RunOptions(
            args.bundle,
            out,
            args.device,
            tuple(args.architectures or ()) or None,
            args.epochs,
            args.time_limit,
            args.shard_mb,
        )
    )
    print(
        f"wrote {out} in {run['wall_seconds']:.0f} s; best: {run['best'] or 'none'}; copy it back and run "
        f"`segpipe remote import {out.name}`"
    )
    if run["best"] is None:
        raise ValueError(f"no architecture finished: see {out / 'run.json'}")


def _remote_import(args: argparse.Namespace) -> None:
    from segpipe import io
    from segpipe.remote.importer import import_run

    params = load_params(args.params)
    if not params.tracking.enabled:
        raise ValueError(
            "tracking.enabled is false: remote import logs and registers in MLflow; switch tracking on"
        )
    paths = ProjectPaths(args.root)
    imported = import_run(args.run_dir, paths, params.tracking, params.register_.alias, data=params.data)
    io.write_json(paths.registry_record, imported.registered.as_dict())
    print(imported.summary())


def _convert_checkpoint(args: argparse.Namespace) -> None:
    from segpipe.training.checkpoint import convert_checkpoint

    print(f"wrote {convert_checkpoint(args.checkpoint, args.out)} and its .json")


def _server(args: argparse.Namespace) -> None:
    from segpipe.tracking.server import ServerSettings, serve

    serve(
        ServerSettings(
            args.backend_store_uri,
            args.artifacts_destination,
            args.host,
            args.port,
            args.workers,
            tuple(host.strip() for host in args.allowed_hosts.split(",") if host.strip()),
            args.auth,
        )
    )


def _add_remote(commands: argparse._SubParsersAction) -> None:
    remote = commands.add_parser("remote", help="train on another machine: pack, run there, import here")
    steps = remote.add_subparsers(dest="step", required=True)
    pack = steps.add_parser("pack", help="write a self-contained bundle: code, prepared data, params, wheels")
    pack.add_argument("bundle", type=Path, help="the bundle folder to write (replaced if it exists)")
    pack.add_argument(
        "--params", type=Path, default=argparse.SUPPRESS, help="params file to send (default: params.yaml)"
    )
    pack.add_argument("--wheels", type=Path, help="a folder of wheels to include")
    pack.add_argument(
        "--vendor-environment",
        action="store_true",
        help="include wheels of segpipe's runtime "
        "dependencies from this environment (for hosts with the same Python and platform)",
    )
    pack.add_argument(
        "--shard-mb", type=float, help="split files larger than N MiB into parts (default: no split)"
    )
    pack.add_argument("--max-bundle-mb", type=float, help="refuse a bundle over N MiB (default: no limit)")
    pack.set_defaults(run=_remote_pack)
    run = steps.add_parser(
        "run", help="train and test a bundle's architectures (on the machine it was copied to)"
    )
    run.add_argument("bundle", type=Path, help="the bundle folder")
    run.add_argument("--out", type=Path, help="output folder (default: <bundle>-out beside the bundle)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: params' train.device")
    run.add_argument("--architectures", nargs="+", help="default: params' train.architectures")
    run.add_argument("--epochs", type=int, help="default: params' train.epochs")
    run.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="do not start an architecture that would likely end after this (default: no limit)",
    )
    run.add_argument("--shard-mb", type=float, help="split output files larger than N MiB into parts")
    run.set_defaults(run=_remote_run)
    imported = steps.add_parser(
        "import",
        help="check a run's output folder, re-evaluate its best model on this "
        "project's test split, log it to MLflow and register it",
    )
    imported.add_argument("run_dir", type=Path, help="the output folder of `segpipe remote run`")
    imported.set_defaults(run=_remote_import)


def _ui(args: argparse.Namespace) -> None:
    from segpipe.data.manifest import DatasetInfo
    from segpipe.tracking.mlflow_tracking import tracking_uri
    from segpipe.tracking.ui import UiServer, browser_base, experiments_url, serve_ui

    uri = tracking_uri(load_params(args.params).tracking)
    if uri.startswith(("http://", "https://")):
        raise ValueError(
            f"MLFLOW_TRACKING_URI / tracking.uri is a server, which has its UI: open "
            f"{experiments_url(browser_base(uri))}; segpipe ui serves a local sqlite store"
        )
    prepared = ProjectPaths(args.root).prepared
    dataset = args.dataset or (DatasetInfo.load(prepared).name if prepared.is_dir() else None)
    serve_ui(UiServer(uri, args.port), dataset)


def _recipe(args: argparse.Namespace) -> None:
    from segpipe.recipes import apply_recipe

    changed = apply_recipe(args.name, args.params, args.root / "recipes", args.data_root)
    listed = ", ".join(changed) if changed else "nothing (params already follow it)"
    print(f"{args.params}: recipe {args.name} set {listed}; run `dvc repro` to train with it")


def _add_recipe(commands: argparse._SubParsersAction) -> None:
    recipe = commands.add_parser(
        "recipe", help="write a recipe's settings (recipes/<name>.yaml) into the params file"
    )
    recipe.add_argument("name", help="recipe name, e.g. camvid or oxford_pets")
    recipe.add_argument(
        "--data-root", default=None, metavar="FOLDER", help="where the dataset lies (sets prepare.root)"
    )
    recipe.set_defaults(run=_recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)"
    )
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="project root holding data/, models/, reports/"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_registry(commands)
    _add_remote(commands)
    _add_models_io(commands)
    _add_server(commands)
    _add_ui(commands)
    _add_recipe(commands)
    return parser


def _add_registry(commands: argparse._SubParsersAction) -> None:
    promote = commands.add_parser("promote", help="move the champion alias to the challenger if it is better")
    promote.add_argument(
        "--require-gpu", action="store_true", help="only a CUDA-trained model may become champion"
    )
    promote.set_defaults(run=_promote)
    rollback = commands.add_parser("rollback", help="restore the previous champion")
    rollback.add_argument(
        "--from",
        dest="replacing",
        metavar="VERSION",
        help="only while VERSION is the champion (a retried rollback then changes nothing)",
    )
    rollback.set_defaults(run=_rollback)
    models = commands.add_parser("models", help="list registered versions, aliases and metrics")
    models.add_argument("--dataset", help="dataset name (default: the prepared dataset's)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models)
    sync = commands.add_parser("sync", help="send tracking buffered while the MLflow server was unreachable")
    sync.add_argument(
        "--spool-dir", type=Path, help="default: $SEGPIPE_TRACKING_SPOOL or .segpipe/tracking-spool"
    )
    sync.set_defaults(run=_sync)


def _add_models_io(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser(
        "convert-checkpoint",
        help="rewrite a previous-format model.pt (pickled) as "
        "model.safetensors + model.json; loads it with torch.load(weights_only=True)",
    )
    convert.add_argument("checkpoint", type=Path, help="the model.pt to convert (only files you trust)")
    convert.add_argument("--out", type=Path, help="default: model.safetensors beside it")
    convert.set_defaults(run=_convert_checkpoint)
    predict = commands.add_parser("predict", help="write class-id masks and colour overlays for images")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version>, an MLflow model folder or "
        "models/<arch>/model.safetensors; a model that would need unpickling is refused",
    )
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="run at this size (e.g. the training size)"
    )
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    predict.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 autocast + channels_last on CUDA and on CPUs with native bf16, else fp32",
    )
    predict.set_defaults(run=_predict)
    export = commands.add_parser("export", help="write a model as ONNX (dynamic batch, height and width)")
    export.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version> or models/<arch>/model.safetensors",
    )
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument("--out", type=Path, required=True, help="the file to write, e.g. model.onnx")
    export.set_defaults(run=_export)


def _add_server(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser(
        "server", help="run a team MLflow server: runs in PostgreSQL, artifacts served by it"
    )
    server.add_argument(
        "--backend-store-uri",
        default=os.environ.get("MLFLOW_BACKEND_STORE_URI", ""),
        help="postgresql://USER:PASSWORD@HOST:5432/DATABASE (or another SQLAlchemy URI); "
        "default: $MLFLOW_BACKEND_STORE_URI, which keeps the password off the command line",
    )
    server.add_argument(
        "--artifacts-destination",
        default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", ""),
        help="a folder or s3://BUCKET/PREFIX (default: $MLFLOW_ARTIFACTS_DESTINATION)",
    )
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: 127.0.0.1, the local machine "
        "only; 0.0.0.0 for all: the server has no authentication)",
    )
    server.add_argument("--port", type=int, default=5000, help="default: 5000")
    server.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app: clients need MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; "
        "needs MLFLOW_FLASK_SERVER_SECRET_KEY, and MLFLOW_AUTH_ADMIN_PASSWORD on the first start",
    )
    server.add_argument("--workers", type=int, default=4, help="server worker processes (default: 4)")
    server.add_argument(
        "--allowed-hosts",
        default="",
        metavar="HOST[,HOST...]",
        help="more host names clients may use (localhost, private IPs and, with --host, this "
        "machine's name always work); MLflow's patterns, e.g. mlflow.example.org,*.example.org:*",
    )
    server.set_defaults(run=_server)


def _add_ui(commands: argparse._SubParsersAction) -> None:
    ui = commands.add_parser(
        "ui", help="browse the local tracking store (params tracking.uri) in the MLflow UI until Ctrl-C"
    )
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    ui.add_argument(
        "--dataset", default=None, help="dataset whose runs to open (default: the prepared data's)"
    )
    ui.set_defaults(run=_ui)


def _user_errors(args: argparse.Namespace) -> tuple[type[BaseException], ...]:
    """Errors printed as one line: a remote run's host has no MLflow, so only its own errors there."""
    if args.command == "remote" and args.step == "run":
        return ConfigError, FileNotFoundError, FileExistsError, ValueError
    from mlflow.exceptions import MlflowException

    from segpipe.stages.entry import USER_ERRORS
    from segpipe.tracking.mlflow_tracking import ServerUnreachable

    return *USER_ERRORS, FileExistsError, MlflowException, TimeoutError, ServerUnreachable


def main(argv: Sequence[str] | None = None) -> int:
    disallow_pickle_loading()
    args = build_parser().parse_args(argv)
    errors = _user_errors(args)
    try:
        args.run(args)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
