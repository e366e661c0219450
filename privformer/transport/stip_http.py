"""The cloud's HTTP API (FastAPI): forward passes and decoder sessions over the wire format.

Routes (request and response bodies are wire payloads, see ``wire``; errors are JSON
``{"error": TYPE, "detail": MESSAGE}`` with a 4xx status, and the server keeps serving):
- ``GET  /v1/info``                     model facts and fingerprint (JSON)
- ``POST /v1/forward``                  ``inputs_embeds`` (+ ``attention_mask``) -> outputs
- ``POST /v1/sessions``                 open a decoder session (JSON ``{"session_id": ...}``)
- ``POST /v1/sessions/{id}/step``       ``inputs_embeds`` of new tokens -> last-position output;
                                        query ``top_k=K`` for v2 logits
- ``DELETE /v1/sessions/{id}``          close a session
- ``GET  /healthz``                     liveness
"""

from __future__ import annotations

import threading

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from privformer.errors import (
    InputError,
    PrivformerError,
    SessionNotFoundError,
    TooManySessionsError,
    WireFormatError,
)
from privformer.protocols.stip.cloud import StipCloud
from privformer.transport import tensors as wire

_STATUS = {
    WireFormatError: 400,
    SessionNotFoundError: 404,
    TooManySessionsError: 429,
    InputError: 422,
}


def _status_of(exc: PrivformerError) -> int:
    for cls, status in _STATUS.items():
        if isinstance(exc, cls):
            return status
    return 400


def create_app(cloud: StipCloud, *, max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES) -> FastAPI:
    """Build the FastAPI app serving one loaded ``StipCloud``."""
    app = FastAPI(title="privformer STIP cloud", version="1")
    # One forward pass at a time: torch already uses every core, and sessions mutate caches.
    compute_lock = threading.Lock()

    @app.exception_handler(PrivformerError)
    async def _privformer_error(_request: Request, exc: PrivformerError) -> JSONResponse:
        return JSONResponse(
            {"error": type(exc).__name__, "detail": str(exc)}, status_code=_status_of(exc)
        )

    async def _payload(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise WireFormatError(f"content-length {declared!r} is not a byte count")
        if declared is not None and int(declared) > max_payload_bytes:
            raise WireFormatError(
                f"payload of {declared} bytes exceeds the limit of {max_payload_bytes}"
            )
        tensors, _meta = wire.decode(await request.body(), max_bytes=max_payload_bytes)
        return tensors

    def _locked(fn, *args, **kwargs):
        with compute_lock:
            return fn(*args, **kwargs)

    async def _compute(fn, *args, **kwargs) -> Response:
        """Run model work in the threadpool, so the event loop keeps answering other routes."""
        tensors = await run_in_threadpool(_locked, fn, *args, **kwargs)
        return Response(content=wire.encode(tensors), media_type=wire.MEDIA_TYPE)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/v1/info")
    def info() -> dict:
        return cloud.info()

    @app.post("/v1/forward")
    async def forward(request: Request) -> Response:
        tensors = await _payload(request)
        embeds = wire.require(tensors, "inputs_embeds")
        mask = tensors.get("attention_mask")
        return await _compute(cloud.forward, embeds, mask)

    @app.post("/v1/sessions")
    def open_session() -> dict:
        return {"session_id": cloud.open_session()}

    @app.post("/v1/sessions/{session_id}/step")
    async def step(session_id: str, request: Request, top_k: int | None = None) -> Response:
        embeds = wire.require(await _payload(request), "inputs_embeds")
        return await _compute(cloud.step, session_id, embeds, top_k=top_k)

    @app.delete("/v1/sessions/{session_id}")
    def close_session(session_id: str) -> dict:
        cloud.close_session(session_id)
        return {"closed": session_id}

    return app
