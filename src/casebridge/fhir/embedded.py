"""The embedded FHIR server: sekmet-fhir, run in-process on 127.0.0.1 with a SQLite file.

It is the default server for demos and tests: a real FHIR R4 server over real HTTP, no installation.
It is never relied on to validate (it accepts codes that are wrong); casebridge validates first.

How it is run, and why:
- the socket is bound first, so the port (0: any free one) is known before the server's ``base_url``
  is configured; sekmet does not derive its URLs from the port;
- settings are built directly, so no ``settings.yaml`` or ``SEKMET_*`` variable of the environment
  applies: inbound-body logging and the workflow simulator are off, the data stays in ``data_dir``;
- sekmet's app factory reconfigures the root logger: its settings are put back;
- sekmet never closes its SQLite connection: ``stop`` does.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from casebridge.errors import CasebridgeError


class EmbeddedServerError(CasebridgeError):
    """The embedded FHIR server could not start (port taken, data folder unusable, startup failure)."""


class EmbeddedFhirServer:
    def __init__(self, data_dir: Path, *, port: int = 0, host: str = "127.0.0.1"):
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._app: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/fhir"

    def _prepare(self) -> None:
        from sekmet.config import Settings, SimulatorSettings
        from sekmet.main import create_app

        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            raise EmbeddedServerError(f"cannot start the FHIR server on {self.host}:{self.port}: {exc}") from exc
        self._socket = sock
        self.port = sock.getsockname()[1]
        settings = Settings(
            host=self.host,
            port=self.port,
            base_url=self.base_url,
            data_dir=str(self.data_dir),
            log_inbound=False,
            simulator=SimulatorSettings(enabled=False),
        )
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        self._app = create_app(settings)
        root.setLevel(level)
        root.handlers[:] = handlers
        self._server = uvicorn.Server(uvicorn.Config(self._app, log_level="warning", access_log=False, lifespan="off"))

    def start(self, timeout: float = 15.0) -> EmbeddedFhirServer:
        """Serve in a background thread; returns once the server accepts requests."""
        self._prepare()
        assert self._server is not None
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="embedded-fhir", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServerError("the embedded FHIR server did not start")
            time.sleep(0.02)
        return self

    def serve_forever_announced(self, announce: Callable[[str], object]) -> None:
        """Serve in this thread until the process is interrupted (the ``fhir-server`` command);
        ``announce`` receives the base URL once the port is known."""
        self._prepare()
        announce(self.base_url)
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    def _close(self) -> None:
        if self._app is not None:
            self._app.state.ctx.store.conn.close()
            self._app = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> EmbeddedFhirServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
