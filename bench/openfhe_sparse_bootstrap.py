"""OpenFHE: a full-slot bootstrap against sparse-slot bootstraps of the same ciphertext kind, in
one context with the default chain (COMPLEX, as the NEXUS server runs it).

A NEXUS ciphertext that holds one value per token, broadcast over the features (LayerNorm's
variance and 1/sqrt in the token-interleaved layout), has slot values that repeat with period
``tokens``. Such a slot vector is a sparse-packed plaintext of ``tokens`` slots, so OpenFHE's
sparse bootstrapping (``EvalBootstrapSetup`` / ``EvalBootstrapKeyGen`` for that slot count, and
``SetSlots`` on the ciphertext) refreshes it. This measures, one after the other on the same
keys: the full-slot bootstrap of a random vector, and the sparse bootstrap of a full-slot
ciphertext whose values repeat with each period in ``--periods``, with the error over all
32,768 slots, the levels left, setup time and the worker's peak memory.

    python bench/openfhe_sparse_bootstrap.py [--periods 16 32 4096] [--repeats 2]

Writes bench/results/openfhe_sparse_bootstrap.json, keeping the rows of periods not measured
this time from the previous results of the same chain.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_results  # noqa: E402

from privformer.crypto.ckks import openfhe_backend as ob  # noqa: E402

# Runs under the CPython 3.10 interpreter that has ``openfhe`` (the worker's), with the
# worker's own parameter code, so the context is the server's.
MEASURE = r"""
import json, random, resource, sys, time
sys.path.insert(0, sys.argv[1])
import openfhe as o
import openfhe_worker as ow

chain, periods, repeats = json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
depth_levels = 7
bd = ow._bootstrap_depth(o, chain)
depth = depth_levels + ow.HIDDEN_LEVELS + bd + chain["iterations"] - 1
cc = o.GenCryptoContext(ow._parameters(o, chain, depth))
for feature in ("PKE", "KEYSWITCH", "LEVELEDSHE", "ADVANCEDSHE", "FHE"):
    cc.Enable(getattr(o.PKESchemeFeature, feature))
full = cc.GetRingDimension() // 2
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # GB (kB units)
start = time.perf_counter()
for slots in [full] + periods:
    cc.EvalBootstrapSetup(list(chain["level_budget"]), [0, 0], slots)
keys = cc.KeyGen()
cc.EvalMultKeyGen(keys.secretKey)
cc.EvalBootstrapKeyGen(keys.secretKey, full)
memory_full_only = rss()
for slots in periods:
    cc.EvalBootstrapKeyGen(keys.secretKey, slots)
setup_s, memory_all = time.perf_counter() - start, rss()
spent = bd + chain["iterations"] - 1 + depth_levels  # every operator level used


def measure(period):
    rng = random.Random(period)
    base = [rng.uniform(-1, 1) for _ in range(period)]
    values = [base[i % period] for i in range(full)]
    ct = cc.Encrypt(keys.publicKey, cc.MakeCKKSPackedPlaintext(values, 1, spent, None, full))
    times = []
    for _ in range(repeats):
        x = cc.EvalAdd(ct, 0.0)
        if period < full:
            x.SetSlots(period)
        t = time.perf_counter()
        out = cc.EvalBootstrap(x, chain["iterations"], 11)
        times.append(time.perf_counter() - t)
    out.SetSlots(full)
    plain = cc.Decrypt(out, keys.secretKey)
    plain.SetLength(full)
    got = plain.GetRealPackedValue()
    err = max(abs(a - b) for a, b in zip(got, values))
    return {"period": period, "seconds": times, "max_error": err, "level_after": out.GetLevel()}


rows = [measure(p) for p in [full] + periods]
print(json.dumps({"rows": rows, "setup_s": setup_s, "peak_gb_full_keys_only": memory_full_only,
                  "peak_gb_all_keys": memory_all, "depth": depth}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--periods", type=int, nargs="+", default=[16, 32, 4096])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    chain = ob.chain_parameters()
    python = ob.setup_openfhe_venv()
    done = subprocess.run(
        [
            str(python),
            "-c",
            MEASURE,
            str(ob.WORKER.parent),
            json.dumps(chain),
            json.dumps(args.periods),
            str(args.repeats),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    full = result["rows"][0]
    for row in result["rows"]:
        row["median_s"] = sorted(row["seconds"])[len(row["seconds"]) // 2]
        row["vs_full"] = row["median_s"] / sorted(full["seconds"])[len(full["seconds"]) // 2]
        row["bits"] = -__import__("math").log2(row["max_error"])
    print_table(
        "OpenFHE bootstrap of a full-slot ciphertext, by the period its values repeat with "
        f"(default chain; setup {result['setup_s']:.0f} s, worker peak "
        f"{result['peak_gb_full_keys_only']:.1f} GB with the full-slot keys, "
        f"{result['peak_gb_all_keys']:.1f} GB with all)",
        result["rows"],
        ["period", "median_s", "vs_full", "bits", "level_after"],
    )
    # Periods not measured this time are kept from the previous results of the same chain (each
    # row dated, its vs_full against its own run's full-slot bootstrap), so periods can be
    # measured one run at a time on a machine whose memory holds only a few periods' keys.
    now = time.strftime("%Y-%m-%d %H:%M")
    for row in result["rows"]:
        row["measured_at"] = now
    path = RESULTS / "openfhe_sparse_bootstrap.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    if previous.get("chain") == chain:
        measured = {row["period"] for row in result["rows"]}
        result["rows"] += [r for r in previous["rows"] if r["period"] not in measured]
    record = {"benchmark": "openfhe_sparse_bootstrap", "machine": machine(), "chain": chain}
    path = write_results("openfhe_sparse_bootstrap", record | result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
