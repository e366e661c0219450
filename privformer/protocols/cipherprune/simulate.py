"""The float executor of ``model.forward``: ``plain`` (exact GELU, softmax, LayerNorm) or
``simulate`` (exactly the 2PC approximations, in float64), both with the same pruning rule.

Simulate mode is how accuracy over a whole test split is measured without paying for 2PC; a
2PC run differs from it only by fixed-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F

from privformer import approx
from privformer.errors import InputError
from privformer.protocols.cipherprune import model as cp

MODES = ("plain", "simulate")


@dataclass
class FloatOps:
    w: cp.BertClassifierWeights
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mode: str = "simulate"
    records: list[cp.PruneRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        self._relative = self.w.relative_bias()
        self._bias: torch.Tensor | None = None  # (heads, n, n) of the current rows (MPNet)

    @property
    def approximate(self) -> bool:
        return self.mode == "simulate"

    def rows(self, x: torch.Tensor) -> int:
        return x.shape[0]

    def embed(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.w.tensors
        x = t["emb.word"][self.input_ids] + t["emb.pos"][:n] + t["emb.type0"]
        mask = (1.0 - self.attention_mask.to(torch.float64)) * cp.MASK_VALUE
        if self._relative is not None:
            self._bias = self._relative.matrix(torch.arange(n))
        return self.layernorm(x, "emb.ln"), mask, torch.arange(n, dtype=torch.float64)

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.w.tensors[f"{name}.w"] + self.w.tensors[f"{name}.b"]

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y

    def layernorm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        g, b = self.w.tensors[f"{name}.g"], self.w.tensors[f"{name}.b"]
        eps = self.w.norm_eps(name)
        if self.approximate:
            return approx.layernorm.cipherprune(x, g, b, eps, self.w.layernorm_range(name))
        return F.layer_norm(x, (x.shape[-1],), g, b, eps)

    def _split_rows(self, x: torch.Tensor, n_high: int, high_fn, low_fn, dim: int) -> torch.Tensor:
        hi, lo = x.narrow(dim, 0, n_high), x.narrow(dim, n_high, x.shape[dim] - n_high)
        return torch.cat([high_fn(hi), low_fn(lo)], dim=dim) if lo.shape[dim] else high_fn(hi)

    def attention(self, qkv: torch.Tensor, mask: torch.Tensor, n_high: int):
        n, d, h = qkv.shape[0], self.w.hidden, self.w.heads  # qkv: (n, 3d)
        q, k, v = (  # each (h, n, d/h)
            qkv[:, i * d : (i + 1) * d].reshape(n, h, d // h).transpose(0, 1) for i in range(3)
        )
        scores = q @ k.transpose(1, 2)  # (h, n, n); 1/sqrt(d/h) is folded into W_Q
        if self._bias is not None:
            scores = scores + self._bias  # MPNet: the bias of the rows' original positions
        if self.approximate:
            probs = self._split_rows(
                scores,
                n_high,
                lambda s: approx.softmax.cipherprune(s, mask, approx.softmax.EXP_HIGH),
                lambda s: approx.softmax.cipherprune(s, mask, approx.softmax.EXP_LOW),
                dim=1,
            )
        else:
            probs = torch.softmax(scores + mask, dim=-1)
        ctx = (probs @ v).transpose(0, 1).reshape(n, d)  # (h, n, d/h) -> (n, d)
        return ctx, probs

    def gelu(self, x: torch.Tensor, n_high: int) -> torch.Tensor:
        if not self.approximate:
            return F.gelu(x)
        return self._split_rows(
            x,
            n_high,
            lambda t: approx.gelu.cipherprune(t, approx.gelu.GELU_HIGH),
            lambda t: approx.gelu.cipherprune(t, approx.gelu.GELU_LOW),
            dim=0,
        )

    def prune(
        self,
        layer: int,
        probs: torch.Tensor,
        rows: dict,
        keep: float,
        high: float,
        min_keep: int = 0,
    ):
        n = probs.shape[-1]
        importance = probs.sum(dim=(0, 1)) / (self.w.heads * n)
        order = [0] + [j for j in range(1, n) if importance[j] > high]
        low = [j for j in range(1, n) if keep < importance[j] <= high]
        # min_keep: the first pruned rows stay, as dummies (masked keys), up to min_keep rows
        pruned = [j for j in range(1, n) if importance[j] <= keep]
        dummies = pruned[: max(0, min_keep - len(order) - len(low))]
        if dummies:
            rows = dict(rows)
            rows["mask"] = rows["mask"].clone()
            rows["mask"][dummies] = cp.MASK_VALUE
        index = torch.tensor(order + low + dummies)
        positions = rows["pos"].round().long().tolist()
        self.records.append(
            cp.PruneRecord(
                layer,
                positions,
                importance,
                [positions[j] for j in index.tolist()],
                [positions[j] for j in order],
            )
        )
        if self._relative is not None:
            self._bias = self._relative.matrix(torch.tensor(self.records[-1].kept))
        return {k: v[index] for k, v in rows.items()}, len(order)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[0], "head")


def run_float(
    w: cp.BertClassifierWeights,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pruning: cp.PruningConfig | None = None,
    mode: str = "simulate",
) -> tuple[torch.Tensor, cp.ForwardTrace, list[cp.PruneRecord]]:
    """Logits, public trace and pruning records of one sequence (1-D ids, [CLS] first)."""
    ids = torch.as_tensor(input_ids).reshape(-1)
    if ids.numel() > w.max_positions:
        raise InputError(f"{ids.numel()} tokens exceed the model's {w.max_positions} positions")
    if ids.numel() and (ids.min() < 0 or ids.max() >= w.vocab):
        raise InputError(f"token ids must lie in [0, {w.vocab})")
    mask = (
        torch.ones_like(ids)
        if attention_mask is None
        else torch.as_tensor(attention_mask).reshape(-1)
    )
    if mask.shape != ids.shape:
        raise InputError("attention_mask must have the same length as input_ids")
    ops = FloatOps(w, ids, mask, mode)
    logits, trace = cp.forward(ops, w, ids.numel(), pruning or cp.PruningConfig.none(w.layers))
    return cast(torch.Tensor, logits), trace, ops.records  # FloatOps.classify never gives None
