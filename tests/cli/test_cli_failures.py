"""Each expected failure of the `vidq` command is one line naming the problem and its fix, with a
non-zero exit, no traceback and no secret; and the operator's commands report what they did."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.schemas import VideoCreate
from vidq import cli

VIDQ = str(Path(sys.executable).with_name("vidq"))


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """cli.main() sets up the process's logging (root handlers on the captured stderr): put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def env(monkeypatch, tmp_path: Path) -> Path:
    """A clean environment: no VIDQ_ variable from the caller, data in a temporary folder."""
    for name in list(os.environ):
        if name.startswith("VIDQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VIDQ_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vidq: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_keys_create_before_migrate_says_run_vidq_migrate(capsys, env, monkeypatch, empty_database: str) -> None:
    monkeypatch.setenv("VIDQ_DATABASE_URL", empty_database)
    code, out, err = run(capsys, "keys", "create", "--name", "ops")
    assert code == 1 and out == ""
    assert_one_line(err, "run `vidq migrate`")
    assert "vq_" not in err and "INSERT" not in err  # neither a key nor the SQL with its hash


def test_migrate_reports_each_revision_applied_then_nothing(capsys, env, monkeypatch, empty_database: str) -> None:
    from jobs.migrate import head_revision

    monkeypatch.setenv("VIDQ_DATABASE_URL", empty_database)
    code, out, _ = run(capsys, "migrate")
    assert code == 0
    assert f"empty -> {head_revision()}" in out and "applied 0001 " in out
    assert f"applied {head_revision()} " in out
    code, out, _ = run(capsys, "migrate")
    assert code == 0 and "nothing to do" in out and "applied" not in out


def test_unreachable_database_is_named_without_its_password(capsys, env, monkeypatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("VIDQ_DATABASE_URL", f"postgresql+psycopg://vidq:hunter2secret@127.0.0.1:{port}/vidq")
    code, _, err = run(capsys, "keys", "list")
    assert code == 1
    assert_one_line(err, f"127.0.0.1:{port}", "VIDQ_DATABASE_URL")
    assert "hunter2secret" not in err


def test_production_with_the_default_secret_names_the_variable_and_the_fix(capsys, env, monkeypatch) -> None:
    monkeypatch.setenv("VIDQ_ENVIRONMENT", "production")
    code, _, err = run(capsys, "api")
    assert code == 1
    assert_one_line(err, "VIDQ_SECRET_KEY", "secrets.token_urlsafe")
    assert "change-me" not in err


def test_invalid_settings_never_echo_their_values(capsys, env, monkeypatch) -> None:
    monkeypatch.setenv("VIDQ_ENVIRONMENT", "staging-s3cr3t-value")
    code, _, err = run(capsys, "keys", "list")
    assert code == 1
    assert_one_line(err, "VIDQ_ENVIRONMENT")
    assert "s3cr3t" not in err


def test_revoking_an_unknown_key_points_at_keys_list(capsys, env) -> None:
    code, _, err = run(capsys, "keys", "revoke", "999")
    assert code == 1
    assert_one_line(err, "999", "vidq keys list")


def test_keys_list_shows_ids_and_prefixes_never_keys(capsys, env) -> None:
    code, key, _ = run(capsys, "keys", "create", "--name", "ops", "--admin")
    key = key.strip()
    run(capsys, "keys", "create", "--name", "gone")
    assert run(capsys, "keys", "revoke", "2")[0] == 0
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert "ops" in out and "admin" in out and key[:10] in out and key not in out
    assert "gone" not in out  # revoked keys only with --all
    assert "revoked" in run(capsys, "keys", "list", "--all")[1]


def test_port_in_use_is_one_line(capsys, env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, _, err = run(capsys, "api", "--port", str(port))
    assert code == 1
    assert_one_line(err, f"port {port}", "--port")


def test_unreachable_api_names_the_url_tried(capsys, env, monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("VIDQ_API_KEY", "vq_not-a-real-key-but-secret")
    code, out, err = run(capsys, "submit", "--prompt", "a fox", "--base-url", f"http://127.0.0.1:{port}")
    assert code == 1 and out == ""
    assert_one_line(err, f"http://127.0.0.1:{port}", "connection refused", "VIDQ_BASE_URL")
    assert "not-a-real-key" not in err


def test_submit_without_a_key_says_how_to_get_one(capsys, env) -> None:
    code, _, err = run(capsys, "submit", "--prompt", "a fox")
    assert code == 1
    assert_one_line(err, "VIDQ_API_KEY", "vidq keys create")


def test_generate_with_a_model_not_installed_names_the_install_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDQ_", "HF_"))}
    env |= {"VIDQ_MODELS_DIR": str(tmp_path / "models"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [VIDQ, "generate", "--model", "wan2.1-t2v-1.3b", "--prompt", "a fox", "--out", str(tmp_path / "x.mp4")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in errors[0]


def test_models_list_finds_a_model_in_the_hugging_face_cache(capsys, env, monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    from engine.models.tiny import write_tiny_wan

    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--Wan-AI--Wan2.1-T2V-14B-Diffusers"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    write_tiny_wan(tmp_path / "tiny")
    shutil.copytree(tmp_path / "tiny", repo / "snapshots" / ("a" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    code, out, _ = run(capsys, "models", "list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "installed" in rows["wan2.1-t2v-14b"] and str(repo / "snapshots") in rows["wan2.1-t2v-14b"]
    assert "not installed" in rows["wan2.1-t2v-1.3b"] and "hf download" in rows["wan2.1-t2v-1.3b"]
    assert "built-in" in rows["tiny-wan"]


def all_parsers(parser=None):  # type: ignore[no-untyped-def]
    """The `vidq` parser and every subcommand's, recursively."""
    parser = parser or cli.build_parser()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from all_parsers(child)


def test_version_and_help_of_every_command() -> None:
    result = subprocess.run([VIDQ, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.startswith("vidq ") and result.stdout.split()[1][0].isdigit()

    for parser in all_parsers():
        assert parser.description, parser.prog
        for action in parser._actions:
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"


def test_one_spelling_per_flag() -> None:
    flags: dict[str, set[str]] = {}
    for parser in all_parsers():
        for action in parser._actions:
            for flag in action.option_strings:
                flags.setdefault(flag.replace("-", "").replace("_", ""), set()).add(flag)
    assert all(len(spellings) == 1 for spellings in flags.values()), flags


def test_submit_covers_every_field_of_the_api() -> None:
    renamed = {"num_inference_steps": "steps", "guidance_scale": "guidance", "loras": "lora"}
    submit = cli.build_parser()._subparsers._group_actions[0].choices["submit"]
    dests = {action.dest for action in submit._actions}
    missing = {f for f in VideoCreate.model_fields if renamed.get(f, f) not in dests}
    assert not missing, f"vidq submit has no flag for {sorted(missing)}"


def test_a_worker_for_a_model_not_installed_names_the_install_command(
    capsys, env, monkeypatch, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    from engine.models import locate

    def offline(repo_id: str) -> Path:
        raise OSError("network unreachable")  # the Hub, unreachable as on these machines

    monkeypatch.setattr(locate, "_download", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("VIDQ_DATABASE_URL", database_url)
    monkeypatch.setenv("VIDQ_REDIS_URL", redis_url)
    monkeypatch.setenv("VIDQ_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("VIDQ_SWEEPER_ENABLED", "false")
    code, _, err = run(capsys, "worker", "--log-level", "WARNING", "--models", "wan2.1-t2v-14b")
    assert code == 1
    assert_one_line(err, "wan2.1-t2v-14b", "hf download Wan-AI/Wan2.1-T2V-14B-Diffusers")


def test_a_production_worker_with_no_model_says_how_to_get_one(
    capsys, env, monkeypatch, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("VIDQ_ENVIRONMENT", "production")
    monkeypatch.setenv("VIDQ_SECRET_KEY", "a-real-secret-for-this-test")
    monkeypatch.setenv("VIDQ_DATABASE_URL", database_url)
    monkeypatch.setenv("VIDQ_REDIS_URL", redis_url)
    monkeypatch.setenv("VIDQ_MODELS_DIR", str(tmp_path / "models"))  # empty: tiny-wan is not served in production
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    code, _, err = run(capsys, "worker", "--log-level", "WARNING")
    assert code == 1
    assert_one_line(err, "no model to serve", "vidq models list")
    assert "a-real-secret" not in err


def test_lora_flags_name_one_adapter_or_a_two_expert_pair() -> None:
    assert cli._lora_use("lora_a") == {"id": "lora_a"}
    assert cli._lora_use("lora_a:0.6") == {"id": "lora_a", "scale": 0.6}
    assert cli._lora_use("lora_hi:1,lora_lo:0.5") == {"id": "lora_hi", "scale": 1.0, "id_2": "lora_lo", "scale_2": 0.5}
    for use in (cli._lora_use("lora_hi,lora_lo"), cli._lora_use("lora_a:0.6")):
        VideoCreate(prompt="a fox", loras=[use])  # every form is a valid request entry
    with pytest.raises(cli.CliError, match="scale"):
        cli._lora_use("lora_hi,lora_lo:loud")
