"""STIP's cloud HTTP server, here (``run_stip_server``) or as a child (``ServerProcess``).

``run_stip_server`` binds the socket itself (port 0 picks a free port) and announces the bound port
through ``processes.announce_port`` once the socket listens; ``ServerProcess`` is the parent's
side (``privformer stip serve`` in a ``ChildProcess``), used by the demo, the API's private mode,
the tests and the benchmark.

Connection limits (``ServerLimits``): a request's headers and body must arrive within
``request_timeout_s`` of its first byte (or of the connection opening), an idle kept-alive
connection closes after ``idle_timeout_s``, and beyond ``max_connections`` connections and
tasks uvicorn answers 503. Per-request and session limits are ``CloudLimits``.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path

from uvicorn.protocols.http.h11_impl import H11Protocol

from privformer.protocols.stip.cloud import CloudLimits
from privformer.transport.processes import ChildProcess, announce_port
from privformer.transport.tensors import MAX_PAYLOAD_BYTES


@dataclass(frozen=True)
class ServerLimits:
    """The HTTP side's limits; every one is a ``privformer stip serve`` option."""

    max_body_bytes: int = MAX_PAYLOAD_BYTES
    max_connections: int = 256
    request_timeout_s: float = 30.0
    idle_timeout_s: int = 5


def _protocol_with_request_timeout(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol plus a deadline for receiving each request (uvicorn has none:
    a connection that never finishes its headers is otherwise held forever)."""

    class DeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            cycle = self.cycle
            waiting_for_request = cycle is None or cycle.response_complete or cycle.more_body
            if waiting_for_request and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            cycle = self.cycle
            if cycle is not None and not cycle.more_body and not cycle.response_complete:
                self._disarm()  # the request is complete: its compute is not timed here

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return DeadlineProtocol


def run_stip_server(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ready_file: str | Path | None = None,
    limits: ServerLimits | None = None,
    cloud_limits: CloudLimits | None = None,
) -> None:
    """Load the cloud checkpoint at ``path`` and serve it until interrupted."""
    import uvicorn

    from privformer.protocols.stip.cloud import StipCloud
    from privformer.transport.stip_http import create_app

    limits = limits or ServerLimits()
    cloud = StipCloud(path, cloud_limits)
    app = create_app(cloud, max_body_bytes=limits.max_body_bytes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit TCP_NODELAY. Without it a kept-alive connection meets Nagle's
    # algorithm and the peer's delayed ACK: measured 44 ms per request instead of 1 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)  # listening now: connections queue until uvicorn accepts them
    bound = sock.getsockname()[1]
    print(
        f"privformer: serving {cloud.manifest['family']} STIP {cloud.manifest['scheme']} "
        f"({cloud.fingerprint[:12]}) on http://{host}:{bound}",
        flush=True,
    )
    announce_port(ready_file, bound)
    config = uvicorn.Config(
        app,
        log_level="warning",
        http=_protocol_with_request_timeout(limits.request_timeout_s),
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.idle_timeout_s,
    )
    uvicorn.Server(config).run(sockets=[sock])


class ServerProcess(ChildProcess):
    """``privformer stip serve PATH`` in a child process; ``url`` once entered."""

    def __init__(
        self,
        path: str | Path,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 180.0,
        log_file: str | Path | None = None,
        options: list[str] | None = None,
    ):
        args = ["stip", "serve", str(path), "--host", host, "--port", "0", *(options or [])]
        super().__init__(args, startup_timeout_s=startup_timeout_s, log_file=log_file)
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
