"""STIP audit benchmark: what the cloud recovers, for public and fine-tuned models, v1 and v2.

Rows (each an export audited with ``privformer.cli.stip_audit.run_audit``):
- MiniLM and SmolLM2-135M, public weights, v1 and v2, with the public model as reference;
- the Rotten Tomatoes classifier ``minilm2-rt`` (MiniLM's first two layers fine-tuned for two
  epochs, embeddings included), v1 and v2, with the public 6-layer MiniLM as reference: the
  realistic private deployment (a fine-tune of a public base).
Every row also runs the reference-free attack (repetition and public token frequencies only).

    python bench/stip_audit.py [--texts N]   # prints a table, writes results/stip_audit.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer.cli.stip_audit import default_texts, run_audit  # noqa: E402
from privformer.models.classifiers import FINE_TUNED_2_LAYERS, load_classifier  # noqa: E402
from privformer.protocols.stip.export import export  # noqa: E402


def _fine_tuned_folder(folder: Path) -> Path:
    clf = load_classifier(FINE_TUNED_2_LAYERS)
    clf.encoder.save_pretrained(folder)
    clf.tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200, help="Rotten Tomatoes test sentences")
    parser.add_argument("--models", default="minilm,smollm2,minilm2-rt")
    args = parser.parse_args()
    texts = default_texts(args.texts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {
            "minilm": ("minilm", "minilm", "public"),
            "smollm2": ("smollm2", "smollm2", "public"),
            "minilm2-rt": (None, "minilm", "fine-tuned"),
        }
        for name in args.models.split(","):
            source, reference, weights = sources[name]
            if source is None:
                source = str(_fine_tuned_folder(Path(tmp) / name))
            for scheme in ("v1", "v2"):
                out = Path(tmp) / f"{name}-{scheme}"
                export(source, out, scheme=scheme, progress=False)
                start = time.perf_counter()
                result = run_audit(out, reference, texts)
                row = {
                    "model": name,
                    "weights": weights,
                    "scheme": scheme,
                    "reference": reference,
                    "tokens": result["tokens"],
                    "vocab_match_tokens_%": 100 * result["vocabulary_matching_tokens"],
                    "pi_%": 100 * result["weight_matching_pi"],
                    "pi_c_%": 100 * result["weight_matching_pi_c"]
                    if "weight_matching_pi_c" in result
                    else None,
                    "tokens_after_unpermuting_%": 100 * result["tokens_after_unpermuting"],
                    "spaces_exact_%": 100 * min(result["weight_matching_exact"].values()),
                    "spaces": len(result["weight_matching_exact"]),
                    "ref_free_linkage_%": 100 * result["reference_free_linkage"],
                    "ref_free_tokens_%": 100 * result["reference_free_tokens"],
                    "bytes_per_request": result["bytes_per_request"],
                    "audit_s": round(time.perf_counter() - start, 1),
                }
                rows.append(row)
                print(row, flush=True)
    columns = list(rows[0])
    print_table("STIP audit: what the honest-but-curious cloud recovers", rows, columns)
    path = write_results("stip_audit", {"machine": machine(), "texts": len(texts), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
