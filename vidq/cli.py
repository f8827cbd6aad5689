"""The ``vidq`` command: one entry point for the API, the worker, migrations, keys, the demo and
the engine's own ``generate``."""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.settings import Settings


def _settings() -> Settings:
    return Settings()


def _ensure_embedded_schema(settings: Settings) -> None:
    # Embedded mode has no deploy step, so its SQLite schema is brought up to date on use.
    # With a real database, `vidq migrate` is an explicit deployment step.
    if settings.embedded:
        from jobs import migrate

        migrate.upgrade(settings)


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.embedded:
        from vidq.embedded import EmbeddedRuntime

        runtime = EmbeddedRuntime(settings, host=args.host, port=args.port).start()
        print(f"vidq (embedded: API + worker in one process) on {runtime.base_url}", file=sys.stderr)
        runtime.wait()
        runtime.stop()
        return 0
    import uvicorn

    from api.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, proxy_headers=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    settings = _settings()
    if settings.embedded:
        print(
            "vidq worker needs VIDQ_DATABASE_URL and VIDQ_REDIS_URL; in embedded mode `vidq api` "
            "runs the worker in-process.",
            file=sys.stderr,
        )
        return 2
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    run_worker(settings, models=models, loglevel=args.loglevel)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from jobs import migrate

    settings = _settings()
    if args.downgrade:
        migrate.downgrade(settings, args.downgrade)
    else:
        migrate.upgrade(settings, args.revision)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from jobs.db import make_engine, make_session_factory, session_scope
    from jobs.keys import create_key

    settings = _settings()
    _ensure_embedded_schema(settings)
    with session_scope(make_session_factory(make_engine(settings))) as session:
        created = create_key(session=session, name=args.name, is_admin=args.admin)
        kind = "admin key" if args.admin else "key"
        print(f"created {kind} {created.record.id} ({args.name}); it is shown only once:", file=sys.stderr)
    print(created.plaintext)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from jobs.db import make_engine, make_session_factory, session_scope
    from jobs.keys import revoke_key

    settings = _settings()
    with session_scope(make_session_factory(make_engine(settings))) as session:
        revoke_key(session=session, key_id=args.id)
    print(f"revoked key {args.id}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vidq.demo import run_demo

    path = run_demo(_settings(), prompt=args.prompt)
    print(path)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.cli import run_generate

    return run_generate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidq", description="Text-to-video generation service and engine.")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default WARNING).")
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the REST API (OpenAPI at /openapi.json)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a GPU worker (one process per GPU)")
    worker.add_argument("--models", default="", help="comma-separated models to serve (default: every installed)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    mig = sub.add_parser("migrate", help="bring the database schema up to date (alembic upgrade)")
    mig.add_argument("--revision", default="head")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    mig.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints it alone on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="the key may use the admin side")
    create.set_defaults(func=cmd_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=cmd_keys_revoke)

    demo = sub.add_parser("demo", help="run the whole product in one process and render a clip")
    demo.add_argument("--prompt", default="a red fox running through fresh snow at sunrise, cinematic")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="render one video with the engine alone (no service)")
    from engine.cli import add_generate_arguments

    add_generate_arguments(gen)
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
