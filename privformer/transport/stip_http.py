"""The cloud's HTTP API (FastAPI): forward passes and decoder sessions over the wire format.

Routes (request and response bodies are wire payloads, see ``wire``; errors are JSON
``{"error": TYPE, "detail": MESSAGE}`` with a 4xx status, and the server keeps serving):
- ``GET  /v1/info``                     model facts, fingerprint and limits (JSON)
- ``POST /v1/forward``                  ``inputs_embeds`` (+ ``attention_mask``) -> outputs;
                                        query ``top_k=K`` for v2 decoders' logits
- ``POST /v1/sessions``                 open a decoder session (JSON ``{"session_id": ...}``)
- ``POST /v1/sessions/{id}/step``       ``inputs_embeds`` of new tokens -> last-position output;
                                        query ``seq=N`` (required, from 0), ``top_k=K`` for v2
- ``DELETE /v1/sessions/{id}``          close a session
- ``GET  /healthz``                     liveness

Refusals: 400 malformed payload, 404 unknown or expired session, 409 step out of order,
413 body or reply over its limit, 422 bad values or shapes, 429 session or cache limits,
499 (nothing sent) when the client left before its work started, 503 when every connection
slot is taken (uvicorn's ``limit_concurrency``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from privformer.errors import (
    InputError,
    PayloadTooLargeError,
    PrivformerError,
    ReplyTooLargeError,
    SequenceError,
    SessionNotFoundError,
    TooManySessionsError,
    WireFormatError,
)
from privformer.protocols.stip.cloud import StipCloud
from privformer.transport import tensors as wire
from privformer.transport.http_server import (
    install_error_handlers,
    quiet_accept_errors,
    read_body,
)

_STATUS: dict[type[PrivformerError], int] = {
    PayloadTooLargeError: 413,
    ReplyTooLargeError: 413,
    WireFormatError: 400,
    SessionNotFoundError: 404,
    SequenceError: 409,
    TooManySessionsError: 429,
    InputError: 422,
}
#: Seconds between sweeps of expired sessions.
EXPIRY_SWEEP_S = 5.0


def create_app(cloud: StipCloud, *, max_body_bytes: int = wire.MAX_PAYLOAD_BYTES) -> FastAPI:
    """Build the FastAPI app serving one loaded ``StipCloud``."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        quiet_accept_errors()

        async def sweep() -> None:
            while True:
                await asyncio.sleep(EXPIRY_SWEEP_S)
                await run_in_threadpool(cloud.expire_sessions)

        task = asyncio.create_task(sweep())
        yield
        task.cancel()

    app = FastAPI(title="privformer STIP cloud", version="1", lifespan=lifespan)
    # One forward pass at a time: torch already uses every core, and sessions mutate caches.
    # An asyncio lock, so waiting requests hold no worker thread and can be dropped if their
    # client leaves before their turn.
    compute_gate = asyncio.Lock()

    install_error_handlers(app, _STATUS)

    async def _payload(request: Request) -> dict:
        body = await read_body(request, max_body_bytes)
        tensors, _meta = wire.decode(body, max_bytes=max_body_bytes)
        return tensors

    async def _compute(request: Request, fn, *args, **kwargs) -> Response:
        """Run model work in the threadpool, one at a time; skip it if the client has gone."""
        async with compute_gate:
            if await request.is_disconnected():
                return Response(status_code=499)
            tensors = await run_in_threadpool(fn, *args, **kwargs)
        return Response(content=wire.encode(tensors), media_type=wire.MEDIA_TYPE)

    def _client(request: Request) -> str:
        return request.client.host if request.client else ""

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/v1/info")
    def info() -> dict:
        return cloud.info()

    @app.post("/v1/forward")
    async def forward(request: Request, top_k: int | None = None) -> Response:
        tensors = await _payload(request)
        embeds = wire.require(tensors, "inputs_embeds")
        mask = tensors.get("attention_mask")
        return await _compute(request, cloud.forward, embeds, mask, top_k=top_k)

    @app.post("/v1/sessions")
    def open_session(request: Request) -> dict:
        return {"session_id": cloud.open_session(_client(request))}

    @app.post("/v1/sessions/{session_id}/step")
    async def step(
        session_id: str, request: Request, seq: int | None = None, top_k: int | None = None
    ) -> Response:
        embeds = wire.require(await _payload(request), "inputs_embeds")
        return await _compute(request, cloud.step, session_id, embeds, top_k=top_k, seq=seq)

    @app.delete("/v1/sessions/{session_id}")
    def close_session(session_id: str) -> dict:
        cloud.close_session(session_id)
        return {"closed": session_id}

    return app
