"""The ``vidq`` command: one entry point for the API, the worker, migrations, keys, models, the demo
and the engine's own ``generate``.

Every expected failure ends in one line on stderr that names the problem and the fix, and a non-zero
exit (``vidq.failures``); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from vidq.failures import EXIT_FAILED, EXIT_INTERRUPTED, CliError, ensure_port_free, explain

SERVICE_COMMANDS = ("api", "worker")  # long-running: they log at INFO unless told otherwise


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidq")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _Context:
    """What main() learns while a command runs, to explain a failure: the settings once loaded."""

    settings: Any = None


_ctx = _Context()


def _settings():  # type: ignore[no-untyped-def]
    """The process settings (cached); invalid ones raise pydantic's ValidationError, which
    ``explain`` turns into one line naming the variables, without their values."""
    if _ctx.settings is None:
        from jobs.settings import Settings

        _ctx.settings = Settings()
    return _ctx.settings


def _database_ready(settings) -> None:  # type: ignore[no-untyped-def]
    """Embedded mode migrates its SQLite on use (it has no deploy step); a real database must
    already be at the code's schema, or the command stops with "run `vidq migrate`"."""
    from jobs import migrate

    if settings.embedded:
        migrate.upgrade(settings)
    else:
        migrate.require_current_schema(settings)


def _session(settings):  # type: ignore[no-untyped-def]
    from jobs.db import make_engine, make_session_factory, session_scope

    _database_ready(settings)
    return session_scope(make_session_factory(make_engine(settings)))


# -- commands --------------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()
    settings.require_service_secret(host=args.host if settings.embedded else None)
    ensure_port_free(args.host, args.port)
    if settings.embedded:
        from vidq.embedded import EmbeddedRuntime

        runtime = EmbeddedRuntime(settings, host=args.host, port=args.port).start()
        print(f"vidq (embedded: API + worker in one process) on {runtime.base_url}", file=sys.stderr)
        runtime.wait()
        runtime.stop()
        return 0
    _database_ready(settings)
    import uvicorn

    # X-Forwarded-* are believed only from the proxies the operator named (VIDQ_TRUSTED_PROXIES):
    # otherwise anyone could pick the client address the login throttle counts.
    proxies = {"proxy_headers": bool(settings.trusted_proxy_list), "forwarded_allow_ips": settings.trusted_proxies}
    if args.workers > 1:
        # Separate processes: their metrics are summed through files in one shared folder, which
        # must be known before any of them imports prometheus_client.
        from vidq.serve import prepare_multiprocess_metrics

        prepare_multiprocess_metrics()
        os.environ["VIDQ_LOG_LEVEL"] = args.log_level  # each process sets up its logging as this one did
        uvicorn.run(
            "vidq.serve:create_served_app",
            factory=True,
            workers=args.workers,
            host=args.host,
            port=args.port,
            log_config=None,
            **proxies,
        )
        return 0
    from api.app import create_app
    from vidq.gc_tuning import tune_for_serving

    app = create_app(settings)
    tune_for_serving()
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, **proxies)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.embedded:
        raise CliError(
            "vidq worker needs VIDQ_DATABASE_URL and VIDQ_REDIS_URL; without them `vidq api` runs the worker "
            "in its own process"
        )
    _database_ready(settings)
    if settings.worker_metrics_port:
        ensure_port_free("0.0.0.0", settings.worker_metrics_port)
    from worker.main import run_worker

    models = [m.strip() for m in args.models.split(",") if m.strip()] or None
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] or None
    if queues != ["webhooks"] and not (models or _served_models(settings)):
        raise CliError(
            "this worker has no model to serve: install one (`vidq models list` says how), set "
            "VIDQ_WORKER_MODELS, or run a webhook sender with --queues webhooks"
        )
    run_worker(settings, models=models, queues=queues, loglevel=args.log_level)
    return 0


def _served_models(settings) -> list[str]:  # type: ignore[no-untyped-def]
    from worker.engines import served_models

    return served_models(settings)


def cmd_migrate(args: argparse.Namespace) -> int:
    from jobs import migrate

    settings = _settings()
    where = migrate.display_url(settings)
    if args.downgrade:
        report = migrate.downgrade(settings, args.downgrade)
        verb = "undid"
    else:
        report = migrate.upgrade(settings, args.revision)
        verb = "applied"
    if not report.applied:
        print(f"{where}: already at revision {report.after or 'base'}; nothing to do")
        return 0
    print(f"{where}: {report.before or 'empty'} -> {report.after or 'base'}")
    for revision in report.applied:
        print(f"  {verb} {revision}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from jobs.keys import create_key

    with _session(_settings()) as session:
        created = create_key(session=session, name=args.name, is_admin=args.admin)
        kind = "admin key" if args.admin else "key"
        print(f"created {kind} {created.record.id} ({args.name}); it is shown only once:", file=sys.stderr)
    print(created.plaintext)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from jobs.keys import list_keys

    with _session(_settings()) as session:
        keys = list_keys(session=session)
        rows = [
            (
                str(k.id),
                k.name,
                k.prefix + "...",
                "admin" if k.is_admin else "client",
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                "revoked " + k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "active",
            )
            for k in keys
            if args.all or k.revoked_at is None
        ]
    _print_table(("ID", "NAME", "KEY", "ROLE", "CREATED (UTC)", "STATUS"), rows)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from jobs.errors import NotFound
    from jobs.keys import revoke_key

    try:
        with _session(_settings()) as session:
            revoke_key(session=session, key_id=args.id)
    except NotFound:
        raise CliError(f"no API key with id {args.id}: `vidq keys list` shows the ids") from None
    print(f"revoked key {args.id}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from engine.models.locate import TINY_DIFFUSERS_NAMES, folder_is_complete, install_command, installed_folder
    from spec.registry import find_spec, list_specs

    models_dir = _settings().resolved_models_dir
    rows = []
    for spec in list_specs():
        if spec.builtin or spec.name in TINY_DIFFUSERS_NAMES:
            rows.append((spec.name, "built-in", "random weights, written on first use (demo and tests only)"))
            continue
        folder = installed_folder(spec, models_dir)
        if folder is not None:
            rows.append((spec.name, "installed", str(folder)))
        else:
            rows.append((spec.name, "not installed", f"`{install_command(spec)}`" if spec.hub_id else "-"))
    if models_dir.is_dir():
        for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if find_spec(folder.name) is None:
                state = "folder" if folder_is_complete(folder) else "incomplete folder"
                rows.append((folder.name, state, str(folder)))
    print(f"models folder: {models_dir} (VIDQ_MODELS_DIR); Hugging Face cache: HF_HOME", file=sys.stderr)
    _print_table(("MODEL", "STATUS", "WHERE / HOW TO INSTALL"), rows)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from vidq.client import Client
    from vidq.progress_bar import JobProgressBar

    fields = {
        "model": args.model,
        "negative_prompt": args.negative_prompt,
        "size": args.size,
        "seconds": args.seconds,
        "num_frames": args.num_frames,
        "fps": args.fps,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "seed": args.seed,
        "num_gpus": args.num_gpus,
        "webhook_url": args.webhook_url,
        "webhook_events": [e.strip() for e in args.webhook_events.split(",") if e.strip()]
        if args.webhook_events
        else None,
        "input_reference": _data_url(args.input_reference) if args.input_reference else None,
        "loras": [_lora_use(text) for text in args.lora] or None,
        "flow_shift": args.flow_shift,
        "acceleration": _acceleration(args.acceleration) if args.acceleration else None,
    }
    if not (args.api_key or os.environ.get("VIDQ_API_KEY")):
        raise CliError("no API key: set VIDQ_API_KEY or pass --api-key (an operator creates one: `vidq keys create`)")
    # One retry only: a person is waiting, and "not running" should be said within a second.
    with Client(args.base_url, args.api_key, max_retries=1, backoff_s=0.25) as client:
        video = client.create(args.prompt, idempotency_key=args.idempotency_key, **fields)
        print(f"submitted {video['id']}", file=sys.stderr)
        if args.wait or args.out:
            bar = JobProgressBar()
            bar.update(video)
            video = client.wait(video["id"], on_progress=bar.update)
            bar.close()
            if video["status"] != "completed":
                error = (video.get("error") or {}).get("message", "")
                print(json.dumps(video))
                raise CliError(f"video {video['id']} {video['status']}" + (f": {error}" if error else ""))
            done = video.get("acceleration_result")
            if done:
                total = done["steps_computed"] + done["steps_skipped"]
                print(
                    f"acceleration: {done.get('preset') or 'none'}; {done['steps_computed']}/{total} steps computed, "
                    f"precision {done['precision']}",
                    file=sys.stderr,
                )
            if args.out:
                path = client.download(video["id"], args.out)
                print(f"saved {path}", file=sys.stderr)
    print(json.dumps(video))
    return 0


def _acceleration(text: str) -> str | dict[str, Any]:
    """`--acceleration PRESET` or `--acceleration '{"cache": "magcache", ...}'` (the server validates)."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)  # type: ignore[no-any-return]
    except ValueError:
        raise CliError("--acceleration: a preset name or a JSON object of options") from None


def _lora_use(text: str) -> dict[str, object]:
    """`--lora ID`, `--lora ID:SCALE`, or for a two-expert model's high-noise/low-noise pair
    `--lora HIGH[:SCALE],LOW[:SCALE_2]`."""
    use: dict[str, object] = {}
    for suffix, part in zip(("", "_2"), text.split(",", 1), strict=False):
        lora_id, _, scale = part.partition(":")
        use[f"id{suffix}"] = lora_id
        if scale:
            try:
                use[f"scale{suffix}"] = float(scale)
            except ValueError:
                raise CliError(f"--lora {text}: the scale after ':' must be a number") from None
    return use


def cmd_loras(args: argparse.Namespace) -> int:
    from vidq.client import Client

    if not (args.api_key or os.environ.get("VIDQ_API_KEY")):
        raise CliError("no API key: set VIDQ_API_KEY or pass --api-key (an operator creates one: `vidq keys create`)")
    with Client(args.base_url, args.api_key, max_retries=1, backoff_s=0.25) as client:
        if args.loras_command == "add":
            result = client.add_lora(
                args.path,
                name=args.name,
                model=args.model,
                public=args.public,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                flow_shift=args.flow_shift,
            )
            print(f"added {result['id']} ({result['format']}, rank {result['rank']})", file=sys.stderr)
        elif args.loras_command == "list":
            result = client.list_loras(limit=args.limit, after=args.after)
        else:
            result = client.delete_lora(args.lora_id)
    print(json.dumps(result))
    return 0


def _data_url(path: str) -> str:
    """An image file as the ``data:`` URL the API takes for ``input_reference``."""
    import base64
    import mimetypes
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise CliError(f"--image {path}: no such file")
    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode()}"


def cmd_demo(args: argparse.Namespace) -> int:
    from vidq.demo import run_demo

    path = run_demo(_settings(), prompt=args.prompt)
    print(path)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.cli import run_generate

    return run_generate(args)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- parser ----------------------------------------------------------------------------------------


def _command(sub: Any, name: str, help: str, parents: list[argparse.ArgumentParser], **kw: Any) -> Any:
    """A subcommand whose --help shows `help` as its description."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", parents=parents, **kw)


def build_parser() -> argparse.ArgumentParser:
    # --log-level is accepted before or after the command (`vidq --log-level DEBUG worker` or
    # `vidq worker --log-level DEBUG`); SUPPRESS keeps a subcommand from resetting the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="logging level (default VIDQ_LOG_LEVEL, else INFO for `api` and `worker`, WARNING otherwise); "
        "format: VIDQ_LOG_FORMAT",
    )
    parser = argparse.ArgumentParser(
        prog="vidq",
        description="Text-to-video generation: a job API, GPU workers and a diffusion engine. "
        "Settings come from VIDQ_* environment variables (see the README).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"vidq {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="each has its own --help")
    p = [common]

    api = _command(sub, "api", "serve the REST API (OpenAPI at /openapi.json, docs at /docs)", p)
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    api.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (default 1); /metrics sums them through PROMETHEUS_MULTIPROC_DIR",
    )
    api.set_defaults(func=cmd_api)

    worker = _command(sub, "worker", "run a GPU worker (one process per GPU) or a webhook sender", p)
    worker.add_argument("--models", default="", help="comma-separated models to serve (default: every installed)")
    worker.add_argument(
        "--queues",
        default="",
        help="comma-separated queues (default: the models' GPU queues; 'webhooks' too with VIDQ_WORKER_WEBHOOKS=true); "
        "'--queues webhooks' runs a CPU-only webhook sender that loads no model",
    )
    worker.set_defaults(func=cmd_worker)

    mig = _command(sub, "migrate", "bring the database schema up to date and report what was applied", p)
    mig.add_argument("--revision", default="head", help="upgrade to this revision (default head)")
    mig.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    mig.set_defaults(func=cmd_migrate)

    keys = _command(sub, "keys", "manage API keys", p).add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", help="create, list or revoke"
    )
    create = _command(keys, "create", "create a key; prints it alone on the last line (shown only once)", p)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--admin", action="store_true", help="the key may use the admin dashboard and /metrics")
    create.set_defaults(func=cmd_keys_create)
    listing = _command(keys, "list", "list keys: id, name, first characters, role, status", p)
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(func=cmd_keys_list)
    revoke = _command(keys, "revoke", "revoke a key by its id (`vidq keys list` shows the ids)", p)
    revoke.add_argument("id", type=int, help="the key's id")
    revoke.set_defaults(func=cmd_keys_revoke)

    models = _command(sub, "models", "the models this machine has", p).add_subparsers(
        dest="models_command", required=True, metavar="ACTION", help="list"
    )
    mlist = _command(models, "list", "known models, whether each is installed, and how to install it", p)
    mlist.set_defaults(func=cmd_models_list)

    submit = _command(sub, "submit", "submit a job to a running API (VIDQ_BASE_URL, VIDQ_API_KEY)", p)
    submit.add_argument("--prompt", required=True, help="what the video shows")
    submit.add_argument("--negative-prompt", help="what it should not show")
    submit.add_argument("--model", help="registry name (default: the server's VIDQ_DEFAULT_MODEL)")
    submit.add_argument("--size", help="WIDTHxHEIGHT, one of the model's sizes")
    submit.add_argument("--seconds", help="length in seconds (instead of --num-frames)")
    submit.add_argument("--num-frames", type=int, help="4k+1 frames (default: the model's)")
    submit.add_argument("--fps", type=int, help="frames per second of the mp4 (default: the model's)")
    submit.add_argument("--steps", type=int, help="denoising steps, num_inference_steps (default: the model's)")
    submit.add_argument("--guidance", type=float, help="guidance_scale (default: the model's)")
    submit.add_argument("--seed", type=int, help="default: drawn by the server and recorded")
    submit.add_argument("--num-gpus", type=int, help="GPUs to run the job across: 1, 2, 4 or 8")
    submit.add_argument("--webhook-url", help="receives this job's signed events")
    submit.add_argument("--webhook-events", help="comma-separated events for --webhook-url, e.g. video.completed")
    submit.add_argument(
        "--image",
        "--input-reference",
        dest="input_reference",
        metavar="PATH",
        help="first frame for image-to-video models (PNG, JPEG or WebP; sent as input_reference)",
    )
    submit.add_argument(
        "--lora",
        action="append",
        default=[],
        help="a LoRA adapter: ID or ID:SCALE (repeatable); a two-expert model's "
        "high-noise/low-noise pair: HIGH[:SCALE],LOW[:SCALE]",
    )
    submit.add_argument("--flow-shift", type=float, help="the sampler's flow shift (default: the adapters' or model's)")
    submit.add_argument(
        "--acceleration",
        help="fast modes: none (default, lossless), balanced, fast, or a JSON object of options",
    )
    submit.add_argument("--idempotency-key", help="submitting twice with the same key returns the first job")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")
    submit.add_argument("--out", help="download the video here when done (implies --wait)")
    submit.add_argument("--base-url", help="the API (default: VIDQ_BASE_URL or http://127.0.0.1:8000)")
    submit.add_argument("--api-key", help="default: VIDQ_API_KEY")
    submit.set_defaults(func=cmd_submit)

    loras = _command(sub, "loras", "manage LoRA adapters through the API (VIDQ_BASE_URL, VIDQ_API_KEY)", p)
    loras_sub = loras.add_subparsers(dest="loras_command", required=True, metavar="ACTION", help="add, list or delete")
    add = _command(loras_sub, "add", "upload a .safetensors adapter; prints it as JSON", p)
    add.add_argument("path", help="the .safetensors file")
    add.add_argument("--name", required=True, help="a name to tell it apart")
    add.add_argument("--model", required=True, help="the model it is for, e.g. wan2.1-t2v-1.3b")
    add.add_argument("--steps", type=int, help="recommended num_inference_steps (e.g. 4 for a distilled adapter)")
    add.add_argument("--guidance", type=float, help="recommended guidance_scale (1: no unconditional pass)")
    add.add_argument("--flow-shift", type=float, help="recommended flow_shift")
    add.add_argument("--public", action="store_true", help="admins: publish it to every client")
    llist = _command(loras_sub, "list", "your adapters and the published ones, newest first", p)
    llist.add_argument("--limit", type=int, default=20, help="how many to list (default 20)")
    llist.add_argument("--after", help="the last id of the previous page")
    remove = _command(loras_sub, "delete", "delete an adapter", p)
    remove.add_argument("lora_id", help="lora_...")
    for action in (add, llist, remove):
        action.add_argument("--base-url", help="the API (default: VIDQ_BASE_URL or http://127.0.0.1:8000)")
        action.add_argument("--api-key", help="default: VIDQ_API_KEY")
        action.set_defaults(func=cmd_loras)

    demo = _command(sub, "demo", "run the whole product in one process and render a clip with tiny-wan", p)
    demo.add_argument(
        "--prompt", default="a red fox running through fresh snow at sunrise, cinematic", help="the prompt"
    )
    demo.set_defaults(func=cmd_demo)

    gen = _command(sub, "generate", "render one video with the engine alone (no service)", p)
    from engine.cli import add_generate_arguments

    add_generate_arguments(gen)
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    _ctx.settings = None
    args = build_parser().parse_args(argv)
    if not hasattr(args, "log_level"):
        default = "INFO" if args.command in SERVICE_COMMANDS else "WARNING"
        args.log_level = os.environ.get("VIDQ_LOG_LEVEL", default).upper()
    from jobs.logs import configure_logging

    try:
        configure_logging(
            level=args.log_level,
            fmt=os.environ.get("VIDQ_LOG_FORMAT", "text").lower(),
            service=args.command in (*SERVICE_COMMANDS, "demo"),
        )
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("vidq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        database = None
        if _ctx.settings is not None:
            from jobs.migrate import display_url

            database = display_url(_ctx.settings)
        message = explain(exc, database=database)
        if message is None:
            raise
        print(f"vidq: error: {message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
