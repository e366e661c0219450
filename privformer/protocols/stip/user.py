"""The user's role: tokenise, embed, permute what is sent, un-permute what comes back.

The user holds ``user/`` from the export: the key (pi, pi_c), the embedding tables and the
tokenizer (and, for v1 decoders only, the LM head). Nothing the user sends is a token id or an
un-permuted vector; everything it receives is un-permuted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from privformer.errors import InputError, KeyFormatError
from privformer.models.registry import load_tokenizer_folder
from privformer.protocols.stip import format as fmt
from privformer.protocols.stip.keys import UserKey


def embed_with_tables(
    tables: dict[str, torch.Tensor],
    ids: torch.Tensor,
    start_position: int = 0,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Word (+ position, + token type) embeddings from the user's tables (no checks)."""
    n = ids.shape[-1]
    x = tables["word_embeddings"][ids]
    if "position_embeddings" in tables:
        x = x + tables["position_embeddings"][start_position : start_position + n]
    if "token_type_embeddings" in tables:
        types = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
        x = x + tables["token_type_embeddings"][types]
    return x


_CONFIG_FIELDS = ("model_fingerprint", "task", "output", "vocab_size", "max_positions", "family")


class StipUser:
    """The user side of a STIP export, usable without any network (see ``transport``)."""

    def __init__(self, user_dir: str | Path):
        self.user_dir = Path(user_dir)
        config_path = self.user_dir / fmt.USER_CONFIG
        if not config_path.is_file():
            raise KeyFormatError(
                f"{self.user_dir} is not a STIP user folder (no {fmt.USER_CONFIG})"
            )
        fmt.read(self.user_dir, fmt.USER_ROLE)
        try:
            self.config = json.loads(config_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyFormatError(f"{config_path} is corrupted: {exc}") from exc
        if not isinstance(self.config, dict):
            raise KeyFormatError(f"{config_path} is not a JSON object: re-export the model")
        missing = [k for k in _CONFIG_FIELDS if k not in self.config]
        if missing:
            raise KeyFormatError(f"{config_path} lacks {missing}: re-export the model")
        self.key = UserKey.load(self.user_dir / fmt.KEY_FILE)
        if self.key.model_fingerprint != self.config["model_fingerprint"]:
            raise KeyFormatError(
                f"{fmt.KEY_FILE} and {fmt.USER_CONFIG} in {self.user_dir} disagree"
            )
        self.tables = load_file(str(self.user_dir / fmt.USER_MODEL))
        self.tokenizer = load_tokenizer_folder(self.user_dir)
        self._pi_inv = self.key.pi_inverse
        self._pi_c_inv = self.key.pi_c_inverse

    # --- facts -------------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return self.key.scheme

    @property
    def family(self) -> str:
        return self.config["family"]

    @property
    def is_decoder(self) -> bool:
        return self.config["task"] == "decoder"

    @property
    def hidden_size(self) -> int:
        return self.key.hidden_size

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.config.get("eos_token_id")
        return set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())

    # --- embedding ---------------------------------------------------------------------------
    def embed(
        self,
        input_ids: torch.Tensor,
        *,
        start_position: int = 0,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Plain input embeddings of shape (..., n, d): word (+ position, + token type) tables.

        The normalisation that follows (BERT's embedding LayerNorm) runs in the cloud, permuted.
        """
        ids = torch.as_tensor(input_ids, dtype=torch.int64)
        vocab = self.config["vocab_size"]
        if ids.numel() == 0:
            raise InputError("no tokens to embed")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise InputError(
                f"token ids must lie in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}"
            )
        n = ids.shape[-1]
        if start_position + n > self.config["max_positions"]:
            raise InputError(
                f"sequence of {start_position + n} tokens exceeds the model's "
                f"{self.config['max_positions']} positions"
            )
        return embed_with_tables(self.tables, ids, start_position, token_type_ids)

    # --- requests (what leaves the user) -------------------------------------------------------
    def encoder_request(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tensors of one ``/v1/forward`` request for a padded batch of ``texts``:
        permuted float32 embeddings and the 0/1 attention mask."""
        if self.is_decoder:
            raise InputError("an encoder request needs an encoder model; use generate")
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        embeds = self.embed(enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
        mask = enc["attention_mask"].to(torch.int64)
        return {"inputs_embeds": self.permute(embeds), "attention_mask": mask}

    def step_request(self, ids: list[int], start_position: int) -> dict[str, torch.Tensor]:
        """The tensors of one decoder session step feeding ``ids`` from ``start_position``."""
        embeds = self.embed(torch.tensor(ids), start_position=start_position)
        return {"inputs_embeds": self.permute(embeds)}

    # --- permutation -------------------------------------------------------------------------
    def permute(self, x: torch.Tensor) -> torch.Tensor:
        """x[..., pi]: what is sent to the cloud."""
        if x.shape[-1] != self.hidden_size:
            raise InputError(
                f"last axis must be the hidden size {self.hidden_size}, got {x.shape[-1]}"
            )
        return x[..., self.key.pi].contiguous()

    def unpermute_hidden(self, y: torch.Tensor) -> torch.Tensor:
        """Undo pi on a hidden state from the cloud."""
        if y.shape[-1] != self.hidden_size:
            raise InputError(
                f"hidden state has {y.shape[-1]} features, expected {self.hidden_size}"
            )
        return y[..., self._pi_inv]

    def unpermute_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Undo pi_c on v2 logits from the cloud."""
        if self._pi_c_inv is None:
            raise InputError("this key has no pi_c: the cloud returns hidden states, not logits")
        if z.shape[-1] != self._pi_c_inv.numel():
            raise InputError(
                f"logits have {z.shape[-1]} classes, expected {self._pi_c_inv.numel()}"
            )
        return z[..., self._pi_c_inv]

    def unpermute_token(self, permuted_index: int) -> int:
        """Map an index in the cloud's permuted vocabulary back to a token id (v2)."""
        if self.key.pi_c is None:
            raise InputError("this key has no pi_c")
        return int(self.key.pi_c[permuted_index])

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """v1 decoders: the user applies the LM head to the un-permuted final hidden state."""
        if not self.config["user_has_head"]:
            raise InputError("the LM head of this export is in the cloud (scheme v2)")
        head = self.tables.get("lm_head", self.tables["word_embeddings"])
        return h @ head.T
