"""The ``vidq`` command: one entry point for the API, the worker, migrations, keys, the demo and
the engine's own ``generate``."""

from __future__ import annotations

import argparse
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
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] or None
    run_worker(settings, models=models, queues=queues, loglevel=args.loglevel)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import json

    from vidq.client import Client, VidqError
    from vidq.progress_bar import JobProgressBar

    fields = {
        "model": args.model,
        "size": args.size,
        "num_frames": args.num_frames,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "webhook_url": args.webhook_url,
    }
    try:
        with Client(args.base_url, args.api_key) as client:
            video = client.create(args.prompt, **fields)
            print(f"submitted {video['id']}", file=sys.stderr)
            if args.wait or args.out:
                bar = JobProgressBar()
                video = client.wait(video["id"], on_progress=bar.update)
                bar.close()
                if video["status"] != "completed":
                    error = (video.get("error") or {}).get("message", "")
                    print(f"video {video['id']} {video['status']}: {error}", file=sys.stderr)
                    print(json.dumps(video))
                    return 1
                if args.out:
                    path = client.download(video["id"], args.out)
                    print(f"saved {path}", file=sys.stderr)
    except VidqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(video))
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
    worker.add_argument(
        "--queues",
        default="",
        help="comma-separated queues (default: the models' GPU queues and 'webhooks'); "
        "'--queues webhooks' runs a CPU-only webhook sender that loads no model",
    )
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

    submit = sub.add_parser("submit", help="submit a job to a running API (VIDQ_BASE_URL, VIDQ_API_KEY)")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--model")
    submit.add_argument("--size", help="WIDTHxHEIGHT")
    submit.add_argument("--num-frames", type=int)
    submit.add_argument("--steps", type=int, help="num_inference_steps")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--webhook-url", help="receives this job's signed events")
    submit.add_argument("--wait", action="store_true", help="draw a progress bar until the job ends")
    submit.add_argument("--out", help="download the video here when done (implies --wait)")
    submit.add_argument("--base-url", help="the API (default: VIDQ_BASE_URL or http://127.0.0.1:8000)")
    submit.add_argument("--api-key", help="default: VIDQ_API_KEY")
    submit.set_defaults(func=cmd_submit)

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
    from jobs.logs import configure_logging

    configure_logging(level=args.log_level, fmt=_settings().log_format)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
