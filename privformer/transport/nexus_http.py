"""NEXUS over HTTP: the server's app (``create_app``, ``run_nexus_server``), its client
(``NexusHttpClient``) and the server as a child process (``NexusServerProcess``).

Routes (errors are JSON ``{"error": TYPE, "detail": MESSAGE}`` with a 4xx status; the server
keeps serving):
- ``GET  /v1/spec``                       parameters, layout and rotation steps (JSON)
- ``GET  /v1/keys/{key_id}``               200 if the server holds that key set, else 404
- ``POST /v1/keys``                       start an upload of evaluation keys: ``{"upload_id"}``
- ``PUT  /v1/keys/{upload_id}/{file}``    one key-set file, streamed to disk (``keys.json`` and
                                          the backend's key files only)
- ``POST /v1/keys/{upload_id}/commit``    check, load and cache the key set: ``{"key_id"}``
- ``POST /v1/classify``                   ``service.encode_message`` request -> reply
- ``GET  /healthz``                       liveness

Refusals: 400 malformed message, corrupted ciphertext or key file; 404 unknown key id or
upload; 413 over a size limit; 422 keys for other parameters, a ciphertext of other keys, bad
values. One query or key load runs at a time (each uses every core and, on OpenFHE, ~16 GB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from privformer.crypto.ckks.keys import KEY_FILES
from privformer.errors import (
    CiphertextFormatError,
    ContextMismatchError,
    CryptoError,
    InputError,
    KeyFormatError,
    KeyMismatchError,
    PayloadTooLargeError,
    PrivformerError,
    ServerError,
    ServerUnreachableError,
    UnknownKeyError,
    WireFormatError,
)
from privformer.protocols.nexus.service import NexusServer
from privformer.transport.http_server import (
    ServerLimits,
    install_error_handlers,
    listening_socket,
    quiet_accept_errors,
    read_body,
    serve,
)
from privformer.transport.processes import ChildProcess, announce_port

log = logging.getLogger("privformer.nexus")

_STATUS: dict[type[PrivformerError], int] = {
    PayloadTooLargeError: 413,
    WireFormatError: 400,
    CiphertextFormatError: 400,
    KeyFormatError: 400,
    UnknownKeyError: 404,
    ContextMismatchError: 422,
    KeyMismatchError: 422,
    InputError: 422,
    CryptoError: 422,
}
#: Largest query body: a request is one ciphertext per block (OpenFHE: ~10.5 MB each).
MAX_QUERY_BYTES = 1 << 30
#: Largest key-set file (OpenFHE's rotation and bootstrapping keys at ring 2^16: ~10 GB).
MAX_KEY_FILE_BYTES = 64 << 30
#: Unfinished uploads kept at once (each a folder on disk).
MAX_UPLOADS = 4
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def create_app(
    server: NexusServer,
    *,
    max_query_bytes: int = MAX_QUERY_BYTES,
    max_key_file_bytes: int = MAX_KEY_FILE_BYTES,
    progress: Callable[[int, str, int, float], None] | None = None,
) -> FastAPI:
    """The FastAPI app serving one ``NexusServer``."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        quiet_accept_errors()
        yield

    app = FastAPI(title="privformer NEXUS server", version="1", lifespan=lifespan)
    install_error_handlers(app, _STATUS)
    compute_gate = asyncio.Lock()
    uploads_dir = server.keys_dir / ".uploads"
    shutil.rmtree(uploads_dir, ignore_errors=True)  # unfinished uploads of a previous run
    uploads_dir.mkdir(parents=True)
    allowed = {"keys.json", *KEY_FILES[server.backend.kind]}

    def _upload(upload_id: str) -> Path:
        folder = uploads_dir / upload_id
        if not _UPLOAD_ID.match(upload_id) or not folder.is_dir():
            raise UnknownKeyError(f"no upload {upload_id[:40]!r}: start one with POST /v1/keys")
        return folder

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/v1/spec")
    def spec() -> dict:
        return server.spec()

    @app.get("/v1/keys/{key_id}")
    def has_keys(key_id: str) -> dict:
        if not server.has_key_set(key_id):
            raise UnknownKeyError(f"no key set {key_id[:16]}..: upload the keys first")
        return {"key_id": key_id}

    @app.post("/v1/keys")
    def start_upload() -> dict:
        pending = sorted(uploads_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in pending[: max(0, len(pending) - MAX_UPLOADS + 1)]:
            shutil.rmtree(old, ignore_errors=True)  # the oldest unfinished uploads give way
        upload_id = secrets.token_hex(16)
        (uploads_dir / upload_id).mkdir()
        return {"upload_id": upload_id}

    @app.put("/v1/keys/{upload_id}/{name}")
    async def upload_file(upload_id: str, name: str, request: Request) -> dict:
        folder = _upload(upload_id)
        if name not in allowed:
            raise KeyFormatError(f"{name[:40]!r} is not a key-set file here: {sorted(allowed)}")
        size = 0
        with open(folder / name, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_key_file_bytes:
                    raise PayloadTooLargeError(
                        f"{name} passed the limit of {max_key_file_bytes} bytes"
                    )
                await run_in_threadpool(f.write, chunk)
        return {"file": name, "bytes": size}

    @app.post("/v1/keys/{upload_id}/commit")
    async def commit(upload_id: str) -> dict:
        folder = _upload(upload_id)
        async with compute_gate:
            try:
                key_id = await run_in_threadpool(server.register, folder)
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        log.info("key set %s registered", key_id[:16])
        return {"key_id": key_id}

    @app.post("/v1/classify")
    async def classify(request: Request) -> Response:
        body = await read_body(request, max_query_bytes)
        async with compute_gate:
            if await request.is_disconnected():
                return Response(status_code=499)
            reply = await run_in_threadpool(server.classify, body, progress)
        return Response(content=reply, media_type="application/octet-stream")

    return app


def run_nexus_server(
    server: NexusServer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ready_file: str | Path | None = None,
    limits: ServerLimits | None = None,
    progress: Callable[[int, str, int, float], None] | None = None,
) -> None:
    """Serve ``server`` until interrupted (port 0: a free port, announced in ``ready_file``)."""
    limits = limits or ServerLimits(request_timeout_s=600.0)
    app = create_app(
        server, max_query_bytes=min(limits.max_body_bytes, MAX_QUERY_BYTES), progress=progress
    )
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    kind = server.backend.kind
    print(f"privformer: serving NEXUS {server.name} ({kind}) on http://{host}:{bound}", flush=True)
    announce_port(ready_file, bound)
    serve(app, sock, limits)


class NexusHttpClient:
    """HTTP calls to a NEXUS server; errors come back as ``ServerError`` with its message."""

    def __init__(self, url: str, timeout_s: float | None = None):
        """``timeout_s``: None waits as long as a query takes (encrypted runs take minutes to
        hours); connecting is always bounded."""
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NexusHttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        """One HTTP call; a connection failure is a ``ServerUnreachableError`` naming the URL,
        an error reply a ``ServerError`` with the server's message."""
        import httpx

        try:
            reply = self._http.request(method, f"{self.url}{path}", **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"NEXUS server {self.url}: {exc}") from exc
        return reply

    def _checked(self, reply: Any) -> Any:
        if reply.status_code >= 400:
            try:
                body = reply.json()
                message = f"{body.get('error')}: {body.get('detail')}"
            except ValueError:
                message = reply.text[:500]
            raise ServerError(reply.status_code, message)
        return reply

    def spec(self) -> dict[str, Any]:
        return self._checked(self._send("GET", "/v1/spec")).json()

    def upload_keys(self, folder: str | Path, on_bytes: Callable[[int], None] | None = None) -> str:
        """Upload a key set (every file of ``folder``); returns the server's key id."""
        folder = Path(folder)
        upload_id = self._checked(self._send("POST", "/v1/keys")).json()["upload_id"]

        def chunks(path: Path) -> Iterator[bytes]:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    yield chunk

        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            self._checked(
                self._send("PUT", f"/v1/keys/{upload_id}/{path.name}", content=chunks(path))
            )
        reply = self._send("POST", f"/v1/keys/{upload_id}/commit")
        return self._checked(reply).json()["key_id"]

    def has_keys(self, key_id: str) -> bool:
        reply = self._send("GET", f"/v1/keys/{key_id}")
        if reply.status_code == 404:
            return False
        self._checked(reply)
        return True

    def classify(self, request: bytes) -> bytes:
        reply = self._send(
            "POST",
            "/v1/classify",
            content=request,
            headers={"content-type": "application/octet-stream"},
        )
        return self._checked(reply).content


class NexusServerProcess(ChildProcess):
    """``privformer nexus serve MODEL`` in a child process; ``url`` once entered."""

    def __init__(
        self,
        model: str,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 300.0,
        log_file: str | Path | None = None,
        options: list[str] | None = None,
    ):
        args = ["nexus", "serve", model, "--host", host, "--port", "0", *(options or [])]
        super().__init__(args, startup_timeout_s=startup_timeout_s, log_file=log_file)
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
