"""The 2PC executor of ``model.forward``: the same pass on secret shares.

Party 0 (client) holds the token ids and attention mask, party 1 (server) the weights and
thresholds. Weights are party 1's private inputs to one-sided products (``shared.linear``); the
thresholds enter only as party 1's additive constant in a comparison. Only the logits are revealed,
to the client. Both parties learn the per-layer token counts (kept, and high among kept).

MPNet's relative position bias is party 1's weight too. Before any pruning the rows are the
positions 0..n-1, so party 1 adds the bias matrix to its share of the scores. Pruning keeps the
kept positions secret, so the rows also carry a secret 0/1 selection S (kept rows x original
positions, compacted with them); after a pruning step the bias is S B S^T per head: a one-sided
product with party 1's (n x heads n) bias matrix, then a Beaver product with S^T, neither
truncated (S holds integers), so the 2PC bias is exactly the fixed-point encoding of the float one.

With ``debug_reveal`` the client also learns, per pruning step, the original positions of the
kept tokens and the importance scores: that is for tests comparing against ``simulate``, and it
leaks attention statistics of the model to the client, so it is off by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch

from privformer.crypto.mpc import compare, fixed
from privformer.crypto.mpc import shared as sh
from privformer.crypto.mpc.party import CLIENT, SERVER, Party
from privformer.crypto.mpc.shared import Shared
from privformer.errors import InputError
from privformer.protocols.cipherprune import nonlinear as nl
from privformer.protocols.cipherprune.compaction import compact
from privformer.protocols.cipherprune.model import (
    MASK_VALUE,
    BertClassifierWeights,
    ForwardTrace,
    PruneRecord,
    PruningConfig,
    forward,
)


@dataclass
class SharedOps:
    party: Party
    w: BertClassifierWeights  # party 0 holds a shapes-only copy (meta tensors)
    input_ids: torch.Tensor | None = None  # party 0 only
    attention_mask: torch.Tensor | None = None  # party 0 only
    compaction: str = "shuffle"
    debug_reveal: bool = False
    debug: list[PruneRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.enc: dict[str, torch.Tensor] = {}
        if self.party.role == SERVER:
            self.enc = {k: fixed.encode(v, k) for k, v in self.w.tensors.items()}
        self._relative = self.w.relative_max_distance > 0
        # MPNet: the rows' selection of original positions (integer shares) and their bias:
        # party 1's plain ring tensor before the first pruning, a secret share after it.
        self._selection: Shared | None = None
        self._bias: Shared | torch.Tensor | None = None
        self._matrix: torch.Tensor | None = None  # party 1's (n x heads n) bias matrix

    def _weight(self, name: str) -> torch.Tensor | None:
        return self.enc.get(name)

    def setup(self) -> None:
        """Open every weight mask once for the session (model-setup traffic)."""
        names = [k for k in self.w.tensors if k.endswith((".w", ".g", ".word"))]
        with self.party.stats.op("setup"):
            sh.open_weight_masks(
                self.party,
                {k: self._weight(k) for k in names},
                {k: self.w.shape_of(k) for k in names},
            )

    def rows(self, x: Shared) -> int:
        return x.shape[0]

    def embed(self, n: int) -> tuple[Shared, Shared, Shared]:
        p, vocab = self.party, self.w.vocab
        with p.stats.op("embedding"):
            onehot = mask = pos = None
            if p.role == CLIENT:
                if self.input_ids is None or self.attention_mask is None:
                    raise InputError("the client runs with its token ids and attention mask")
                onehot = torch.zeros(n, vocab, dtype=torch.int64)
                onehot[torch.arange(n), self.input_ids] = (
                    1  # integers: the product needs no truncation
                )
                mask = fixed.encode((1.0 - self.attention_mask.double()) * MASK_VALUE)
                pos = fixed.encode(torch.arange(n, dtype=torch.float64))
            onehot_s = sh.share_input(p, CLIENT, onehot, (n, vocab))
            mask_s = sh.share_input(p, CLIENT, mask, (n,))
            pos_s = sh.share_input(p, CLIENT, pos, (n,))
            x = sh.onesided_product(
                onehot_s,
                "emb.word",
                self._weight("emb.word"),
                self.w.shape_of("emb.word"),
                "matmul",
            )
            if p.role == SERVER:
                x = x.add_server_value(self.enc["emb.pos"][:n] + self.enc["emb.type0"])
        if self._relative:
            self._setup_relative_bias(n)
        return self.layernorm(x, "emb.ln"), mask_s, pos_s

    def _setup_relative_bias(self, n: int) -> None:
        """The bias of positions 0..n-1 (party 1's), its (n x heads n) matrix's mask opened for
        the products after pruning, and the identity selection (a public constant: party 0
        holds it, party 1 zeros)."""
        p, h = self.party, self.w.heads
        matrix = None
        if p.role == SERVER:
            relative = self.w.relative_bias()
            assert relative is not None  # _relative says the model has one
            bias = relative.matrix(torch.arange(n))  # (h, n, n)
            self._bias = fixed.encode(bias)
            matrix = fixed.encode(bias.permute(1, 0, 2).reshape(n, h * n))  # [a, g n + b]
        with p.stats.op("setup"):
            sh.open_weight_masks(p, {"rel.matrix": matrix}, {"rel.matrix": (n, h * n)})
        self._matrix = matrix
        eye = torch.eye(n, dtype=torch.int64)
        self._selection = Shared(eye if p.role == CLIENT else torch.zeros_like(eye), p)

    def _pruned_bias(self, selection: Shared) -> Shared:
        """S B S^T per head for the kept rows' selection S (m x n): (h, m, m), secret."""
        p, h = self.party, self.w.heads
        m, n = selection.shape
        y = sh.onesided_product(selection, "rel.matrix", self._matrix, (n, h * n), "matmul")
        y = y.reshape(m, h, n).transpose(0, 1)  # (h, m, n): rows of S B_g
        s_t = Shared(selection.share.T.expand(h, n, m).contiguous(), p)
        return sh.matmul(y, s_t, fixed_point=False)  # S holds integers: no truncation

    def linear(self, x: Shared, name: str) -> Shared:
        with self.party.stats.op("linear"):
            return sh.linear(
                x,
                f"{name}.w",
                self._weight(f"{name}.w"),
                self._weight(f"{name}.b"),
                self.w.shape_of(f"{name}.w"),
            )

    def add(self, x: Shared, y: Shared) -> Shared:
        return x + y

    def layernorm(self, x: Shared, name: str) -> Shared:
        with self.party.stats.op("layernorm"):
            return nl.layernorm(
                x,
                f"{name}.g",
                self._weight(f"{name}.g"),
                self._weight(f"{name}.b"),
                self.w.norm_eps(name),
                self.w.layernorm_range(name),
            )

    def attention(self, qkv: Shared, mask: Shared, n_high: int) -> tuple[Shared, Shared]:
        n, d, h = qkv.shape[0], self.w.hidden, self.w.heads
        with self.party.stats.op("attention"):
            q, k, v = (
                qkv[:, i * d : (i + 1) * d].reshape(n, h, d // h).transpose(0, 1) for i in range(3)
            )
            scores = sh.matmul(q, k.transpose(1, 2))
            if isinstance(self._bias, Shared):
                scores = scores + self._bias
            elif self._relative:  # party 1 adds the bias of positions 0..n-1 (None at party 0)
                scores = scores.add_server_value(self._bias)
        with self.party.stats.op("softmax"):
            key_mask = Shared(mask.share.reshape(1, 1, n).expand(h, n, n).contiguous(), mask.party)
            # rows (queries) of high tokens get the accurate exp, the others the reduced one
            probs = nl.softmax_rows(scores, key_mask, n_high, dim=1)
        with self.party.stats.op("attention"):
            ctx = sh.matmul(probs, v).transpose(0, 1).reshape(n, d)
        return ctx, probs

    def gelu(self, x: Shared, n_high: int) -> Shared:
        with self.party.stats.op("gelu"):
            return nl.gelu_rows(x, n_high)

    def prune(
        self,
        layer: int,
        probs: Shared,
        rows: dict,
        keep: float,
        high: float,
        min_keep: int = 0,
    ):
        p = self.party
        n = probs.shape[-1]
        with p.stats.op("prune"):
            importance = sh.mul_public(probs.sum(0).sum(0), 1.0 / (self.w.heads * n))
            tail = importance[1:]
            thresholds = None
            if p.role == SERVER:
                thresholds = fixed.encode(torch.tensor([keep] * (n - 1) + [high] * (n - 1)))
            # [S_j > t] = [t - S_j < 0]; t enters as the server's additive constant
            bits = compare.ltz((-sh.cat([tail, tail], 0)).add_server_value(thresholds))
            keep_bits, high_bits = bits[: n - 1], bits[n - 1 :]
            mask = rows["mask"]
            if min_keep > 1:
                keep_bits, mask = self._keep_dummies(keep_bits, mask, min_keep - 1)
            columns = [
                rows["x"],
                rows["ctx"],
                Shared(mask.share.reshape(-1, 1), p),
                Shared(rows["pos"].share.reshape(-1, 1), p),
            ]
            if self._selection is not None:
                columns.append(self._selection)
            table = sh.cat(columns, dim=1)
            high_rows, low_rows = compact(self.compaction, table[1:], keep_bits, high_bits)
            table = sh.cat([table[0:1], high_rows, low_rows], 0)
            d = self.w.hidden
            new = {
                "x": table[:, :d],
                "ctx": table[:, d : 2 * d],
                "mask": Shared(table.share[:, 2 * d].contiguous(), p),
                "pos": Shared(table.share[:, 2 * d + 1].contiguous(), p),
            }
            if self._selection is not None:
                self._selection = table[:, 2 * d + 2 :]
                self._bias = self._pruned_bias(self._selection)
            if self.debug_reveal:
                self._debug(layer, rows["pos"], importance, new["pos"], 1 + high_rows.shape[0])
        return new, 1 + high_rows.shape[0]

    def _keep_dummies(self, keep: Shared, mask: Shared, least: int) -> tuple[Shared, Shared]:
        """Keep bits of the rows after [CLS] with the first pruned rows added until ``least``
        are kept, and the mask with those dummies masked as keys; nothing is opened. Pruned row
        j is the r_j-th pruned one (r_j = prefix count of zeros), and it stays iff
        r_j <= least - K (K kept): one comparison per row, then two bit products."""
        p = self.party
        pruned = sh.one_minus_bit(keep)  # integer shares of 1 - k_j
        rank = Shared(pruned.share.cumsum(0), p)
        kept = keep.sum(0, keepdim=True)
        # [r_j + K - least - 1 < 0]  <=>  r_j <= least - K
        slack = Shared(rank.share + kept.share.expand_as(rank.share), p).add_public(
            -(least + 1), encoded=True
        )
        dummy = sh.mul(pruned, compare.ltz(slack), fixed_point=False)
        tail = mask[1:]
        dummy_mask = dummy.mul_int(int(fixed.encode(torch.tensor(MASK_VALUE))))
        masked = tail - sh.mul(dummy, tail, fixed_point=False) + dummy_mask
        return keep + dummy, sh.cat([mask[0:1], masked], 0)

    def _debug(self, layer: int, pos: Shared, importance: Shared, new_pos: Shared, n_high: int):
        with self.party.stats.op("debug"):
            got = [sh.reveal_to(t, CLIENT) for t in (pos, importance, new_pos)]
        if self.party.role == CLIENT:
            old, imp, kept = (fixed.decode(cast(torch.Tensor, t)) for t in got)
            kept_list = kept.round().long().tolist()
            self.debug.append(
                PruneRecord(layer, old.round().long().tolist(), imp, kept_list, kept_list[:n_high])
            )

    def classify(self, x: Shared) -> torch.Tensor | None:
        with self.party.stats.op("classifier"):
            logits = sh.linear(
                x[0:1],
                "head.w",
                self._weight("head.w"),
                self._weight("head.b"),
                self.w.shape_of("head.w"),
            )
            out = sh.reveal_to(logits, CLIENT)
        return None if out is None else fixed.decode(out[0])


def shapes_only(card: dict) -> BertClassifierWeights:
    """The client's copy of the model: the public shapes, no values."""
    tensors = {k: torch.empty(tuple(s), device="meta") for k, s in card["shapes"].items()}
    return BertClassifierWeights(tensors, **card["dims"])


def model_card(w: BertClassifierWeights, pruning: PruningConfig) -> dict:
    """What the server publishes: dimensions, tensor shapes, which layers prune and how."""
    dims = w.dims()
    return {
        "dims": dims,
        "shapes": {k: list(v.shape) for k, v in w.tensors.items()},
        "prunes": [k is not None for k in pruning.keep],
        "compaction": pruning.compaction,
        "min_keep": pruning.min_keep,
    }


def public_pruning(card: dict) -> PruningConfig:
    """The client's view of the pruning config: which layers prune (thresholds stay private;
    any placeholder works because the client never adds them)."""
    marks = [0.0 if on else None for on in card["prunes"]]
    return PruningConfig(marks, marks, card["compaction"], int(card.get("min_keep", 0)))


def run_party(
    party: Party,
    w: BertClassifierWeights,
    pruning: PruningConfig,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    n: int | None = None,
    debug_reveal: bool = False,
) -> tuple[torch.Tensor | None, ForwardTrace, SharedOps]:
    """One party's side of a secure classification of one sequence of ``n`` tokens."""
    if party.role == CLIENT:
        if input_ids is None:
            raise InputError("the client must provide input_ids")
        input_ids = torch.as_tensor(input_ids).reshape(-1)
        n = input_ids.numel()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask).reshape(-1)
        if attention_mask.shape != input_ids.shape:
            raise InputError("attention_mask must have the same length as input_ids")
        if input_ids.min() < 0 or input_ids.max() >= w.vocab:
            raise InputError(f"token ids must lie in [0, {w.vocab})")
    if n is None or n < 1 or n > w.max_positions:
        raise InputError(f"sequence length must be 1..{w.max_positions}, got {n}")
    ops = SharedOps(party, w, input_ids, attention_mask, pruning.compaction, debug_reveal)
    ops.setup()
    logits, trace = forward(ops, w, n, pruning)
    return logits, trace, ops
