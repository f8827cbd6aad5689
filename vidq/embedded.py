"""The whole product in one process: API, in-process broker, worker thread, SQLite, a local folder.

This is what ``vidq demo`` and ``vidq api`` (with no infrastructure configured) run. It is the same
code as a deployment, only wired together in one process: the in-memory Celery transport cannot be
shared across processes, so the API and the worker must live side by side.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from api.app import create_app
from jobs import migrate
from jobs.settings import Settings
from worker.main import prepare_worker

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRuntime:
    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.host = host
        self.port = port or free_port(host)
        self._server: uvicorn.Server | None = None
        self._worker = None
        self._sweeper = None
        self._threads: list[threading.Thread] = []

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> EmbeddedRuntime:
        if self.settings.embedded:
            migrate.upgrade(self.settings)
        app, queues, self._sweeper = prepare_worker(self.settings)
        # WorkController, unlike `celery worker`, installs no signal handlers: it can run on a thread.
        self._worker = app.WorkController(
            pool_cls="solo",
            concurrency=1,
            queues=queues,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
            hostname=f"vidq-embedded-{self.port}@localhost",
        )
        self._spawn(self._worker.start, "vidq-worker")

        # log_config=None: uvicorn's records go through the process's one logging set-up (jobs.logs).
        # X-Forwarded-* only from VIDQ_TRUSTED_PROXIES (uvicorn's default would trust 127.0.0.1).
        config = uvicorn.Config(
            create_app(self.settings, celery_app=app, listen_host=self.host),
            host=self.host,
            port=self.port,
            log_config=None,
            proxy_headers=bool(self.settings.trusted_proxy_list),
            forwarded_allow_ips=self.settings.trusted_proxies,
        )
        self._server = uvicorn.Server(config)
        self._spawn(self._server.run, "vidq-api")
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._threads[-1].is_alive():
                raise RuntimeError("the embedded API did not start")
            time.sleep(0.05)
        return self

    def _spawn(self, target, name: str) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C), for ``vidq api`` in embedded mode."""
        try:
            while all(t.is_alive() for t in self._threads):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._worker is not None:
            self._worker.stop(in_sighandler=False, exitcode=0)
        if self._sweeper is not None:
            self._sweeper.stop()
        for thread in self._threads:
            thread.join(timeout=10)
