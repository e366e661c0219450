"""The cloud's role: serve the permuted checkpoint with a stock ``transformers`` model.

The cloud receives only permuted input embeddings and returns permuted hidden states (or, for
v2 decoders, logits permuted by pi_c). Decoder generation keeps a KV cache per session on the
server, so each new token costs one request of a single d-dim vector.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from privformer.errors import (
    InputError,
    KeyFormatError,
    SessionNotFoundError,
    TooManySessionsError,
)
from privformer.protocols.stip import format as fmt
from privformer.protocols.stip.keys import fingerprint_checkpoint


@dataclass
class _Session:
    cache: object | None = None
    length: int = 0
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

    def __init__(self, path: str | Path, *, max_sessions: int = 64, session_ttl_s: float = 900.0):
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
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s
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
        } | {"open_sessions": len(self._sessions)}

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
        if n < 1:
            raise InputError("inputs_embeds holds no tokens")
        if extra_positions + n > self.max_positions:
            raise InputError(
                f"{extra_positions + n} tokens exceed the model's {self.max_positions} positions"
            )
        if not torch.isfinite(x).all():
            raise InputError("inputs_embeds contains NaN or infinite values")

    # --- one-shot forward (encoders, or decoders without a session) ---------------------------
    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the permuted model on (b, n, d) or (n, d) permuted embeddings."""
        self._check_embeds(inputs_embeds, (2, 3))
        x = inputs_embeds if inputs_embeds.ndim == 3 else inputs_embeds[None]
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
        result = (
            {"logits": out.logits}
            if self.output == "logits"
            else {"last_hidden_state": out.last_hidden_state}
        )
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            result["pooler_output"] = pooled
        if inputs_embeds.ndim == 2:
            result = {k: v[0] for k, v in result.items()}
        return {k: v.contiguous() for k, v in result.items()}

    # --- sessions (decoder generation with a server-side KV cache) ----------------------------
    def open_session(self) -> str:
        if not self.is_decoder:
            raise InputError("sessions are for decoder models; use forward for an encoder")
        with self._sessions_lock:
            self._expire_sessions()
            if len(self._sessions) >= self.max_sessions:
                raise TooManySessionsError(
                    f"server holds its maximum of {self.max_sessions} sessions"
                )
            session_id = secrets.token_urlsafe(16)
            self._sessions[session_id] = _Session()
        return session_id

    def close_session(self, session_id: str) -> None:
        with self._sessions_lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFoundError(f"unknown or expired session {session_id!r}")

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > self.session_ttl_s]:
            del self._sessions[sid]

    def step(
        self, session_id: str, inputs_embeds: torch.Tensor, top_k: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Feed (n, d) permuted embeddings to a session; return the last position's output.

        ``top_k`` (v2 logits only) returns the k largest permuted logits and their permuted
        indices instead of all of them: the cloud already sees the permuted logits, so this
        reveals nothing new and cuts the reply from vocab_size floats to 2k numbers.
        """
        with self._sessions_lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionNotFoundError(f"unknown or expired session {session_id!r}")
        with session.lock:
            self._check_embeds(inputs_embeds, (2,), extra_positions=session.length)
            if top_k is not None and (self.output != "logits" or not 1 <= top_k <= 1024):
                raise InputError(
                    "top_k needs a logits-returning (v2 decoder) model and 1 <= k <= 1024"
                )
            with torch.inference_mode():
                out = self.model(
                    inputs_embeds=inputs_embeds[None], past_key_values=session.cache, use_cache=True
                )
            session.cache = out.past_key_values
            session.length += inputs_embeds.shape[0]
            session.last_used = time.monotonic()
        if self.output == "hidden":
            return {"hidden": out.last_hidden_state[0, -1].contiguous()}
        logits = out.logits[0, -1]
        if top_k is None:
            return {"logits": logits.contiguous()}
        values, indices = torch.topk(logits, top_k)
        return {"top_values": values.contiguous(), "top_indices": indices.contiguous()}
