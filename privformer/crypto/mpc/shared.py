"""The secret-shared tensor and the linear, multiplication and truncation protocols.

``Shared`` holds one party's additive share x_i of x = x0 + x1 (mod 2^64), fixed point unless a
function says it holds integers (bits are shared as plain 0/1 integers). Local operations (add,
subtract, slice, sum, public integer scaling) cost nothing; the others cost one ``exchange`` each:

- ``mul`` / ``matmul``: Beaver triples (open e = x - a and f = y - b), then ``truncate``;
- ``linear`` / ``scale_by_weight``: x times party 1's plaintext weight W; party 0 sends x0 - A
  and gets W - B once per session (``open_weight_masks``), so a linear layer costs one message of
  the activation's size, like the activation-masking of Delphi-style protocols;
- ``truncate``: divide by 2^bits with a dealer truncation pair: open c = x + 2^62 + r, correct the
  wrap with msb(r) (exact whenever |x| < 2^62, off by at most one unit in the last place).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from privformer.crypto.mpc import fixed
from privformer.crypto.mpc.dealer import weight_stream
from privformer.crypto.mpc.party import CLIENT, SERVER, Party
from privformer.errors import InputError

_BIAS = 1 << 62


class Shared:
    """One party's share of a secret tensor."""

    __slots__ = ("share", "party")

    def __init__(self, share: torch.Tensor, party: Party):
        if share.dtype != torch.int64:
            raise InputError("shares are int64 ring elements")
        self.share = share
        self.party = party

    # -- local operations ------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def __add__(self, other: Shared) -> Shared:
        return Shared(self.share + other.share, self.party)

    def __sub__(self, other: Shared) -> Shared:
        return Shared(self.share - other.share, self.party)

    def __neg__(self) -> Shared:
        return Shared(-self.share, self.party)

    def __getitem__(self, idx) -> Shared:
        return Shared(self.share[idx], self.party)

    def add_public(self, value: torch.Tensor | float | int, encoded: bool = False) -> Shared:
        """x + v for a public v (party 0 adds it). ``encoded``: v is already a ring tensor."""
        if self.party.role != CLIENT:
            return Shared(self.share.clone(), self.party)
        v = value if encoded else fixed.encode(torch.as_tensor(value, dtype=torch.float64))
        return Shared(self.share + v, self.party)

    def add_server_value(self, v: torch.Tensor | None) -> Shared:
        """x + v where v (ring tensor) is party 1's private value (e.g. a bias); party 0
        passes None."""
        if self.party.role == SERVER and v is not None:
            return Shared(self.share + v, self.party)
        return Shared(self.share.clone(), self.party)

    def mul_int(self, k: int | torch.Tensor) -> Shared:
        """x * k for a public integer k (no truncation needed)."""
        return Shared(self.share * k, self.party)

    def sum(self, dim: int, keepdim: bool = False) -> Shared:
        return Shared(self.share.sum(dim=dim, keepdim=keepdim), self.party)

    def reshape(self, *shape) -> Shared:
        return Shared(self.share.reshape(*shape), self.party)

    def transpose(self, a: int, b: int) -> Shared:
        return Shared(self.share.transpose(a, b), self.party)


def cat(xs: Sequence[Shared], dim: int = 0) -> Shared:
    return Shared(torch.cat([x.share for x in xs], dim=dim), xs[0].party)


# -- input and output ----------------------------------------------------------------------
def share_input(
    party: Party, owner: int, value: torch.Tensor | None, shape: Sequence[int]
) -> Shared:
    """Secret-share ``owner``'s ring tensor ``value`` (others pass None). The non-owner's share is
    drawn from the pairwise stream, so sharing costs no traffic."""
    other_share = party.pair_stream().ring(tuple(shape))
    if party.role == owner:
        if value is None or tuple(value.shape) != tuple(shape):
            raise InputError(f"private input must have shape {tuple(shape)}")
        return Shared(value - other_share, party)
    return Shared(other_share, party)


def open_(x: Shared) -> torch.Tensor:
    """Reveal x to both parties (one round)."""
    (other,) = x.party.peer.exchange([x.share], "open")
    return x.share + other


def reveal_to(x: Shared, role: int) -> torch.Tensor | None:
    """Reveal x to one party only (one round; the other learns nothing)."""
    if x.party.role == role:
        (other,) = x.party.peer.exchange([], "reveal")
        return x.share + other
    x.party.peer.exchange([x.share], "reveal")
    return None


# -- truncation and products ---------------------------------------------------------------
def one_minus_bit(bit: Shared) -> Shared:
    """1 - b for integer-shared bits (party 0 adds the integer 1, not a fixed-point 1)."""
    one = torch.ones_like(bit.share) if bit.party.role == CLIENT else torch.zeros_like(bit.share)
    return Shared(one - bit.share, bit.party)


def truncate(x: Shared, bits: int = fixed.FRAC_BITS) -> Shared:
    """x / 2^bits (floor, +-1 unit), valid for |x| < 2^62."""
    p = x.party
    t = p.dealer.get("trunc", shape=x.shape, bits=bits)
    masked = x.share + t["r"] + (_BIAS if p.role == CLIENT else 0)
    (other,) = p.peer.exchange([masked], "trunc")
    c = masked + other
    wrap = t["m"] * (1 - fixed.msb(c)) * (1 << (fixed.RING_BITS - bits))
    z = wrap - t["rs"]
    if p.role == CLIENT:
        z = z + fixed.logical_shift_right(c, bits) - (_BIAS >> bits)
    return Shared(z, p)


def _beaver(x: Shared, y: Shared, kind: str) -> Shared:
    t = x.party.dealer.get(kind, a=x.shape, b=y.shape)
    return beaver_with(x, y, t, kind)


def mul(x: Shared, y: Shared, fixed_point: bool = True, frac_bits: int = fixed.FRAC_BITS) -> Shared:
    """Elementwise x * y (broadcasting). ``fixed_point=False`` when one factor holds integers
    (e.g. bits), which needs no truncation; ``frac_bits`` for values kept at a finer scale."""
    z = _beaver(x, y, "mul")
    return truncate(z, frac_bits) if fixed_point else z


def matmul(x: Shared, y: Shared, fixed_point: bool = True) -> Shared:
    """x @ y of two secret tensors (batched like torch.matmul); ``fixed_point=False`` when one
    factor holds integers (e.g. a 0/1 selection matrix), which needs no truncation."""
    z = _beaver(x, y, "matmul")
    return truncate(z) if fixed_point else z


def mul_public(x: Shared, c: float) -> Shared:
    """x * c for a public real c. A small c is encoded with 2^e more scale (e = bits it lacks
    below 1), so it keeps 18 significant bits (1/384 at plain 2^18 would err by 5e-4, relative);
    the product stays below 2^62 whenever |x c| < 2^(26 - e), true of every use here."""
    extra = max(0, math.ceil(-math.log2(abs(c)))) if c != 0 else 0
    k = int(round(c * (1 << (fixed.FRAC_BITS + extra))))
    return truncate(x.mul_int(k), fixed.FRAC_BITS + extra)


def open_weight_masks(party: Party, weights: dict[str, torch.Tensor | None], shapes: dict) -> None:
    """Once per session: party 1 sends F = W - B for each of its weights (B its dealer mask);
    party 0 keeps them. One round of |W| ring elements (the session's model-setup traffic)."""
    names = sorted(shapes)
    if party.role == SERVER:
        masked = []
        for n in names:
            w = weights[n]
            if w is None or tuple(w.shape) != tuple(shapes[n]):
                raise InputError(f"weight {n} must have shape {tuple(shapes[n])}")
            masked.append(w - weight_stream(party.dealer.key, n).ring(tuple(shapes[n])))
        party.peer.exchange(masked, "weights")
    else:
        got = party.peer.exchange([], "weights")
        if len(got) != len(names):
            raise InputError(f"server sent {len(got)} weight masks, expected {len(names)}")
        party.weight_masks.update(zip(names, got, strict=True))


def onesided_product(
    x: Shared, name: str, w: torch.Tensor | None, w_shape: Sequence[int], op: str
) -> Shared:
    """x @ W (``op="matmul"``) or x * W (``op="mul"``) with W party 1's private ring tensor
    (party 0 passes None), by the session's opened weight mask; one round, NOT truncated (the
    caller truncates, or not when x holds integers such as a one-hot embedding lookup)."""
    p = x.party
    fn = torch.mul if op == "mul" else torch.matmul
    t = p.dealer.get(f"onesided_{op}", a=x.shape, w=name, b=w_shape)
    if p.role == CLIENT:
        if name not in p.weight_masks:
            raise InputError(f"weight {name} was not opened for this session")
        p.peer.exchange([x.share - t["A"]], "onesided")
        return Shared(fn(t["A"], p.weight_masks[name]) + t["C"], p)
    if w is None:
        raise InputError(f"party 1 holds weight {name}: it must pass it")
    (e,) = p.peer.exchange([], "onesided")
    return Shared(fn(e + x.share, w) + t["C"], p)


def linear(
    x: Shared,
    name: str,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    w_shape: Sequence[int],
) -> Shared:
    """x @ W + b with W (in x out) and b party 1's ring tensors; party 0 passes None."""
    y = truncate(onesided_product(x, name, weight, tuple(w_shape), "matmul"))
    return y.add_server_value(bias) if bias is not None else y


def scale_by_weight(
    x: Shared, name: str, weight: torch.Tensor | None, w_shape: Sequence[int]
) -> Shared:
    """x * W elementwise (broadcast) with W party 1's ring tensor (e.g. LayerNorm's gamma)."""
    return truncate(onesided_product(x, name, weight, tuple(w_shape), "mul"))


def beaver_with(x: Shared, y: Shared, triple: dict[str, torch.Tensor], kind: str = "mul") -> Shared:
    """A Beaver product with a triple fetched earlier (e.g. one slice of a batch fetched for a
    whole pass of sequential swaps, to avoid one dealer round trip per swap). No truncation."""
    p = x.party
    op = torch.mul if kind == "mul" else torch.matmul
    e_mine, f_mine = x.share - triple["a"], y.share - triple["b"]
    e_other, f_other = p.peer.exchange([e_mine, f_mine], "beaver")
    e, f = e_mine + e_other, f_mine + f_other
    z = triple["c"] + op(e, triple["b"]) + op(triple["a"], f)
    if p.role == CLIENT:
        z = z + op(e, f)
    return Shared(z, p)


def permute_rows(x: Shared, owner: int) -> Shared:
    """Rows of x reordered by a permutation pi that only ``owner`` (and the dealer) knows; the
    result is freshly re-shared, so the other party cannot link old and new rows. One round."""
    p = x.party
    t = p.dealer.get("perm", shape=x.shape, owner=owner)
    if p.role == owner:
        (z,) = p.peer.exchange([], "perm")
        return Shared((x.share + z)[t["pi"]] + t["delta"], p)
    p.peer.exchange([x.share - t["a"]], "perm")
    return Shared(t["r"], p)
