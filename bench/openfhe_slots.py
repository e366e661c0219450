"""OpenFHE bootstrap time with all 32,768 slots against sparse packing's 16,384 (the NEXUS layout
of 128 tokens uses 128^2 = 16,384 slots), at the default chain; the same machine, one after the
other.

    python bench/openfhe_slots.py
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_results  # noqa: E402

from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend  # noqa: E402

REPEATS = 3


def main() -> None:
    rows = []
    for slots in (None, 1 << 14):
        start = time.perf_counter()
        backend = OpenFHEBackend(slots=slots, complex_packing=False)
        setup = time.perf_counter() - start
        x = np.random.default_rng(0).uniform(-1, 1, backend.slots)
        spent = backend.drop_to(backend.encrypt(x), 0)
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fresh = backend.bootstrap(spent, 1.0)
            times.append(time.perf_counter() - start)
        err = float(np.abs(backend.decrypt(fresh) - x).max())
        rows.append(
            {
                "slots": backend.slots,
                "setup_s": setup,
                "bootstrap_s_median": float(np.median(times)),
                "bootstrap_s": times,
                "levels_after": backend.levels_left(fresh),
                "bits": -float(np.log2(err)),
            }
        )
        backend.close()
        del backend
        gc.collect()
    print_table(
        "OpenFHE bootstrap, full vs sparse slots (default chain)",
        rows,
        ["slots", "setup_s", "bootstrap_s_median", "levels_after", "bits"],
    )
    path = write_results(
        "openfhe_slots", {"benchmark": "openfhe_slots", "machine": machine(), "rows": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
