"""STIP's cloud HTTP server, here (``run_stip_server``) or as a child (``ServerProcess``).

``run_stip_server`` binds the socket itself (port 0 picks a free port) and announces the bound port
through ``processes.announce_port`` once the socket listens; ``ServerProcess`` is the parent's
side (``privformer stip serve`` in a ``ChildProcess``), used by the demo, the API's private mode,
the tests and the benchmark.
"""

from __future__ import annotations

import socket
from pathlib import Path

from privformer.transport.processes import ChildProcess, announce_port


def run_stip_server(
    path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ready_file: str | Path | None = None,
    max_sessions: int = 64,
) -> None:
    """Load the cloud checkpoint at ``path`` and serve it until interrupted."""
    import uvicorn

    from privformer.protocols.stip.cloud import StipCloud
    from privformer.transport.stip_http import create_app

    cloud = StipCloud(path, max_sessions=max_sessions)
    app = create_app(cloud)
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
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


class ServerProcess(ChildProcess):
    """``privformer stip serve PATH`` in a child process; ``url`` once entered."""

    def __init__(
        self,
        path: str | Path,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 180.0,
        log_file: str | Path | None = None,
    ):
        args = ["stip", "serve", str(path), "--host", host, "--port", "0"]
        super().__init__(args, startup_timeout_s=startup_timeout_s, log_file=log_file)
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
