"""What an honest-but-curious STIP cloud can learn, measured by running the attacks.

The attacks see only the cloud's view (``CloudView``: the cloud checkpoint folder and the decoded
request tensors the real client sent) plus, where named, a public reference model. They return
guesses; scoring them against the truth (the user's key and token ids) is a separate step, so
the attack code never touches the user's folder.

- ``vocabulary_matching`` (Thomas et al., ICML 2025): a permutation leaves the multiset of a
  vector's values unchanged, so each received vector's sorted values are matched against the
  sorted reference embeddings (word + position + token type) of every token at its position.
- ``weight_matching``: each norm gain and bias over the residual stream is the reference one
  permuted by pi, so pi follows from matching the per-coordinate vectors of all of them; every
  other secret space (v2's per-layer q, k, v, o, ffn and the vocabulary) follows from matching
  the rows of the weights that write it, once pi is undone. ``tokens_after_unpermuting`` then
  reads the requests as plain embeddings.
- ``frequency_analysis``: no reference weights. Identical (token, position) pairs give identical
  vectors; with absolute position embeddings the cloud first links positions (the difference of
  one token's vectors at two positions is the same for every token, so it is the most frequent
  difference), then maps the resulting token classes to the token frequencies of a public
  corpus tokenised with the public tokenizer.

Matching is nearest (not exact), so the same code measures a private fine-tune against its
public base.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from privformer.errors import InputError
from privformer.models.registry import HFModel
from privformer.protocols.stip import format as fmt
from privformer.protocols.stip.layout import Architecture, describe


@dataclass
class CloudView:
    """Everything the cloud holds: its checkpoint folder and the requests it received."""

    cloud_dir: Path
    requests: list[dict[str, torch.Tensor]]
    request_bytes: int = 0

    @property
    def manifest(self) -> dict[str, Any]:
        return fmt.read(self.cloud_dir, fmt.CLOUD_ROLE)

    def state(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(self.cloud_dir.glob("*.safetensors")):
            tensors.update(load_file(str(path)))
        return tensors

    def vectors(self) -> list[torch.Tensor]:
        """Each request's (n, d) received vectors, padding dropped (the mask is sent too)."""
        out = []
        for request in self.requests:
            embeds = request["inputs_embeds"].double()
            embeds = embeds if embeds.ndim == 3 else embeds[None]
            mask = request.get("attention_mask")
            for i in range(embeds.shape[0]):
                n = int(mask[i].sum()) if mask is not None else embeds.shape[1]
                out.append(embeds[i, :n])
        return out


@dataclass
class Reference:
    """A public model the cloud may hold: its state dict, roles and embedding tables."""

    state: dict[str, torch.Tensor]
    arch: Architecture
    tables: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: HFModel) -> Reference:
        arch = describe(model)
        state = {k: v.detach().double() for k, v in model.state_dict().items()}
        tables = {name: state[key] for name, key in arch.user_tables.items()}
        return cls(state, arch, tables)


# --- shared helpers -------------------------------------------------------------------------
def _position_rows(tables: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """(n, d): what every token at positions 0..n-1 adds besides its word embedding."""
    d = tables["word_embeddings"].shape[1]
    extra = torch.zeros(n, d, dtype=torch.float64)
    if "position_embeddings" in tables:
        extra = extra + tables["position_embeddings"][:n]
    if "token_type_embeddings" in tables:
        extra = extra + tables["token_type_embeddings"][0]
    return extra


def _nearest_rows(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of each query row's nearest key row (squared L2), in chunks of keys."""
    best = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64)
    index = torch.zeros(queries.shape[0], dtype=torch.int64)
    q2 = (queries * queries).sum(1, keepdim=True)
    for start in range(0, keys.shape[0], chunk):
        block = keys[start : start + chunk]
        dist = q2 - 2 * queries @ block.T + (block * block).sum(1)[None]
        value, arg = dist.min(1)
        better = value < best
        best[better], index[better] = value[better], arg[better] + start
    return index


def _hashed_then_nearest(cloud_rows: torch.Tensor, ref_rows: torch.Tensor) -> torch.Tensor:
    """Rows found by their exact float32 bytes first; only the rest by nearest search."""
    table = {row.tobytes(): i for i, row in enumerate(ref_rows.float().numpy())}
    found = [table.get(row.tobytes(), -1) for row in cloud_rows.float().numpy()]
    perm = torch.tensor(found, dtype=torch.int64)
    missing = perm < 0
    if missing.any():
        perm[missing] = _nearest_rows(cloud_rows[missing], ref_rows)
    return perm


def _assign(cloud_rows: torch.Tensor, reference_rows: torch.Tensor) -> torch.Tensor:
    """The one-to-one matching of cloud rows to reference rows of least total distance."""
    from scipy.optimize import linear_sum_assignment

    c2 = (cloud_rows * cloud_rows).sum(1, keepdim=True)
    r2 = (reference_rows * reference_rows).sum(1)[None]
    cost = (c2 - 2 * cloud_rows @ reference_rows.T + r2).numpy()
    rows, cols = linear_sum_assignment(cost)
    out = torch.empty(cloud_rows.shape[0], dtype=torch.int64)
    out[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return out


# --- attack 1: vocabulary matching ----------------------------------------------------------
def _invariants(rows: torch.Tensor) -> torch.Tensor:
    """Permutation-invariant features of each row: sum, sum of squares, max, min."""
    return torch.stack([rows.sum(1), (rows * rows).sum(1), rows.amax(1), rows.amin(1)], 1)


def vocabulary_matching(
    view: CloudView, reference: Reference, shortlist: int = 16
) -> list[torch.Tensor]:
    """Guessed token ids of every request, from sorted values alone (no key, no weights).

    Per position, the ``shortlist`` tokens nearest in four permutation-invariant features are
    compared on their whole sorted vectors (sorting the full vocabulary at every position
    gives the same answer, many times slower)."""
    vectors = view.vectors()
    longest = max(v.shape[0] for v in vectors)
    word = reference.tables["word_embeddings"]
    extra = _position_rows(reference.tables, longest)
    positional = "position_embeddings" in reference.tables
    guesses = [torch.empty(v.shape[0], dtype=torch.int64) for v in vectors]
    for p in range(longest) if positional else [0]:
        members = [(i, q) for i, v in enumerate(vectors) for q in range(v.shape[0])]
        members = [(i, q) for i, q in members if not positional or q == p]
        if not members:
            continue
        table = word + extra[p]
        table_features = _invariants(table)
        scale = table_features.std(0).clamp_min(1e-12)
        for start in range(0, len(members), 256):
            chunk = members[start : start + 256]
            queries = torch.stack([vectors[i][q] for i, q in chunk])
            distance = torch.cdist(_invariants(queries) / scale, table_features / scale)
            candidates = distance.topk(min(shortlist, table.shape[0]), largest=False).indices
            sorted_candidates = torch.sort(table[candidates], dim=2).values  # (m, k, d)
            sorted_queries = torch.sort(queries, dim=1).values[:, None, :]
            best = (sorted_candidates - sorted_queries).square().sum(2).argmin(1)
            found = candidates.gather(1, best[:, None])[:, 0]
            for (i, q), token in zip(chunk, found.tolist(), strict=True):
                guesses[i][q] = token
    return guesses


# --- attack 2: weight matching ----------------------------------------------------------------
@dataclass
class WeightMatch:
    """Recovered permutations: ``pi`` and every other secret space, by name."""

    pi: torch.Tensor
    spaces: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per space, the share of entries whose matched reference row equals the cloud row
    #: exactly (relative 1e-6): checkable by the cloud itself, without the key.
    exact: dict[str, float] = field(default_factory=dict)


def _cloud_key(cloud: dict[str, torch.Tensor], key: str, prefix: str) -> str | None:
    if key in cloud:
        return key
    short = key.removeprefix(prefix)
    return short if short in cloud else None


def weight_matching(view: CloudView, reference: Reference) -> WeightMatch:
    """Recover pi from the residual-stream vectors, then each other space from its weights."""
    cloud = {k: v.double() for k, v in view.state().items()}
    arch = reference.arch
    pairs = []  # (role, reference tensor, cloud tensor)
    for key, role in arch.roles.items():
        ck = _cloud_key(cloud, key, arch.prefix)
        if ck is not None and role.kind != "user" and cloud[ck].abs().sum() > 0:
            pairs.append((role, reference.state[key], cloud[ck]))
    resid = [(r, c) for role, r, c in pairs if role.kind == "vector" and role.out_space == "resid"]
    if not resid:
        raise InputError("the reference has no norm vectors over the residual stream")
    ref_features = torch.stack([r for r, _ in resid], 1)
    cloud_features = torch.stack([c for _, c in resid], 1)
    pi = _assign(cloud_features, ref_features)
    match = WeightMatch(pi, exact={"resid": _exact_share(cloud_features, ref_features[pi])})
    spaces: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for role, r, c in pairs:
        if role.kind != "linear":
            continue
        for axis, space in ((0, role.out_space), (1, role.in_space)):
            if space is None or space == "resid" or (c.ndim == 1 and axis == 1):
                continue
            spaces.setdefault(space, []).append(_rows_along(r, c, axis, role, pi))
    for space, parts in sorted(spaces.items()):
        ref_rows = torch.cat([p[0] for p in parts], 1)
        cloud_rows = torch.cat([p[1] for p in parts], 1)
        if ref_rows.shape[0] > 8192:  # the vocabulary: too many rows for an assignment
            perm = _hashed_then_nearest(cloud_rows, ref_rows)
        else:
            perm = _assign(cloud_rows, ref_rows)
        match.spaces[space] = perm
        match.exact[space] = _exact_share(cloud_rows, ref_rows[perm])
    return match


def _rows_along(
    ref: torch.Tensor, cloud: torch.Tensor, axis: int, role: Any, pi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and cloud slices along ``axis`` as rows; the other axis put in the reference's
    order when it is the residual stream (pi undone), sorted when it is another secret space."""
    if ref.ndim == 1:
        return ref[:, None], cloud[:, None]
    r, c = (ref, cloud) if axis == 0 else (ref.T, cloud.T)
    other = role.in_space if axis == 0 else role.out_space
    if other == "resid":
        c = c[:, torch.argsort(pi)]
    elif other is not None:
        r, c = torch.sort(r, 1).values, torch.sort(c, 1).values
    return r, c


def _exact_share(cloud_rows: torch.Tensor, matched: torch.Tensor) -> float:
    scale = cloud_rows.abs().max().clamp_min(1e-30)
    same = ((cloud_rows - matched).abs().amax(1) <= 1e-6 * scale).double()
    return float(same.mean())


def tokens_after_unpermuting(
    view: CloudView, reference: Reference, pi: torch.Tensor
) -> list[torch.Tensor]:
    """Guessed token ids once the requests are un-permuted with a recovered pi."""
    vectors = view.vectors()
    longest = max(v.shape[0] for v in vectors)
    word = reference.tables["word_embeddings"]
    extra = _position_rows(reference.tables, longest)
    inverse = torch.argsort(pi)
    guesses = []
    for v in vectors:
        plain = v[:, inverse] - extra[: v.shape[0]]  # the word embedding, if pi is right
        guesses.append(_nearest_rows(plain, word))
    return guesses


# --- attack 3: frequency analysis without reference weights --------------------------------
def _best_offset(
    rows_p: torch.Tensor, rows_q: torch.Tensor, features_p: torch.Tensor, features_q: torch.Tensor
) -> tuple[int, torch.Tensor | None]:
    """(tokens shared, offset) of the best shift taking position p's vectors onto position q's:
    the most frequent differences of the first random feature are candidates, each verified on
    all features (chance collisions of one projection are common, of four are not)."""
    diffs = features_p[:, None, 0] - features_q[None, :, 0]
    keys = torch.round(diffs * 1e4).to(torch.int64).flatten()
    values, counts = torch.unique(keys, return_counts=True)
    best_hits, best = 1, None
    for value in values[torch.argsort(counts, descending=True)[:3]].tolist():
        where = int((keys == value).nonzero()[0])
        a, b = divmod(where, len(rows_q))
        shift = features_p[a] - features_q[b]
        hits = int((torch.cdist(features_p - shift, features_q).min(1).values < 1e-4).sum())
        if hits > best_hits:
            best_hits, best = hits, rows_p[a] - rows_q[b]
    return best_hits, best


def link_positions(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Vectors moved to one frame: v(t, p) - offset(p). The offset between two positions is
    the shift that maps the most vectors of one onto the other (v(t, p) - v(t, q) is the same
    for every token t, so every token occurring at both votes for it); positions are joined
    along a maximum spanning tree of those vote counts, so rare positions link through
    similar ones (sentence ends share "." and [SEP]). A position that shares no two tokens
    with any other keeps offset 0: its vectors stay classes of their own."""
    longest = max(v.shape[0] for v in vectors)
    d = vectors[0].shape[1]
    projection = torch.randn(d, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = [
        torch.unique(torch.stack([v[p] for v in vectors if v.shape[0] > p]), dim=0)
        for p in range(longest)
    ]
    features = [r @ projection for r in rows]
    edges = []  # (votes, p, q, offset taking p's frame to q's)
    for p in range(longest):
        for q in range(p + 1, longest):
            votes, offset = _best_offset(rows[p], rows[q], features[p], features[q])
            if offset is not None:
                edges.append((votes, p, q, offset))
    offsets = torch.zeros(longest, d, dtype=torch.float64)
    root = max(range(longest), key=lambda p: len(rows[p]))
    linked = {root}
    edges.sort(key=lambda e: -e[0])
    grew = True
    while grew:  # Prim's algorithm on the sorted edges
        grew = False
        for _votes, p, q, offset in edges:
            if (p in linked) != (q in linked):
                if q in linked:  # v_p - offset is in q's frame
                    offsets[p] = offsets[q] + offset
                    linked.add(p)
                else:
                    offsets[q] = offsets[p] - offset
                    linked.add(q)
                grew = True
                break
    return [v - offsets[: v.shape[0]] for v in vectors]


def token_classes(view: CloudView, positional: bool) -> list[torch.Tensor]:
    """A class id per received vector: equal ids mean "the same token" to the cloud."""
    vectors = view.vectors()
    linked = link_positions(vectors) if positional else vectors
    keys = torch.round(torch.cat(linked) * 1e4)
    classes = torch.unique(keys, dim=0, return_inverse=True)[1]
    return list(torch.split(classes, [v.shape[0] for v in vectors]))


def frequency_analysis(
    classes: list[torch.Tensor], public_token_counts: Counter
) -> list[torch.Tensor]:
    """Guessed token ids from repetition alone: the ``token_classes`` ranked by count, mapped
    to the public corpus's tokens ranked by count."""
    flat = torch.cat(classes)
    ranked_classes = torch.argsort(torch.bincount(flat), descending=True).tolist()
    ranked_tokens = [t for t, _ in public_token_counts.most_common(len(ranked_classes))]
    mapping = dict(zip(ranked_classes, ranked_tokens, strict=False))
    guesses = torch.tensor([mapping.get(int(c), -1) for c in flat.tolist()])
    return list(torch.split(guesses, [c.numel() for c in classes]))


# --- scoring (needs the truth: never called by the attacks) ----------------------------------
def token_recovery(guesses: list[torch.Tensor], truth: list[torch.Tensor]) -> float:
    """Share of token occurrences guessed right."""
    right = sum(int((g == t).sum()) for g, t in zip(guesses, truth, strict=True))
    return right / max(1, sum(t.numel() for t in truth))


def linkage(classes: list[torch.Tensor], truth: list[torch.Tensor]) -> float:
    """Among occurrences of tokens that occur more than once, the share the cloud links
    exactly: all of the token's occurrences fall in one class, and that class holds no other
    token (the substitution cipher, before any frequency analysis)."""
    pairs = list(zip(torch.cat(classes).tolist(), torch.cat(truth).tolist(), strict=True))
    classes_of: dict[int, set[int]] = {}
    tokens_of: dict[int, set[int]] = {}
    for c, t in pairs:
        classes_of.setdefault(t, set()).add(c)
        tokens_of.setdefault(c, set()).add(t)
    repeated = Counter(t for _, t in pairs)
    pairs = [(c, t) for c, t in pairs if repeated[t] > 1]
    linked = sum(1 for c, t in pairs if len(classes_of[t]) == 1 and len(tokens_of[c]) == 1)
    return linked / max(1, len(pairs))


def permutation_recovery(guess: torch.Tensor, truth: torch.Tensor) -> float:
    return float((guess == truth).double().mean())


def manifest_facts(view: CloudView) -> dict[str, Any]:
    m = view.manifest
    return {k: m[k] for k in ("scheme", "family", "task", "hidden_size", "num_layers")} | {
        "requests": len(view.requests),
        "request_bytes": view.request_bytes,
        "config": json.loads((view.cloud_dir / "config.json").read_text()).get("model_type"),
    }
