"""Render bench/results/*.json as PNG charts under docs/img/ (README shows them).

    pip install -e '.[bench]' && python bench/report.py

Rerun after any bench changes its JSON. Each chart reads one results file and says in its title
which; a missing file is reported and skipped, never invented.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMG = ROOT / "docs" / "img"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        print(f"skipped: {path} is missing (run bench/{name}.py)")
        return None
    return json.loads(path.read_text())


def _save(fig: plt.Figure, name: str) -> None:
    fig.tight_layout()
    path = IMG / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


def stip_ratios() -> None:
    data = _load("stip")
    if data is None:
        return
    rows = data["rows"]
    labels = [f"{r['model']} {r['scheme']}" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(labels, [r["cloud_ratio"] for r in rows], color="#4878a8")
    ax.axhline(1.05, color="#c44e52", linestyle="--", label="target 1.05")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylim(0.9, 1.1)
    ax.set_ylabel("permuted / plain cloud time")
    ax.set_title("STIP: cloud time ratio (bench/results/stip.json)")
    ax.legend(loc="upper right")
    _save(fig, "stip_cloud_ratio.png")


def cipherprune_tokens_and_speedups() -> None:
    data = _load("cipherprune")
    if data is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in data["runs"]:
        if run.get("model", "").startswith("MiniLM") and run["config"] != "unpruned":
            left.plot(
                run["tokens_per_layer"], marker="o", label=f"{run['config']} @ {run['tokens']}"
            )
    left.set_xlabel("layer (input of)")
    left.set_ylabel("tokens entering")
    left.set_yscale("log", base=2)
    left.set_title("CipherPrune, MiniLM: tokens entering each layer (6: the head)")
    left.legend(fontsize=7)
    speedups = data["speedups"]
    names = list(speedups)
    x = range(len(names))
    width = 0.38
    right.bar([i - width / 2 for i in x], [speedups[n]["LAN"] for n in names], width, label="LAN")
    right.bar([i + width / 2 for i in x], [speedups[n]["WAN"] for n in names], width, label="WAN")
    for paper_key, label, color in (
        ("speedup_128", "paper @128", "#c44e52"),
        ("speedup_512", "paper @512", "#8172b2"),
    ):
        right.axhline(data["paper"][paper_key], linestyle="--", color=color, label=label)
    right.set_xticks(
        list(x),
        [n.replace(" (fine-tuned)", "") for n in names],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    right.set_ylabel("speedup over padded unpruned\n(analytic network model)")
    right.set_title("CipherPrune speedups (bench/results/cipherprune.json)")
    right.legend(fontsize=7)
    _save(fig, "cipherprune.png")


def nexus_operators() -> None:
    layer, real = _load("nexus_layer"), _load("nexus_openfhe")
    if layer is None and real is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if layer is not None:
        stages = layer["stages"]
        axes[0].barh([s["stage"] for s in stages], [s["seconds"] for s in stages], color="#55a868")
        axes[0].invert_yaxis()
        axes[0].set_xlabel("seconds (CKKS work, bootstraps simulated)")
        summary = layer["summary"]
        axes[0].set_title(
            f"NEXUS MiniLM layer: {summary['bootstraps']} bootstraps (nexus_layer.json)",
            fontsize=9,
        )
    if real is not None:
        rows = real["rows"]
        x = range(len(rows))
        width = 0.38
        ours = [r.get("bert_base_layer_s") or r["seconds"] for r in rows]
        paper = [r.get("paper_s") or 0.0 for r in rows]
        axes[1].bar([i - width / 2 for i in x], ours, width, color="#8172b2", label="privformer")
        axes[1].bar([i + width / 2 for i in x], paper, width, color="#ccb974", label="NEXUS paper")
        for i, r in enumerate(rows):
            axes[1].text(
                i - width / 2,
                ours[i],
                f"{r['bootstraps']} BTS/unit",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        axes[1].set_xticks(list(x), [r["operator"] for r in rows])
        axes[1].set_yscale("log")
        axes[1].set_ylabel("seconds per BERT-base layer (2 cores)")
        axes[1].set_title("NEXUS operators, real bootstrapping (nexus_openfhe.json)", fontsize=9)
        axes[1].legend()
    _save(fig, "nexus_operators.png")


def openfhe_bootstrap_tradeoff() -> None:
    data = _load("openfhe_bootstrap")
    if data is None:
        return
    rows = [
        r for r in data.get("rows", []) if "error" not in r and r["secret"] != "UNIFORM_TERNARY"
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        ax.scatter(r["levels_after"], r["bits_B1"], s=20 + 2 * r["bootstrap_s"], alpha=0.6)
        ax.annotate(
            f"2^{r['scale_bits']}, {r['digits']}d, x{r['iterations']}: {r['bootstrap_s']:.0f} s",
            (r["levels_after"], r["bits_B1"]),
            fontsize=7,
        )
    ax.set_xlim(6, 18)
    ax.axhline(18, color="#c44e52", linestyle="--", linewidth=0.8, label="target 18 bits")
    ax.axvline(12, color="#8172b2", linestyle="--", linewidth=0.8, label="target 12 levels")
    ax.set_xlabel("operator levels after a bootstrap")
    ax.set_ylabel("bits kept on [-1, 1]")
    ax.set_title("OpenFHE bootstrapping, ring 2^16, 128-bit (openfhe_bootstrap.json)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, "openfhe_bootstrap.png")


def main() -> int:
    IMG.mkdir(parents=True, exist_ok=True)
    stip_ratios()
    cipherprune_tokens_and_speedups()
    nexus_operators()
    openfhe_bootstrap_tradeoff()
    return 0


if __name__ == "__main__":
    sys.exit(main())
