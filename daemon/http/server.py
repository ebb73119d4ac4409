"""uvicorn on its own thread and event loop, started before the model loads so an orchestrator
gets "alive, not ready" during a slow start instead of refused connections.

The sockets are bound in the caller's thread (a taken port fails `start()` at once, port 0
resolves before anyone asks). Connections cost no thread; at most `http.max_connections`
are served (503 beyond), each gets `http.request_timeout_s` to deliver its request headers (the
body has its own total deadline in the app), and requests that uvicorn's own parsing chokes on
get 400 instead of a dropped connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from avindex.daemon.http.app import MAX_HEADER_BYTES
from avindex.daemon.settings import HttpSettings

__all__ = ["HttpServer", "listen_host"]

log = logging.getLogger(__name__)




def listen_host(http: HttpSettings) -> tuple[str, str | None]:
    """(address to bind, a warning to log or None): loopback without keys unless `http.host`
    is set explicitly."""
    if http.host:
        if not http.api_keys and http.host not in ("127.0.0.1", "::1", "localhost"):
            return http.host, (f"http.host is {http.host} and no API key is set "
                               "(http.api_keys): search and media are open to anyone who "
                               "reaches this port")
        return http.host, None
    if http.api_keys:
        return "0.0.0.0", None
    return "127.0.0.1", ("no API key is set (http.api_keys), so the HTTP API listens on "
                         "127.0.0.1 only; set http.api_keys, or http.host explicitly "
                         "(e.g. 0.0.0.0 in a container) to listen elsewhere")


def _protocol(header_timeout_s: float) -> type[H11Protocol]:
    class Protocol(H11Protocol):
        """uvicorn's h11 protocol with a deadline on request headers and 400 for requests its
        parser raises on (a non-ASCII path is a UnicodeDecodeError there)."""

        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(header_timeout_s, self._headers_overdue)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_overdue(self) -> None:
            self._timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def handle_events(self) -> None:
            before = self.cycle
            try:
                super().handle_events()
            except (UnicodeDecodeError, ValueError):
                self.send_400_response("Invalid HTTP request received.")
                return
            if self.cycle is not before:
                self._disarm()  # a request arrived; its body has the app's deadline

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Protocol


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class HttpServer:
    """One or two ASGI apps (the API, and the probes on `http.metrics_port`) served by uvicorn
    in a background thread; `ports` are the bound ports in that order."""

    def __init__(self, apps: list[tuple[Any, int]], host: str, http: HttpSettings) -> None:
        self._servers: list[tuple[uvicorn.Server, socket.socket]] = []
        try:
            for app, port in apps:
                sock = _bind(host, port)
                config = uvicorn.Config(
                    app, http=_protocol(http.request_timeout_s), lifespan="off",
                    log_config=None, access_log=False, server_header=False,
                    limit_concurrency=http.max_connections, timeout_keep_alive=5,
                    h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                    timeout_graceful_shutdown=5)
                self._servers.append((uvicorn.Server(config), sock))
        except OSError:
            for _, sock in self._servers:
                sock.close()
            raise
        self.ports = [sock.getsockname()[1] for _, sock in self._servers]
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self.failed: BaseException | None = None

    def _run(self) -> None:
        async def serve_all() -> None:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in self._servers))

        try:
            asyncio.run(serve_all())
        except BaseException as exc:  # reported; the thread ends
            self.failed = exc
            log.exception("the HTTP server stopped")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        for server, _ in self._servers:
            server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            for server, _ in self._servers:
                server.force_exit = True
            self._thread.join(timeout)
        for _, sock in self._servers:
            sock.close()


def start_api(settings, health, metrics):
    """The API of `settings.http` (and its probes, on their own port when
    `http.metrics_port` is set), started; returns (Api, HttpServer)."""
    from avindex.daemon.http.app import Api

    http = settings.http
    host, warning = listen_host(http)
    if warning:
        log.warning(warning)
    api = Api(settings, metrics, health)
    if http.metrics_port is None:
        apps = [(api.app(), http.port)]
    else:
        apps = [(api.app(probes=False), http.port), (api.app(api=False), http.metrics_port)]
    server = HttpServer(apps, host, http)
    server.start()
    where = f"http://{host}:{server.ports[0]}"
    probes = f"http://{host}:{server.ports[-1]}"
    log.info("http API on %s (/v1/search /v1/info /openapi.json /), probes and metrics on %s "
             "(/healthz /readyz /metrics); API keys: %s", where, probes,
             "required" if http.api_keys else "none",
             extra={"fields": {"http_port": server.ports[0], "metrics_port": server.ports[-1],
                               "http_host": host}})
    return api, server
