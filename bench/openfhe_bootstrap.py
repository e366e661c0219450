"""OpenFHE bootstrapping at 128-bit security: precision, time and memory per parameter set.

Every set uses OpenFHE's HEStd_128_classic check (which fixes ring 2^16 here), a uniform ternary
secret key and level budget [3, 3]. They differ in the bootstrap's secret (uniform: a 20-level
bootstrap; sparse-secret encapsulation: 16, see ``openfhe_backend``), the scaling prime, the
key-switching digits (which decide whether the chain fits ring 2^16 at all) and Meta-BTS
iterations. For each: setup (context, keys, bootstrapping keys), the worker's peak memory, and
bootstraps of ciphertexts spent to level 0 holding uniform values in [-B, B], with their max
error. The chosen default also runs encrypted SGN (g = 3, f = 2; 4 bootstraps) against its twin.

    python bench/openfhe_bootstrap.py                 # every set below: a table and the JSON
    python bench/openfhe_bootstrap.py --grid          # the levels each grid point admits (fast)
    python bench/openfhe_bootstrap.py --sets NAME ... # re-measure these sets, keep the others

The grid (scaling and first prime, key-switching digits, level budget, one pass or Meta-BTS x2,
all on ring 2^16 with sparse-secret encapsulation) is probed with contexts only (no keys), so
it records the usable levels of every point in about a minute; the sets picked from it are
then measured in full.

Needs a CPython 3.10 (see README, "OpenFHE backend") and ~17 GB; each set runs in its own
process so peak memory is its own. Threads: OpenFHE's OpenMP uses every core (2 here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_results  # noqa: E402

import privformer  # noqa: E402,F401
from privformer import approx
from privformer.crypto.ckks import circuits as he_ops  # noqa: E402
from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend  # noqa: E402

BOUNDS = (1.0, 32.0, 256.0)
DEFAULT_SET = "encapsulated, 50-bit, Meta-BTS x2 (default)"
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
    # from the grid (issue 9): the most levels at 4 and 6 digits for 2^40 .. 2^45 primes
    ("encapsulated, 45-bit, 4 digits, Meta-BTS x2", dict(scale_bits=45, first_bits=51)),
    ("encapsulated, 42-bit, 4 digits, Meta-BTS x2", dict(scale_bits=42, first_bits=50)),
    (
        "encapsulated, 42-bit, 6 digits, Meta-BTS x2",
        dict(scale_bits=42, first_bits=50, num_large_digits=6),
    ),
    (
        "encapsulated, 40-bit, 6 digits, Meta-BTS x2",
        dict(scale_bits=40, first_bits=48, num_large_digits=6),
    ),
    (
        "encapsulated, 42-bit, 4 digits, 1 pass",
        dict(scale_bits=42, first_bits=50, bootstrap_iterations=1),
    ),
]
GRID_PRIMES = [(50, 51), (45, 51), (42, 50), (40, 48)]  # (scaling, first) bits
GRID_DIGITS = [4, 6, 8]
GRID_BUDGETS = [(3, 3), (4, 4)]
GRID_ITERATIONS = [1, 2]
PROBE_KEYS = (
    "scale_bits",
    "first_bits",
    "num_large_digits",
    "level_budget",
    "bootstrap_iterations",
)


def grid() -> list[dict]:
    """Usable operator levels at every grid point (OpenFHE's 128-bit check on ring 2^16)."""
    rows = []
    for (scale, first), digits, budget, iters in itertools.product(
        GRID_PRIMES, GRID_DIGITS, GRID_BUDGETS, GRID_ITERATIONS
    ):
        kwargs = dict(
            scale_bits=scale,
            first_bits=first,
            num_large_digits=digits,
            level_budget=budget,
            bootstrap_iterations=iters,
        )
        levels = OpenFHEBackend.max_levels(**kwargs)
        rows.append({**kwargs, "level_budget": list(budget), "levels": levels})
        print(f"2^{scale}/2^{first} digits {digits} budget {budget} x{iters}: {levels} levels")
    return rows


def measure(name: str, kwargs: dict, with_sgn: bool) -> dict:
    if "levels" not in kwargs:  # the most the chain admits at 128 bits
        probe = {k: v for k, v in kwargs.items() if k in PROBE_KEYS}
        kwargs = {**kwargs, "levels": OpenFHEBackend.max_levels(**probe)}
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", action="store_true", help="probe the grid's usable levels only")
    ap.add_argument("--sets", nargs="+", help="measure only these sets (keep the others' rows)")
    args = ap.parse_args()
    previous = RESULTS / "openfhe_bootstrap.json"
    old = json.loads(previous.read_text()) if previous.is_file() else {}
    if args.grid:
        payload = {**old, "grid": grid(), "machine": machine()}
        print(f"\nwrote {write_results('openfhe_bootstrap', payload)}")
        return
    names = [name for name, _ in SETS]
    chosen = args.sets or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"unknown sets {unknown}; known: {names}")
    kept = {row["set"]: row for row in old.get("rows", []) if row["set"] not in chosen}
    ctx = multiprocessing.get_context("spawn")
    for name, kwargs in SETS:
        if name not in chosen:
            continue
        with ctx.Pool(1) as pool:  # a fresh process per set: its own peak memory
            try:
                row = pool.apply(measure, (name, kwargs, name == DEFAULT_SET))
            except Exception as exc:  # e.g. out of memory: recorded, not hidden
                row = {"set": name, "error": f"{type(exc).__name__}: {exc}"}
        print(f"{name:44s} {row.get('bootstrap_s', row.get('error'))}")
        kept[name] = row
    rows = [kept[name] for name in names if name in kept]
    columns = ["set", "scale_bits", "digits", "boot_levels", "levels_after", "setup_s"]
    columns += ["bootstrap_s"] + [f"bits_B{b:g}" for b in BOUNDS] + ["worker_peak_gb", "error"]
    print_table("OpenFHE CKKS bootstrapping, 128-bit (HEStd_128_classic)", rows, columns)
    payload = {**old, "benchmark": "openfhe_bootstrap", "machine": machine(), "rows": rows}
    print(f"\nwrote {write_results('openfhe_bootstrap', payload)}")


if __name__ == "__main__":
    main()
