"""``privformer stip audit``: play the honest-but-curious cloud against a STIP export.

``run_audit`` captures the request bytes the real client sends for some texts (the user's
request builder, then the wire format: exactly what crosses the network), decodes them as the
cloud would, runs the attacks of ``protocols.stip.audit`` on the cloud's view (the cloud folder
and those requests, plus an optional public reference model), and only then scores the guesses
against the user's truth (its key and token ids).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from privformer.errors import InputError
from privformer.protocols.stip import audit
from privformer.protocols.stip.user import StipUser
from privformer.transport import tensors as wire


def default_texts(count: int = 40) -> list[str]:
    from privformer.data import rotten_tomatoes_split

    return [text for text, _ in rotten_tomatoes_split()[1][:count]]


def capture(user: StipUser, texts: list[str]) -> tuple[audit.CloudView, list[torch.Tensor]]:
    """(the cloud's view of the requests for ``texts``, the true token ids of each)."""
    requests, truth, size = [], [], 0
    for text in texts:
        if user.is_decoder:
            ids = user.tokenizer(text, add_special_tokens=False)["input_ids"]
            tensors = user.step_request(ids, 0)
        else:
            tensors = user.encoder_request([text])
            ids = user.tokenizer([text])["input_ids"][0]
        body = wire.encode(tensors)  # the bytes on the wire
        size += len(body)
        requests.append(wire.decode(body)[0])
        truth.append(torch.tensor(ids, dtype=torch.int64))
    return audit.CloudView(Path(), requests, size), truth


def public_token_counts(tokenizer: Any, decoder: bool) -> Counter:
    """Token counts of a public corpus of the user's domain: the Rotten Tomatoes training
    sentences (the audit's texts come from the disjoint test split)."""
    from privformer.data import rotten_tomatoes_split

    counts: Counter = Counter()
    for text, _ in rotten_tomatoes_split()[0]:
        counts.update(tokenizer(text, add_special_tokens=not decoder)["input_ids"])
    return counts


def run_audit(
    export_dir: str | Path,
    reference: str | None = None,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """Run every attack on the export's cloud view; return the measured figures."""
    from privformer.models.registry import load_model, load_tokenizer
    from privformer.protocols.stip.cloud import resolve_cloud_dir

    export_dir = Path(export_dir)
    cloud_dir = resolve_cloud_dir(export_dir)
    user_dir = export_dir / "user"
    if not (user_dir / "user.key").is_file():
        raise InputError(f"{export_dir} has no user/ folder: the audit scores against its key")
    user = StipUser(user_dir)  # refuses a user side that cannot tokenise
    texts = texts or default_texts()
    if not texts:
        raise InputError("no texts to audit with")
    view, truth = capture(user, texts)
    view.cloud_dir = cloud_dir
    result: dict[str, Any] = {"export": str(export_dir), **audit.manifest_facts(view)}
    result["tokens"] = sum(t.numel() for t in truth)
    result["bytes_per_request"] = round(view.request_bytes / len(texts))

    # reference-free: repetition and public token frequencies only
    public_tokenizer = load_tokenizer(reference) if reference else user.tokenizer
    counts = public_token_counts(public_tokenizer, user.is_decoder)
    positional = "position_embeddings" in user.tables
    classes = audit.token_classes(view, positional)
    guesses = audit.frequency_analysis(classes, counts)
    result["reference_free_tokens"] = audit.token_recovery(guesses, truth)
    result["reference_free_linkage"] = audit.linkage(classes, truth)

    if reference:
        ref = audit.Reference.of(load_model(reference))
        result["reference"] = reference
        result["vocabulary_matching_tokens"] = audit.token_recovery(
            audit.vocabulary_matching(view, ref), truth
        )
        match = audit.weight_matching(view, ref)
        result["weight_matching_pi"] = audit.permutation_recovery(match.pi, user.key.pi)
        result["weight_matching_exact"] = match.exact
        if user.key.pi_c is not None and "vocab" in match.spaces:
            result["weight_matching_pi_c"] = audit.permutation_recovery(
                match.spaces["vocab"], user.key.pi_c
            )
        result["tokens_after_unpermuting"] = audit.token_recovery(
            audit.tokens_after_unpermuting(view, ref, match.pi), truth
        )
    return result


def format_report(result: dict[str, Any]) -> str:
    """The audit as a table of what the cloud recovered."""
    lines = [
        f"STIP audit of {result['export']} ({result['family']} {result['task']}, scheme "
        f"{result['scheme']}): {result['requests']} requests, {result['tokens']} tokens, "
        f"{result['bytes_per_request']:,} bytes per request seen by the cloud",
        "",
        f"{'attack':52s} recovered",
        f"{'-' * 52} ---------",
    ]

    def row(name: str, value: float | None) -> None:
        if value is not None:
            lines.append(f"{name:52s} {100 * value:8.1f}%")

    row("reference-free: repeated tokens linked (cipher)", result.get("reference_free_linkage"))
    row("reference-free frequency analysis: tokens", result.get("reference_free_tokens"))
    if "reference" in result:
        ref = result["reference"]
        row(f"vocabulary matching vs {ref}: tokens", result["vocabulary_matching_tokens"])
        row(f"weight matching vs {ref}: pi", result["weight_matching_pi"])
        row("weight matching: pi_c (v2 vocabulary)", result.get("weight_matching_pi_c"))
        row("tokens after un-permuting with the recovered pi", result["tokens_after_unpermuting"])
        exact = result["weight_matching_exact"]
        spaces = sorted(exact)
        share = sum(exact[s] for s in spaces) / len(spaces)
        row(f"rows matched exactly, mean over {len(spaces)} secret spaces", share)
    return "\n".join(lines)
