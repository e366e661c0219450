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

from pathlib import Path

from privformer.protocols.stip.cloud import CloudLimits
from privformer.transport.http_server import ServerLimits, listening_socket, serve
from privformer.transport.processes import ChildProcess, announce_port

__all__ = ["ServerLimits", "ServerProcess", "run_stip_server"]


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
    from privformer.protocols.stip.cloud import StipCloud
    from privformer.transport.stip_http import create_app

    limits = limits or ServerLimits()
    cloud = StipCloud(path, cloud_limits)
    app = create_app(cloud, max_body_bytes=limits.max_body_bytes)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    print(
        f"privformer: serving {cloud.manifest['family']} STIP {cloud.manifest['scheme']} "
        f"({cloud.fingerprint[:12]}) on http://{host}:{bound}",
        flush=True,
    )
    announce_port(ready_file, bound)
    serve(app, sock, limits)


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
