"""The cloud's role: serve the permuted checkpoint with a stock ``transformers`` model.

The cloud receives only permuted input embeddings and returns permuted hidden states (or, for
v2 decoders, logits permuted by pi_c). Decoder generation keeps a KV cache per session on the
server, so each new token costs one request of a single d-dim vector.

Every request is bounded by ``CloudLimits`` before any work: tokens per forward, reply bytes,
sessions in total and per client, and the KV-cache bytes of all sessions together. Session
steps carry a sequence number: a retried step (same number, same input) gets the stored reply
instead of being applied twice; a step out of order is refused.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from privformer.errors import (
    InputError,
    KeyFormatError,
    ReplyTooLargeError,
    SequenceError,
    SessionNotFoundError,
    TooManySessionsError,
)
from privformer.protocols.stip import format as fmt
from privformer.protocols.stip.keys import fingerprint_checkpoint


@dataclass(frozen=True)
class CloudLimits:
    """What one request or all sessions together may cost; each has a documented refusal."""

    #: batch x tokens of one ``forward`` (422 beyond): bounds one request's compute time.
    max_batch_tokens: int = 4096
    #: bytes of one reply (413 beyond; v2 decoders can ask for ``top_k`` instead of all logits).
    max_reply_bytes: int = 64 << 20
    #: open decoder sessions, in total and per client address (429 beyond).
    max_sessions: int = 64
    max_sessions_per_client: int = 8
    #: seconds a session may sit unused before it is dropped (404 afterwards).
    session_ttl_s: float = 300.0
    #: bytes of KV cache over all sessions (429 when a step would pass it).
    max_cache_bytes: int = 2 << 30


@dataclass
class _Session:
    client: str
    cache: object | None = None
    length: int = 0
    next_seq: int = 0
    last_reply: dict[str, torch.Tensor] | None = None
    last_input: torch.Tensor | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


def resolve_cloud_dir(path: str | Path) -> Path:
    """Accept an export folder (with ``cloud/``) or the cloud folder itself."""
    path = Path(path)
    if (path / "cloud" / fmt.MANIFEST).is_file():
        return path / "cloud"
    if (path / fmt.MANIFEST).is_file():
        return path
    raise KeyFormatError(f"{path} holds no STIP cloud checkpoint ({fmt.MANIFEST} not found)")


class StipCloud:
    """A loaded permuted model with input validation and per-session KV caches."""

    def __init__(self, path: str | Path, limits: CloudLimits | None = None):
        import transformers

        self.cloud_dir = resolve_cloud_dir(path)
        self.manifest = fmt.read(self.cloud_dir, fmt.CLOUD_ROLE)
        self.fingerprint = fingerprint_checkpoint(self.cloud_dir)
        if self.fingerprint != self.manifest["model_fingerprint"]:
            raise KeyFormatError(
                f"{self.cloud_dir}: weights do not match the fingerprint in {fmt.MANIFEST} "
                "(files changed or corrupted after export)"
            )
        config = json.loads((self.cloud_dir / "config.json").read_text())
        model_class = getattr(transformers, config["architectures"][0])
        self.model = model_class.from_pretrained(self.cloud_dir, dtype=torch.float32).eval()
        self.hidden_size = int(self.manifest["hidden_size"])
        self.max_positions = int(self.manifest["max_positions"])
        self.is_decoder = self.manifest["task"] == "decoder"
        self.output = self.manifest["output"]
        self.limits = limits or CloudLimits()
        self.vocab_size = int(self.manifest.get("vocab_size") or config.get("vocab_size", 0))
        self.cache_bytes_per_position = _cache_bytes_per_position(config)
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()

    def info(self) -> dict:
        """Public facts about the served model (what a client checks its key against)."""
        return {
            key: self.manifest[key]
            for key in (
                "protocol",
                "scheme",
                "family",
                "task",
                "output",
                "hidden_size",
                "num_layers",
                "max_positions",
                "model_fingerprint",
            )
        } | {"open_sessions": len(self._sessions), "limits": vars(self.limits)}

    # --- validation --------------------------------------------------------------------------
    def _check_embeds(
        self, x: torch.Tensor, ndim: tuple[int, ...], extra_positions: int = 0
    ) -> None:
        if x.dtype != torch.float32:
            raise InputError(f"inputs_embeds must be float32, got {x.dtype}")
        if x.ndim not in ndim:
            raise InputError(
                f"inputs_embeds must have {' or '.join(map(str, ndim))} axes, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.hidden_size:
            raise InputError(
                f"inputs_embeds has hidden size {x.shape[-1]}, this model's is {self.hidden_size}"
            )
        n = x.shape[-2]
        if n < 1 or (x.ndim == 3 and x.shape[0] < 1):
            raise InputError(f"inputs_embeds holds no tokens (shape {tuple(x.shape)})")
        if extra_positions + n > self.max_positions:
            raise InputError(
                f"{extra_positions + n} tokens exceed the model's {self.max_positions} positions"
            )
        if not torch.isfinite(x).all():
            raise InputError("inputs_embeds contains NaN or infinite values")

    # --- one-shot forward (encoders, or decoders without a session) ---------------------------
    def _check_top_k(self, top_k: int | None) -> None:
        if top_k is not None and (self.output != "logits" or not 1 <= top_k <= 1024):
            raise InputError("top_k needs a logits-returning (v2 decoder) model and 1 <= k <= 1024")

    def _check_reply(self, positions: int, top_k: int | None) -> None:
        width = (
            2 * top_k
            if top_k
            else (self.vocab_size if self.output == "logits" else self.hidden_size)
        )
        size = 4 * positions * width
        if size > self.limits.max_reply_bytes:
            hint = "; ask for top_k instead of all logits" if self.output == "logits" else ""
            raise ReplyTooLargeError(
                f"the reply would be {size:,} bytes, over the limit of "
                f"{self.limits.max_reply_bytes:,}{hint}"
            )

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        top_k: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the permuted model on (b, n, d) or (n, d) permuted embeddings. ``top_k`` (v2
        decoders) returns each position's k largest permuted logits and their indices."""
        self._check_embeds(inputs_embeds, (2, 3))
        self._check_top_k(top_k)
        x = inputs_embeds if inputs_embeds.ndim == 3 else inputs_embeds[None]
        if x.shape[0] * x.shape[1] > self.limits.max_batch_tokens:
            raise InputError(
                f"batch x tokens = {x.shape[0] * x.shape[1]} exceeds the limit of "
                f"{self.limits.max_batch_tokens} per request; send smaller batches"
            )
        self._check_reply(x.shape[0] * x.shape[1], top_k)
        if attention_mask is not None:
            attention_mask = attention_mask if attention_mask.ndim == 2 else attention_mask[None]
            if tuple(attention_mask.shape) != tuple(x.shape[:2]):
                raise InputError(
                    f"attention_mask shape {tuple(attention_mask.shape)} "
                    f"!= tokens {tuple(x.shape[:2])}"
                )
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise InputError("attention_mask must hold only 0 and 1")
            attention_mask = attention_mask.to(torch.int64)
        with torch.inference_mode():
            out = self.model(inputs_embeds=x, attention_mask=attention_mask, use_cache=False)
        result = self._outputs(out, top_k, "last_hidden_state", slice(None))
        if inputs_embeds.ndim == 2:
            result = {k: v[0] for k, v in result.items()}
        return {k: v.contiguous() for k, v in result.items()}

    def _outputs(self, out: Any, top_k: int | None, hidden_name: str, at: Any) -> dict:
        """What the client reads from a model output at index ``at``: the hidden states, the
        permuted logits, or their ``top_k`` values and indices."""
        if self.output == "hidden":
            return {hidden_name: out.last_hidden_state[at]}
        if top_k is None:
            return {"logits": out.logits[at]}
        values, indices = torch.topk(out.logits[at], top_k)
        return {"top_values": values, "top_indices": indices}

    # --- sessions (decoder generation with a server-side KV cache) ----------------------------
    def open_session(self, client: str = "") -> str:
        """A new session for ``client`` (its address: the per-client cap counts by it)."""
        if not self.is_decoder:
            raise InputError("sessions are for decoder models; use forward for an encoder")
        self.expire_sessions()
        with self._sessions_lock:
            if len(self._sessions) >= self.limits.max_sessions:
                raise TooManySessionsError(
                    f"server holds its maximum of {self.limits.max_sessions} sessions"
                )
            mine = sum(1 for v in self._sessions.values() if v.client == client)
            if mine >= self.limits.max_sessions_per_client:
                raise TooManySessionsError(
                    f"this client holds its maximum of {self.limits.max_sessions_per_client} "
                    "sessions; close one first"
                )
            session_id = secrets.token_urlsafe(16)
            self._sessions[session_id] = _Session(client)
        return session_id

    def close_session(self, session_id: str) -> None:
        with self._sessions_lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFoundError(f"unknown or expired session {session_id!r}")

    def expire_sessions(self) -> int:
        """Drop sessions unused for ``session_ttl_s``; the server calls this on a timer."""
        now = time.monotonic()
        with self._sessions_lock:
            old = [
                sid
                for sid, v in self._sessions.items()
                if now - v.last_used > self.limits.session_ttl_s and not v.lock.locked()
            ]
            for sid in old:
                del self._sessions[sid]
        return len(old)

    def _cache_bytes(self) -> int:
        return self.cache_bytes_per_position * sum(v.length for v in self._sessions.values())

    def step(
        self,
        session_id: str,
        inputs_embeds: torch.Tensor,
        top_k: int | None = None,
        seq: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Feed (n, d) permuted embeddings to a session; return the last position's output.

        ``seq`` numbers a session's steps from 0. A step repeating the last number with the
        same input is a retry: it gets the stored reply and the cache is not touched again.
        ``top_k`` (v2 logits only) returns the k largest permuted logits and their permuted
        indices instead of all of them: the cloud already sees the permuted logits, so this
        reveals nothing new and cuts the reply from vocab_size floats to 2k numbers.
        """
        with self._sessions_lock:
            session = self._sessions.get(session_id)
            # the timer sweeps all sessions; here only this one's age matters
            if session is None or time.monotonic() - session.last_used > self.limits.session_ttl_s:
                raise SessionNotFoundError(f"unknown or expired session {session_id!r}")
        with session.lock:
            if seq is None:
                raise SequenceError("a session step needs its sequence number (seq=0, 1, ...)")
            if seq == session.next_seq - 1 and session.last_reply is not None:
                if session.last_input is None or not torch.equal(session.last_input, inputs_embeds):
                    raise SequenceError(f"step {seq} was already applied with another input")
                session.last_used = time.monotonic()
                return session.last_reply
            if seq != session.next_seq:
                raise SequenceError(f"expected step {session.next_seq} of this session, got {seq}")
            self._check_embeds(inputs_embeds, (2,), extra_positions=session.length)
            self._check_top_k(top_k)
            self._check_reply(1, top_k)
            new = inputs_embeds.shape[0] * self.cache_bytes_per_position
            with self._sessions_lock:
                if self._cache_bytes() + new > self.limits.max_cache_bytes:
                    raise TooManySessionsError(
                        f"the sessions' KV caches would pass {self.limits.max_cache_bytes:,} "
                        "bytes; retry later or close finished sessions"
                    )
            with torch.inference_mode():
                out = self.model(
                    inputs_embeds=inputs_embeds[None], past_key_values=session.cache, use_cache=True
                )
            session.cache = out.past_key_values
            session.length += inputs_embeds.shape[0]
            reply = {
                k: v.contiguous() for k, v in self._outputs(out, top_k, "hidden", (0, -1)).items()
            }
            session.next_seq += 1
            session.last_reply, session.last_input = reply, inputs_embeds.clone()
            session.last_used = time.monotonic()
        return reply


def _cache_bytes_per_position(config: dict) -> int:
    """float32 keys and values of every layer for one position."""
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    head_dim = int(config.get("head_dim") or hidden // heads)
    return 2 * layers * kv_heads * head_dim * 4
