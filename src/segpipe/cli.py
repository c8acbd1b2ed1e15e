"""The ``segpipe`` command: registry operations and prediction (the pipeline itself runs with ``dvc repro``).

    segpipe promote            # challenger -> champion if it passes the gates (params.yaml: promote)
    segpipe rollback [--from V] # champion -> the previous champion (--from: only while V is champion)
    segpipe models             # versions, aliases, metrics
    segpipe sync               # send tracking buffered while the MLflow server was down
    segpipe import-run DIR     # log + register a GPU run folder after re-checking its best model on the CPU
    segpipe predict IMAGE... --model models:/segpipe-synthetic@champion --out predictions/
    segpipe server --backend-store-uri postgresql://... --artifacts-destination DIR  # a team MLflow server
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from segpipe.stages.entry import USER_ERRORS
from segpipe.config import load_params
from segpipe.paths import ProjectPaths


def _promote(args: argparse.Namespace) -> None:
    from segpipe.registry.promotion import promote

    params = load_params(args.params)
    if args.require_gpu:
        params = params.model_copy(update={"promote": params.promote.model_copy(update={"require_gpu": True})})
    decision = promote(params, ProjectPaths(args.root))
    print(f"{'PROMOTED' if decision.promoted else 'KEPT'} {decision.model}: challenger v{decision.challenger_version} "
          f"vs {decision.baseline}: {decision.reason}")


def _rollback(args: argparse.Namespace) -> None:
    from segpipe.registry.promotion import rollback

    record = rollback(load_params(args.params), ProjectPaths(args.root), replacing=args.replacing)
    if record["action"] == "already_rolled_back":
        print(f"nothing to do: the champion of {record['model']} is version {record['champion_version']}, "
              f"not {record['replaced_version']} (already rolled back)")
        return
    print(f"champion of {record['model']} is version {record['champion_version']} again "
          f"(was {record['replaced_version']})")


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


def _predict(args: argparse.Namespace) -> None:
    from segpipe.predict import predict_files
    from segpipe.tracking.mlflow_tracking import tracking_uri
    from segpipe.training.device import resolve_device

    if args.model.startswith(("models:/", "runs:/")):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri(load_params(args.params).tracking))
    written = predict_files(args.images, args.model, args.out, resolve_device(args.device),
                            tuple(args.size) if args.size else None)
    print(f"wrote {len(written)} files to {args.out}")


def _sync(args: argparse.Namespace) -> None:
    from segpipe.tracking.mlflow_tracking import sync_spools

    sent = sync_spools(load_params(args.params).tracking, args.spool_dir)
    for spool, run_id in sent:
        print(f"sent {spool.name} -> run {run_id}")
    print(f"{len(sent)} buffered run(s) sent" if sent else "nothing to send: no buffered tracking left")


def _import_run(args: argparse.Namespace) -> None:
    from segpipe import io
    from segpipe.remote.importer import import_run

    params = load_params(args.params)
    if not params.tracking.enabled:
        raise ValueError("tracking.enabled is false: import-run logs and registers in MLflow; switch tracking on")
    imported = import_run(args.run_dir, args.pack, params.tracking, params.register_.alias)
    io.write_json(ProjectPaths(args.root).registry_record, imported.registered.as_dict())
    print(imported.summary())


def _server(args: argparse.Namespace) -> None:
    from segpipe.tracking.server import ServerSettings, serve

    serve(ServerSettings(args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.workers,
                         tuple(host.strip() for host in args.allowed_hosts.split(",") if host.strip())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root holding data/, models/, reports/")
    commands = parser.add_subparsers(dest="command", required=True)
    promote = commands.add_parser("promote", help="move the champion alias to the challenger if it is better")
    promote.add_argument("--require-gpu", action="store_true", help="only a CUDA-trained model may become champion")
    promote.set_defaults(run=_promote)
    rollback = commands.add_parser("rollback", help="restore the previous champion")
    rollback.add_argument("--from", dest="replacing", metavar="VERSION",
                          help="only while VERSION is the champion (a retried rollback then changes nothing)")
    rollback.set_defaults(run=_rollback)
    models = commands.add_parser("models", help="list registered versions, aliases and metrics")
    models.add_argument("--dataset", help="dataset name (default: the prepared dataset's)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=_models)
    sync = commands.add_parser("sync", help="send tracking buffered while the MLflow server was unreachable")
    sync.add_argument("--spool-dir", type=Path, help="default: $SEGPIPE_TRACKING_SPOOL or .segpipe/tracking-spool")
    sync.set_defaults(run=_sync)
    imported = commands.add_parser("import-run", help="log a GPU run folder (pipelines/gpu_run.py) to MLflow and "
                                   "register its best model after re-checking it on the CPU")
    imported.add_argument("run_dir", type=Path, help="the folder gpu_run.py wrote (run.json, metrics.json, shards)")
    imported.add_argument("--pack", type=Path, default=Path("pack/camvid.npz"),
                          help="the CamVid pack the run trained on (default: pack/camvid.npz)")
    imported.set_defaults(run=_import_run)
    predict = commands.add_parser("predict", help="write class-id masks and colour overlays for images")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a model.pt")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="run at this size (e.g. the training size)")
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    predict.set_defaults(run=_predict)
    server = commands.add_parser("server", help="run a team MLflow server: runs in PostgreSQL, artifacts served by it")
    server.add_argument("--backend-store-uri", default=os.environ.get("MLFLOW_BACKEND_STORE_URI", ""),
                        help="postgresql://USER:PASSWORD@HOST:5432/DATABASE (or another SQLAlchemy URI); "
                        "default: $MLFLOW_BACKEND_STORE_URI, which keeps the password off the command line")
    server.add_argument("--artifacts-destination", default=os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", ""),
                        help="a folder or s3://BUCKET/PREFIX (default: $MLFLOW_ARTIFACTS_DESTINATION)")
    server.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine "
                        "only; 0.0.0.0 for all: the server has no authentication)")
    server.add_argument("--port", type=int, default=5000, help="default: 5000")
    server.add_argument("--workers", type=int, default=4, help="server worker processes (default: 4)")
    server.add_argument("--allowed-hosts", default="", metavar="HOST[,HOST...]",
                        help="more host names clients may use (localhost, private IPs and, with --host, this "
                        "machine's name always work); MLflow's patterns, e.g. mlflow.example.org,*.example.org:*")
    server.set_defaults(run=_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlflow.exceptions import MlflowException

    from segpipe.tracking.mlflow_tracking import ServerUnreachable

    try:
        args.run(args)
    except (*USER_ERRORS, MlflowException, TimeoutError, ServerUnreachable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
