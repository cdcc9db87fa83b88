"""``privtune``: one command line for the whole service.

privtune up        embedded default: SQLite + embedded Redis + gateway + workers; prints URL and key
privtune serve     production gateway (PRIVTUNE_DATABASE_URL, PRIVTUNE_REDIS_URL, ...)
privtune worker    production Celery worker (solo pool: one process per GPU)
privtune keys create --org NAME [--name N] [--expires-in DAYS] | list [--json] | revoke ID   (--data-dir DIR)
privtune models export MODEL --split-layer L
privtune inference-worker   serve fine-tuned models (inference sessions; one process per GPU)
privtune demo [--json] [--task generation]   the README's main job (or private chat fine-tuning)
privtune eval [--quick] [--out results.jsonl] [--data-dir DIR] [--report]   privacy-utility evaluation
privtune proxy --model ft:... [--port 8001]   local OpenAI-compatible endpoint for a fine-tuned model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from typing import Any

from client_sdk.privacy.table import MECHANISMS  # torch-free


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM / SIGHUP as Ctrl-C: unwind, so the stack stops what it started (the embedded
    redis-server daemonizes into its own session: a signal to our process group does not reach it,
    and the default SIGTERM action would exit without stopping it)."""
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    import signal

    from privtune.embedded import CannotListen, EmbeddedStack

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    stack = EmbeddedStack(args.data_dir, host=args.host, port=args.port, worker_log=f"{args.data_dir}/worker.log")
    try:
        with stack:
            print(f"PrivTune is up at {stack.base_url}")
            print(f"API key: {stack.api_key}")
            print(f"export PRIVTUNE_BASE_URL={stack.base_url} PRIVTUNE_API_KEY={stack.api_key}")
            try:
                stack.wait()
            except KeyboardInterrupt:
                print("stopping")
    except CannotListen as exc:  # raised by the first thing start() does (a busy port...): nothing was started
        print(f"privtune up: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.db.migrate import upgrade_to_head
    from service.settings import get_settings

    if args.migrate:
        upgrade_to_head(get_settings().database_url)
    uvicorn.run("api.main:app_factory", factory=True, host=args.host, port=args.port, workers=args.workers)
    return 0


def _worker(args: argparse.Namespace) -> int:
    import os

    if args.device:
        os.environ["PRIVTUNE_WORKER_DEVICE"] = args.device
    from worker.celery_app import create_app

    app = create_app()
    name = f"privtune-{args.queues.replace(',', '-')}-{uuid.uuid4().hex[:6]}@%h"
    app.worker_main(
        [
            "worker",
            "-P",
            "solo",
            "-Q",
            args.queues,
            "-n",
            name,
            "--loglevel",
            args.loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _keys_database(args: argparse.Namespace) -> str | None:
    """The database URL the key commands use: ``--data-dir`` (its ``privtune.sqlite3``) when given,
    else the environment (``PRIVTUNE_DATABASE_URL``, ``PRIVTUNE_DATA_DIR``, default ``.privtune``).
    None (after a message on stderr) when that is no PrivTune database; nothing is created."""
    from service.settings import Settings, get_settings

    url = (
        Settings(data_dir=args.data_dir, database_url="").database_url if args.data_dir else get_settings().database_url
    )
    problem = _missing_schema(url)
    if problem:
        print(
            f"privtune keys {args.keys_command}: {problem}. Point at the service's data with --data-dir DIR "
            "(the directory of `privtune up`) or set PRIVTUNE_DATA_DIR / PRIVTUNE_DATABASE_URL to the service's "
            "database; `privtune serve --migrate` creates the schema of a new database.",
            file=sys.stderr,
        )
        return None
    return url


def _keys_session(url: str):
    from sqlalchemy.orm import sessionmaker

    from service.db.session import make_engine

    return sessionmaker(make_engine(url)).begin()


def _keys_create(args: argparse.Namespace) -> int:
    import time

    from service.db.keys import create_api_key

    if args.expires_in is not None and args.expires_in <= 0:
        print("privtune keys create: --expires-in must be a positive number of days", file=sys.stderr)
        return 2
    url = _keys_database(args)
    if url is None:
        return 2
    expires_at = None if args.expires_in is None else int(time.time() + args.expires_in * 86400)
    with _keys_session(url) as session:
        key, org_id = create_api_key(session, args.org, args.name, expires_at=expires_at)
    print(json.dumps({"organization_id": org_id, "api_key": key, "expires_at": expires_at}))
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from service.db.keys import list_api_keys

    url = _keys_database(args)
    if url is None:
        return 2
    with _keys_session(url) as session:
        keys = list_api_keys(session, args.org)
    if args.json:
        print(json.dumps(keys))
        return 0
    columns = ("id", "name", "organization", "key", "created_at", "expires_at", "last_used_at", "revoked_at")
    rows = [[_key_cell(k[c], c) for c in columns] for k in keys]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    for row in [list(columns), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _key_cell(value: Any, column: str) -> str:
    import time

    if column.endswith("_at"):
        return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value))
    return str(value) if value else "-"


def _keys_revoke(args: argparse.Namespace) -> int:
    from service.db.errors import ObjectNotFound
    from service.db.keys import revoke_api_key_by_id

    url = _keys_database(args)
    if url is None:
        return 2
    try:
        with _keys_session(url) as session:
            key = revoke_api_key_by_id(session, args.key_id)
    except ObjectNotFound:
        print(f"privtune keys revoke: no key with id {args.key_id!r} (see `privtune keys list`)", file=sys.stderr)
        return 2
    print(json.dumps(key))
    return 0


def _missing_schema(url: str) -> str | None:
    """Why ``url`` is not a PrivTune database (None when it is); creates nothing (a SQLite file that
    does not exist is not opened, so no empty file is left behind)."""
    from pathlib import Path

    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if on_disk and not Path(parsed.database).is_file():
        return f"no database at {Path(parsed.database).resolve()}"
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if "api_keys" not in tables:
        return f"the database at {parsed.render_as_string(hide_password=True)} has no PrivTune schema"
    return None


def _models_export(args: argparse.Namespace) -> int:
    from worker.tasks import export_bottom

    print(export_bottom(args.model, args.split_layer))
    return 0


def _inference_worker(args: argparse.Namespace) -> int:
    import os

    if args.device:
        os.environ["PRIVTUNE_WORKER_DEVICE"] = args.device
    from worker.inference.__main__ import main

    return main()


def _demo(args: argparse.Namespace) -> int:
    if args.task == "generation":
        return _demo_generation(args)
    from privtune.demo import run_demo

    epochs = 3 if args.epochs is None else args.epochs
    result = run_demo(
        mechanism=args.mechanism, eta=args.eta, epochs=epochs, data_dir=args.data_dir, progress=not args.json
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"job {result['job_id']}: {result['status']} -> {result['fine_tuned_model']}")
    print(f"data: {result['dataset']}, {result['train_examples']} train / {result['validation_examples']} held out")
    print(f"privacy: mechanism={result['mechanism']} eta={result['eta']} (split after layer {result['split_layer']})")
    print(f"held-out accuracy: before {result['accuracy_before']:.3f} -> after {result['accuracy_after']:.3f}")
    print(
        f"bytes sent: {result['bytes_sent']:,} (received {result['bytes_received']:,}); "
        f"{result['samples_per_second']:.1f} samples/s; {result['events']} events, {result['checkpoints']} checkpoints"
    )
    return 0


def _demo_generation(args: argparse.Namespace) -> int:
    from privtune.demo_generation import DEMO_ETA, run_generation_demo

    result = run_generation_demo(
        mechanism=args.mechanism,
        eta=DEMO_ETA if args.eta is None and args.mechanism == "privtune" else args.eta,
        epochs=2 if args.epochs is None else args.epochs,
        data_dir=args.data_dir,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"job {result['job_id']}: {result['status']} -> {result['fine_tuned_model']}")
    print(f"data: {result['dataset']}, {result['train_examples']} train pairs, {result['test_pairs']} held-out pairs")
    print(
        f"split: device blocks 1..{result['split_layer']} + tail of {result['tail_layers']} blocks; "
        f"privacy: mechanism={result['mechanism']} eta={result['eta']}"
    )
    print(
        f"held-out ROUGE-L: base model {result['rouge_l_before']:.3f} -> private fine-tuned {result['rouge_l_after']:.3f}"
    )
    sample = result["sample"]
    print(f"sample: {sample['prompt']!r} -> {sample['answer']!r} (reference {sample['reference']!r})")
    print(f"bytes sent: {result['bytes_sent']:,} (received {result['bytes_received']:,})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    try:
        from evaluation.cli import run
    except ImportError:
        print("privtune eval needs the evaluation package (a source checkout; not in the service image)")
        return 2
    return run(args)


def _proxy(args: argparse.Namespace) -> int:
    import client_sdk
    from privtune.proxy import serve

    client = client_sdk.Client(base_url=args.base_url, api_key=args.api_key)
    options = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    model = client_sdk.FineTunedModel(args.model, client=client, **options)
    serve(model, host=args.host, port=args.port, api_key=args.proxy_api_key)
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default; descriptions keep their line breaks."""


def _command(sub: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
    parser.set_defaults(func=func)
    return parser


def _data_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help="the service's data directory, as given to `privtune up` (None: PRIVTUNE_DATABASE_URL / "
        "PRIVTUNE_DATA_DIR, else .privtune)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privtune", description=__doc__, formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "up", "run the embedded stack (SQLite, embedded Redis, gateway, workers) until Ctrl-C", _up)
    p.add_argument("--data-dir", default=".privtune", help="where the database, Redis, files and models live")
    p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    p.add_argument("--port", type=int, default=8000, help="port the gateway listens on")

    p = _command(sub, "serve", "run the gateway (settings from PRIVTUNE_* variables)", _serve)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--migrate", action="store_true", help="alembic upgrade head before serving")

    p = _command(sub, "worker", "run a Celery worker (solo pool: one process per GPU)", _worker)
    p.add_argument("--queues", default="gpu,artifacts", help="Celery queues: gpu (training), artifacts (exports)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (None: cuda if available, else cpu)")
    p.add_argument("--loglevel", default="INFO", help="Celery log level")

    keys = sub.add_parser("keys", help="API keys", formatter_class=_Help)
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = _command(keys_sub, "create", "create an organization's API key (printed once, stored hashed)", _keys_create)
    p.add_argument("--org", required=True, help="the organization's name (created if new)")
    p.add_argument("--name", default="", help="a label for the key (shown by `keys list`)")
    p.add_argument("--expires-in", type=float, default=None, help="days until the key expires (None: never)")
    _data_dir_option(p)
    p = _command(keys_sub, "list", "list API keys, redacted (never the secret or its hash)", _keys_list)
    p.add_argument("--org", default=None, help="only this organization's keys (None: every organization)")
    p.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    _data_dir_option(p)
    p = _command(keys_sub, "revoke", "revoke an API key by its id (from `keys list`)", _keys_revoke)
    p.add_argument("key_id", help="the key's id, key-...")
    _data_dir_option(p)

    models = sub.add_parser("models", help="base models", formatter_class=_Help)
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = _command(models_sub, "export", "export a bottom-model artifact for download", _models_export)
    p.add_argument("model", help="a base model name, e.g. minilm-l6")
    p.add_argument("--split-layer", type=int, default=3, help="blocks that run on the device")

    p = _command(sub, "demo", "the README's main job on the embedded stack", _demo)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--mechanism", default="privtune", choices=MECHANISMS, help="privacy mechanism")
    p.add_argument(
        "--eta", type=float, default=None, help="privacy parameter eta (None: the mechanism's default; see --task)"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (None: 3 classification, 2 generation)")
    p.add_argument("--data-dir", default=".privtune", help="where the embedded stack keeps its state")
    p.add_argument(
        "--task",
        default="classification",
        choices=("classification", "generation"),
        help="classification: minilm-l6 on chatterbot categories; generation: smollm2-135m on chatterbot "
        "conversations (privtune at eta DEMO_ETA unless --eta is given)",
    )

    p = _command(
        sub, "inference-worker", "serve fine-tuned models: inference sessions with swapped adapters", _inference_worker
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (None: cuda if available, else cpu)")

    p = _command(sub, "eval", "privacy-utility evaluation: attacks, sweeps, docs/RESULTS.md", _eval)
    try:
        from evaluation.cli import add_arguments  # argparse only: no torch at parser build
    except ImportError:  # the service image ships without the evaluation package
        add_arguments = None
    if add_arguments is not None:
        add_arguments(p)

    p = _command(sub, "proxy", "a local OpenAI-compatible endpoint (/v1) for a privately fine-tuned model", _proxy)
    p.add_argument("--model", required=True, help="the fine-tuned model's id, ft:<base>:<org>:<suffix>:<job>")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (beyond loopback: no auth unless --proxy-api-key)"
    )
    p.add_argument("--port", type=int, default=8001, help="port to listen on")
    p.add_argument(
        "--base-url",
        default=None,
        help="the PrivTune service (None: $PRIVTUNE_BASE_URL, else http://127.0.0.1:8000/v1)",
    )
    p.add_argument("--api-key", default=None, help="the PrivTune service's API key (None: $PRIVTUNE_API_KEY)")
    p.add_argument("--cache-dir", default=None, help="where bottom models are cached (None: the SDK's default cache)")
    p.add_argument(
        "--proxy-api-key", default=None, help="a key the proxy's own clients must send as Bearer token (None: no auth)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
