"""The user's HTTP client for a STIP cloud: embed and permute locally, un-permute replies.

``StipClient`` checks, before sending anything, that the server runs the model its key was
made for (fingerprint, hidden size, scheme), and checks everything that comes back: sizes while
streaming (``max_reply_bytes``), tensor names, dtypes and shapes, finite values and index
ranges; a server that lies gets a ``WireFormatError``, never a silently wrong answer. Session
steps are numbered, so a step whose reply was lost is retried once without being applied twice.
It counts the payload bytes it sends and receives.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from privformer.errors import InputError, ServerError, WireFormatError
from privformer.models.pooling import mean_pool
from privformer.protocols.stip.user import StipUser
from privformer.transport import tensors as wire


@dataclass
class WireStats:
    """Requests made and payload bytes moved (HTTP headers not included)."""

    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def reset(self) -> None:
        self.requests = self.bytes_sent = self.bytes_received = 0


@dataclass
class Generation:
    """The result of ``StipClient.generate``."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str


_INFO_FIELDS = {"model_fingerprint": str, "hidden_size": int, "scheme": str, "max_positions": int}


def check_reply(
    tensors: dict[str, torch.Tensor],
    name: str,
    shape: tuple[int, ...],
    *,
    index_bound: int | None = None,
) -> torch.Tensor:
    """The reply tensor ``name``, refused unless it has exactly ``shape`` and holds finite
    float32 values (or, with ``index_bound``, int64 indices in [0, index_bound))."""
    t = wire.require(tensors, name)
    if tuple(t.shape) != shape:
        raise WireFormatError(f"server sent {name} of shape {tuple(t.shape)}, expected {shape}")
    if index_bound is None:
        if t.dtype != torch.float32 or not bool(torch.isfinite(t).all()):
            raise WireFormatError(f"server sent {name} that is not finite float32 ({t.dtype})")
    elif t.dtype != torch.int64 or (
        t.numel() and not 0 <= int(t.min()) <= int(t.max()) < index_bound
    ):
        raise WireFormatError(f"server sent {name} outside [0, {index_bound}) or not int64")
    return t


class StipClient:
    """Talk to ``privformer serve`` as the user holding ``user_dir``."""

    def __init__(
        self,
        user: StipUser | str | Path,
        url: str,
        *,
        timeout_s: float = 120.0,
        max_reply_bytes: int = wire.MAX_PAYLOAD_BYTES,
    ):
        self.user = user if isinstance(user, StipUser) else StipUser(user)
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise InputError(f"server URL must look like http://HOST:PORT, got {url!r}")
        self.url = url.rstrip("/")
        self.max_reply_bytes = max_reply_bytes
        # TCP_NODELAY: a request's headers and body go out in two writes; with Nagle's algorithm
        # the second waits for the server's delayed ACK (~40 ms per request on Linux).
        transport = httpx.HTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)
        self.stats = WireStats()
        self.server_info = self._get_json("/v1/info")
        for field, kind in _INFO_FIELDS.items():
            if not isinstance(self.server_info.get(field), kind):
                raise WireFormatError(
                    f"server's /v1/info has no valid {field!r}: is it privformer?"
                )
        self.user.key.check_model(
            self.server_info["model_fingerprint"],
            self.server_info["hidden_size"],
            self.server_info["scheme"],
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StipClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------
    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
            raise ServerError(response.status_code, str(detail))

    def _get_json(self, path: str) -> dict:
        response = self.http.get(path)
        self._raise_for(response)
        try:
            info = response.json()
        except ValueError as exc:
            raise WireFormatError(f"server's {path} is not JSON: is it privformer?") from exc
        if not isinstance(info, dict):
            raise WireFormatError(f"server's {path} is not a JSON object: is it privformer?")
        return info

    def _post_tensors(
        self, path: str, tensors: dict[str, torch.Tensor], params: dict | None = None
    ) -> dict[str, torch.Tensor]:
        body = wire.encode(tensors)
        headers = {"content-type": wire.MEDIA_TYPE}
        with self.http.stream("POST", path, content=body, params=params, headers=headers) as reply:
            declared = reply.headers.get("content-length", "0")
            if declared.isdigit() and int(declared) > self.max_reply_bytes:
                raise WireFormatError(
                    f"server announced a {declared}-byte reply, over {self.max_reply_bytes}"
                )
            content = bytearray()
            for chunk in reply.iter_bytes():
                content += chunk
                if len(content) > self.max_reply_bytes:
                    raise WireFormatError(f"server's reply passed {self.max_reply_bytes} bytes")
        response = httpx.Response(reply.status_code, headers=reply.headers, content=bytes(content))
        self.stats.requests += 1
        self.stats.bytes_sent += len(body)
        self.stats.bytes_received += len(content)
        self._raise_for(response)
        return wire.decode(bytes(content), max_bytes=self.max_reply_bytes)[0]

    # --- encoders ----------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One request: un-permuted (b, n, d) last hidden states of a padded batch, and its mask."""
        request = self.user.encoder_request(texts)
        out = self._post_tensors("/v1/forward", request)
        hidden = check_reply(out, "last_hidden_state", tuple(request["inputs_embeds"].shape))
        return self.user.unpermute_hidden(hidden), request["attention_mask"]

    def hidden_states(self, texts: list[str]) -> list[torch.Tensor]:
        """Un-permuted last hidden states, one (n_i, d) tensor per text, in one request."""
        hidden, mask = self._encode(texts)
        return [hidden[i, : int(n)] for i, n in enumerate(mask.sum(dim=1).tolist())]

    def sentence_embeddings(self, texts: list[str], *, normalize: bool = True) -> torch.Tensor:
        """Mean-pooled (and L2-normalised) sentence embeddings, the sentence-transformers recipe."""
        hidden, mask = self._encode(texts)
        return mean_pool(hidden, mask, normalize=normalize)

    # --- decoders ----------------------------------------------------------------------------
    def _step(self, session: str, seq: int, request: dict, params: dict) -> dict:
        """One numbered step; a lost reply (timeout, reset) is retried once with the same number,
        which the server answers from its stored reply instead of applying the step again."""
        path = f"/v1/sessions/{session}/step"
        params = {**params, "seq": seq}
        try:
            return self._post_tensors(path, request, params=params)
        except httpx.TransportError:
            return self._post_tensors(path, request, params=params)

    def _next_token(
        self, session: str, seq: int, ids: list[int], position: int, top_k_transfer: bool
    ) -> int:
        embeds = self.user.step_request(ids, position)
        vocab = int(self.user.config["vocab_size"])
        if self.user.config["output"] == "logits":
            if top_k_transfer:
                out = self._step(session, seq, embeds, {"top_k": 1})
                check_reply(out, "top_values", (1,))
                index = check_reply(out, "top_indices", (1,), index_bound=vocab)
                return self.user.unpermute_token(int(index[0]))
            out = self._step(session, seq, embeds, {})
            logits = self.user.unpermute_logits(check_reply(out, "logits", (vocab,)))
        else:
            out = self._step(session, seq, embeds, {})
            hidden = check_reply(out, "hidden", (self.user.hidden_size,))
            logits = self.user.logits_from_hidden(self.user.unpermute_hidden(hidden))
        return int(torch.argmax(logits))

    def generate(
        self,
        prompt: str | list[int],
        max_new_tokens: int = 20,
        *,
        stop_at_eos: bool = True,
        top_k_transfer: bool = True,
        chat: bool = False,
    ) -> Generation:
        """Greedy generation, one round trip per token, KV cache kept by the server. It stops
        at ``max_new_tokens``, at end-of-sequence, or when the model's positions are used up
        (the tokens generated so far are kept).

        ``top_k_transfer`` asks a v2 server for its top-1 permuted index instead of the whole
        permuted logit vector (same token, a few bytes instead of vocab_size floats).
        """
        if not self.user.is_decoder:
            raise InputError("generate needs a decoder model")
        if max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        tok = self.user.tokenizer
        if isinstance(prompt, str):
            if chat:
                prompt_ids = list(
                    tok.apply_chat_template(
                        [{"role": "user", "content": prompt}],
                        add_generation_prompt=True,
                        tokenize=True,
                        return_dict=False,
                    )
                )
            else:
                prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = list(prompt)
        if not prompt_ids:
            raise InputError("empty prompt")
        max_positions = int(self.user.config["max_positions"])
        if len(prompt_ids) >= max_positions:
            raise InputError(
                f"the prompt has {len(prompt_ids)} tokens; the model holds {max_positions}"
            )
        # The last generated token is never fed back, so positions allow this many tokens.
        max_new_tokens = min(max_new_tokens, max_positions - len(prompt_ids) + 1)
        response = self.http.post("/v1/sessions")
        self._raise_for(response)
        session = response.json().get("session_id")
        if not isinstance(session, str) or not session.replace("-", "").replace("_", "").isalnum():
            raise WireFormatError("server returned no usable session id")
        generated: list[int] = []
        try:
            feed, position = prompt_ids, 0
            for seq in range(max_new_tokens):
                token = self._next_token(session, seq, feed, position, top_k_transfer)
                generated.append(token)
                position += len(feed)
                feed = [token]
                if stop_at_eos and token in self.user.eos_token_ids:
                    break
        finally:
            with contextlib.suppress(httpx.HTTPError):
                self.http.delete(f"/v1/sessions/{session}")
        text = str(tok.decode(generated, skip_special_tokens=True))
        return Generation(prompt_ids, generated, text)
