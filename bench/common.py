"""Shared benchmark helpers: machine facts, timing, and writing a table plus JSON results."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """CPU model, core count, torch version and threads: numbers are only comparable with these."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def interleaved_ms(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, float]:
    """Median ms of each function, run alternately so drift and noise hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        if value and abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def simulate_outputs(model, texts: list[str], classes: int) -> tuple[np.ndarray, int]:
    """(texts x classes) simulate-mode outputs of a ``pf.load``-ed model, one text at a time;
    a text whose input leaves an approximation's range (``OutOfRangeError``) gets a row of NaN
    and is counted, never hidden. Returns the outputs and that count."""
    from privformer.errors import OutOfRangeError

    outputs, failed = [], 0
    for i, text in enumerate(texts):
        if i and i % 200 == 0:
            print(f"  simulate {i}/{len(texts)}", flush=True)
        try:
            outputs.append(model.predict([text], mode="simulate").outputs.numpy()[0])
        except OutOfRangeError:
            outputs.append(np.full(classes, np.nan))
            failed += 1
    return np.array(outputs), failed


def encrypted_results_name(model: str) -> str:
    """The results file (under RESULTS, without .json) of ``model``'s encrypted NEXUS queries:
    bench/nexus_encrypted.py writes it, bench/nexus_e2e.py reads it."""
    return f"nexus_encrypted_{model}"


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary folder, removed when the script exits (keys and key registries run to
    gigabytes, and a run stopped half-way must not leave them filling the disk)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path
