"""Real worker processes for integration tests: `vidq worker` started as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.settings import Settings

VIDQ = str(Path(sys.executable).with_name("vidq"))


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment that makes a child process read the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDQ_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"VIDQ_{name.upper()}"] = str(value)
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """`vidq worker` in its own process group, so a test can SIGKILL it like a crashed host."""

    def __init__(self, settings: Settings, log_path: Path, *args: str, **env_overrides: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [VIDQ, "worker", "--log-level", "INFO", *args],
            env=settings_env(settings, **env_overrides),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if " ready." in self.log():
                return self
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no ack, no cleanup."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but does nothing until ``resume``."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
