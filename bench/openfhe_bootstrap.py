"""OpenFHE bootstrapping at 128-bit security: precision, time and memory per parameter set.

Every set uses OpenFHE's HEStd_128_classic check (which fixes ring 2^16 here), a uniform ternary
secret key and level budget [3, 3]. They differ in the bootstrap's secret (uniform: a 20-level
bootstrap; sparse-secret encapsulation: 16, see ``openfhe_backend``), the scaling prime, the
key-switching digits (which decide whether the chain fits ring 2^16 at all) and Meta-BTS
iterations. For each: setup (context, keys, bootstrapping keys), the worker's peak memory, and
bootstraps of ciphertexts spent to level 0 holding uniform values in [-B, B], with their max
error. The chosen default also runs encrypted SGN (g = 3, f = 2; 4 bootstraps) against its twin.

    python bench/openfhe_bootstrap.py   # a table, and bench/results/openfhe_bootstrap.json

Needs a CPython 3.10 (see README, "OpenFHE backend") and ~17 GB; each set runs in its own
process so peak memory is its own. Threads: OpenFHE's OpenMP uses every core (2 here).
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer import approx
from privformer.crypto.ckks import circuits as he_ops  # noqa: E402
from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend  # noqa: E402

BOUNDS = (1.0, 32.0, 256.0)
UNIFORM = "UNIFORM_TERNARY"
SETS = [  # name, OpenFHEBackend keyword arguments (levels: the operators', one more is hidden)
    (
        "uniform, 50-bit, 1 pass",
        dict(
            secret=UNIFORM,
            levels=2,
            scale_bits=50,
            first_bits=55,
            num_large_digits=3,
            bootstrap_iterations=1,
        ),
    ),
    (
        "uniform, 56-bit, 1 pass",
        dict(
            secret=UNIFORM,
            levels=2,
            scale_bits=56,
            first_bits=60,
            num_large_digits=5,
            bootstrap_iterations=1,
        ),
    ),
    (
        "uniform, 55-bit, Meta-BTS x2",
        dict(
            secret=UNIFORM,
            levels=3,
            scale_bits=55,
            first_bits=60,
            num_large_digits=7,
            bootstrap_precision=10,
        ),
    ),
    ("encapsulated, 50-bit, 1 pass", dict(levels=8, bootstrap_iterations=1)),
    ("encapsulated, 50-bit, Meta-BTS x2 (default)", dict()),
]


def measure(name: str, kwargs: dict, with_sgn: bool) -> dict:
    start = time.perf_counter()
    backend = OpenFHEBackend(**kwargs)
    row = {"set": name, "setup_s": time.perf_counter() - start, **backend_facts(backend)}
    rng = np.random.default_rng(0)
    for bound in BOUNDS:
        x = rng.uniform(-bound, bound, backend.slots)
        spent = backend.drop_to(backend.encrypt(x), 0)
        start = time.perf_counter()
        fresh = backend.bootstrap(spent)
        row["bootstrap_s"] = time.perf_counter() - start
        err = float(np.abs(backend.decrypt(fresh) - x).max())
        row[f"err_B{bound:g}"] = err
        row[f"bits_B{bound:g}"] = float(-np.log2(err / bound))
        row["levels_after"] = backend.levels_left(fresh)
    if with_sgn:
        x = rng.uniform(5e-3, 1.0, backend.slots) * rng.choice([-1.0, 1.0], backend.slots)
        start = time.perf_counter()
        out = backend.decrypt(he_ops.sgn(backend, backend.encrypt(x), g=3, f=2))
        row["sgn_s"] = time.perf_counter() - start
        row["sgn_err_vs_twin"] = float(np.abs(out - approx.sign.sgn(x, 3, 2)).max())
    backend.close()
    row["worker_peak_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    return row


def backend_facts(backend: OpenFHEBackend) -> dict:
    p = backend.preset
    return {
        "ring_dim": p.ring_dim,
        "secret": p.secret,
        "scale_bits": p.scale_bits,
        "digits": p.key_switch_digits,
        "iterations": p.bootstrap_iterations,
        "boot_levels": p.bootstrap_levels,
    }


def main() -> None:
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for i, (name, kwargs) in enumerate(SETS):
        with ctx.Pool(1) as pool:  # a fresh process per set: its own peak memory
            row = pool.apply(measure, (name, kwargs, i == len(SETS) - 1))
        print(f"{name:32s} setup {row['setup_s']:6.1f} s  bootstrap {row['bootstrap_s']:6.1f} s")
        rows.append(row)
    columns = ["set", "scale_bits", "digits", "boot_levels", "setup_s", "bootstrap_s"]
    columns += [f"bits_B{b:g}" for b in BOUNDS] + ["levels_after", "worker_peak_gb"]
    columns += ["sgn_s", "sgn_err_vs_twin"]
    print_table("OpenFHE CKKS bootstrapping, 128-bit (HEStd_128_classic)", rows, columns)
    path = write_results(
        "openfhe_bootstrap", {"benchmark": "openfhe_bootstrap", "machine": machine(), "rows": rows}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
