"""Oblivious removal of pruned tokens and grouping of the survivors into high and low.

Input: token rows M (secret), keep bits and high bits (secret 0/1, high implies keep). Output:
the rows of high tokens, then the rows of low tokens; pruned rows are gone. Both methods reveal
exactly two numbers to both parties: how many tokens are kept and how many of those are high.
Which tokens they are stays secret.

- ``swap`` (the paper's): open the counts, then bubble the pruned rows to the tail with
  ``pruned`` passes of sequential adjacent oblivious swaps (compare + mux of the whole row), then
  bubble low rows below high ones the same way: O(passes * n) rounds.
- ``shuffle``: permute the rows by pi0 (known to party 0 only) then pi1 (party 1 only), open the
  shuffled labels (keep + high) and gather rows by label. The opened labels are a uniformly random
  arrangement of the counts, so they reveal nothing beyond them: 3 rounds in all.
"""

from __future__ import annotations

from privformer.crypto.mpc.party import CLIENT, SERVER
from privformer.crypto.mpc.shared import (
    Shared,
    beaver_with,
    cat,
    one_minus_bit,
    open_,
    permute_rows,
)


def shuffle_compact(rows: Shared, keep: Shared, high: Shared) -> tuple[Shared, Shared]:
    label = keep + high  # 0 pruned, 1 low, 2 high
    table = cat([rows, Shared(label.share.reshape(-1, 1), rows.party)], dim=1)
    table = permute_rows(permute_rows(table, CLIENT), SERVER)
    labels = open_(table[:, -1])
    body = table[:, :-1]
    return body[labels == 2], body[labels == 1]


def _bubble(table: Shared, key_col: int, length: int, passes: int) -> None:
    """``passes`` bubble passes over the first ``length`` rows moving key-0 rows down, in place:
    pass p scans pairs (i, i+1) for i < length - 1 - p, each one compare and one row mux."""
    p = table.party
    width = table.shape[1]
    for pas in range(passes):
        steps = length - 1 - pas
        if steps <= 0:
            break
        # One dealer request per pass for each kind of product; each swap uses one slice.
        t_bit = p.dealer.get("mul", a=(steps, 1), b=(steps, 1))
        t_row = p.dealer.get("mul", a=(steps, 1), b=(steps, width))
        for i in range(steps):
            here, below = table.share[i], table.share[i + 1]
            not_key_here = one_minus_bit(Shared(here[key_col : key_col + 1], p))
            swap = beaver_with(
                not_key_here,
                Shared(below[key_col : key_col + 1], p),
                {k: v[i] for k, v in t_bit.items()},
            )
            diff = beaver_with(swap, Shared(below - here, p), {k: v[i] for k, v in t_row.items()})
            table.share[i] = here + diff.share
            table.share[i + 1] = below - diff.share


def swap_compact(rows: Shared, keep: Shared, high: Shared) -> tuple[Shared, Shared]:
    n = rows.shape[0]
    width = rows.shape[1]
    table = cat(
        [
            rows,
            Shared(keep.share.reshape(-1, 1), rows.party),
            Shared(high.share.reshape(-1, 1), rows.party),
        ],
        dim=1,
    )
    table = Shared(table.share.clone(), rows.party)
    counts = open_(cat([keep.sum(0, keepdim=True), high.sum(0, keepdim=True)], 0))
    n_keep, n_high = int(counts[0]), int(counts[1])
    _bubble(table, width, n, n - n_keep)
    _bubble(table, width + 1, n_keep, n_keep - n_high)
    body = table[:, :width]
    return body[:n_high], body[n_high:n_keep]


def compact(method: str, rows: Shared, keep: Shared, high: Shared) -> tuple[Shared, Shared]:
    if method == "shuffle":
        return shuffle_compact(rows, keep, high)
    return swap_compact(rows, keep, high)
