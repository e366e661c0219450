"""The user's HTTP client for a STIP cloud: embed and permute locally, un-permute replies.

``StipClient`` checks, before sending anything, that the server runs the model its key was
made for (fingerprint, hidden size, scheme). It counts the payload bytes it sends and receives.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from privformer.errors import InputError, ServerError
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


class StipClient:
    """Talk to ``privformer serve`` as the user holding ``user_dir``."""

    def __init__(self, user: StipUser | str | Path, url: str, *, timeout_s: float = 120.0):
        self.user = user if isinstance(user, StipUser) else StipUser(user)
        self.url = url.rstrip("/")
        # TCP_NODELAY: a request's headers and body go out in two writes; with Nagle's algorithm
        # the second waits for the server's delayed ACK (~40 ms per request on Linux).
        transport = httpx.HTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)
        self.stats = WireStats()
        self.server_info = self._get_json("/v1/info")
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
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServerError(response.status_code, str(detail))

    def _get_json(self, path: str) -> dict:
        response = self.http.get(path)
        self._raise_for(response)
        return response.json()

    def _post_tensors(
        self, path: str, tensors: dict[str, torch.Tensor], params: dict | None = None
    ) -> dict[str, torch.Tensor]:
        body = wire.encode(tensors)
        response = self.http.post(
            path, content=body, params=params, headers={"content-type": wire.MEDIA_TYPE}
        )
        self.stats.requests += 1
        self.stats.bytes_sent += len(body)
        self.stats.bytes_received += len(response.content)
        self._raise_for(response)
        return wire.decode(response.content)[0]

    # --- encoders ----------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One request: un-permuted (b, n, d) last hidden states of a padded batch, and its mask."""
        if self.user.is_decoder:
            raise InputError("hidden_states is for encoder models; use generate for a decoder")
        enc = self.user.tokenizer(list(texts), padding=True, return_tensors="pt")
        embeds = self.user.embed(enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
        mask = enc["attention_mask"].to(torch.int64)
        out = self._post_tensors(
            "/v1/forward", {"inputs_embeds": self.user.permute(embeds), "attention_mask": mask}
        )
        return self.user.unpermute_hidden(wire.require(out, "last_hidden_state")), mask

    def hidden_states(self, texts: list[str]) -> list[torch.Tensor]:
        """Un-permuted last hidden states, one (n_i, d) tensor per text, in one request."""
        hidden, mask = self._encode(texts)
        return [hidden[i, : int(n)] for i, n in enumerate(mask.sum(dim=1).tolist())]

    def sentence_embeddings(self, texts: list[str], *, normalize: bool = True) -> torch.Tensor:
        """Mean-pooled (and L2-normalised) sentence embeddings, the sentence-transformers recipe."""
        hidden, mask = self._encode(texts)
        return mean_pool(hidden, mask, normalize=normalize)

    # --- decoders ----------------------------------------------------------------------------
    def _next_token(self, session: str, ids: list[int], position: int, top_k_transfer: bool) -> int:
        embeds = self.user.permute(self.user.embed(torch.tensor(ids), start_position=position))
        path = f"/v1/sessions/{session}/step"
        if self.user.config["output"] == "logits":
            if top_k_transfer:
                out = self._post_tensors(path, {"inputs_embeds": embeds}, params={"top_k": 1})
                return self.user.unpermute_token(int(wire.require(out, "top_indices")[0]))
            logits = self.user.unpermute_logits(
                wire.require(self._post_tensors(path, {"inputs_embeds": embeds}), "logits")
            )
        else:
            hidden = self.user.unpermute_hidden(
                wire.require(self._post_tensors(path, {"inputs_embeds": embeds}), "hidden")
            )
            logits = self.user.logits_from_hidden(hidden)
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
        """Greedy generation, one round trip per token, KV cache kept by the server.

        ``top_k_transfer`` asks a v2 server for its top-1 permuted index instead of the whole
        permuted logit vector (same token, a few bytes instead of vocab_size floats).
        """
        if not self.user.is_decoder:
            raise InputError("generate needs a decoder model")
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
        response = self.http.post("/v1/sessions")
        self._raise_for(response)
        session = response.json()["session_id"]
        generated: list[int] = []
        try:
            feed, position = prompt_ids, 0
            for _ in range(max_new_tokens):
                token = self._next_token(session, feed, position, top_k_transfer)
                generated.append(token)
                position += len(feed)
                feed = [token]
                if stop_at_eos and token in self.user.eos_token_ids:
                    break
        finally:
            self.http.delete(f"/v1/sessions/{session}")
        text = str(tok.decode(generated, skip_special_tokens=True))
        return Generation(prompt_ids, generated, text)
