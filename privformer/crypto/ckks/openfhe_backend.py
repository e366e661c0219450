"""CKKS on OpenFHE (BSD-2) with real bootstrapping, through a Python 3.10 worker process.

OpenFHE's binding ships a module for CPython 3.10 (``openfhe==1.6.1.0.22.4``) and for 3.12 with a
newer libstdc++ than Debian 12 has; privformer runs on 3.11. So ``OpenFHEBackend`` starts
``openfhe_worker.py`` under a 3.10 interpreter that has ``openfhe`` installed and talks to it over
pipes; ciphertexts live in the worker and are handles here. ``setup_openfhe_venv`` makes that
interpreter from a local CPython 3.10 and PyPI.

Parameters: 128-bit security is enforced by OpenFHE itself (``HEStd_128_classic``; it raises
for a ring too small for the modulus), a uniform ternary secret key, FLEXIBLEAUTO scaling.
Fresh and bootstrapped ciphertexts both have ``levels`` levels for operators; one more level is
kept hidden to scale a bootstrap's input into [-1, 1] (``native_bootstrap``). The default uses
OpenFHE's ``SPARSE_ENCAPSULATED`` bootstrapping (Bossuat, Troncoso-Pastoriza, Hubaux, ePrint
2022/024): the key stays uniform ternary and is switched to a sparse secret only inside the
bootstrap, at a small modulus whose security rests on the lattice-estimator runs OpenFHE's
maintainers published (openfhe-development issue #1041). A plain sparse secret is refused.
docs/nexus.md gives the measured time, memory, levels and precision of each parameter set
(``bench/openfhe_bootstrap.py``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from privformer.crypto.ckks.backend import Bootstrapper, Ciphertext, CKKSBackend
from privformer.errors import CiphertextFormatError, CryptoError, UnknownNameError

OPENFHE_VERSION = "1.6.1.0.22.4"
# Largest slot magnitude bootstrapped without scaling. Measured at the default parameters
# (error after bootstrapping a constant vector): 1: 3.4e-7, 8: 0.041, 16: 0.39, 128: 128 (total
# failure), while uniform values in [-64, 64] kept 3.6e-7: the limit is on the encoding's
# coefficients, and a constant puts all of its weight in one. So inputs are scaled into
# [-1, 1] by a power of two on a hidden level and doubled back afterwards (error x the scale).
BOOTSTRAP_SAFE_BOUND = 1.0
WORKER = Path(__file__).with_name("openfhe_worker.py")


def default_venv() -> Path:
    cache = os.environ.get("PRIVFORMER_CACHE") or os.path.expanduser("~/.cache/privformer")
    return Path(cache) / "openfhe-py310"


def find_python310() -> str:
    """A CPython 3.10 interpreter: $PRIVFORMER_PYTHON310, python3.10 on PATH, or pyenv's."""
    candidates = [os.environ.get("PRIVFORMER_PYTHON310")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10.*/bin/python3.10")))
    candidates.append(shutil.which("python3.10"))
    for path in candidates:
        # pyenv's shims exist for every version but run only the enabled ones: skip them.
        if path and os.path.exists(path) and "/shims/" not in path:
            return path
    raise CryptoError(
        "OpenFHE needs a CPython 3.10 interpreter (its wheels have no 3.11 module): set "
        "PRIVFORMER_PYTHON310 or put python3.10 on PATH"
    )


def setup_openfhe_venv(venv: Path | None = None) -> Path:
    """Create (once) a 3.10 venv with ``openfhe`` from PyPI; returns its python."""
    venv = venv or default_venv()
    python = venv / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([find_python310(), "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"openfhe=={OPENFHE_VERSION}"], check=True
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise CryptoError(f"could not set up the OpenFHE venv in {venv}: {exc}") from exc
    return python


#: The default chain and bootstrap (docs/nexus.md: 7 operator levels, ~21 bits, ~21 s, 13 GB).
DEFAULT_CHAIN: dict[str, Any] = {
    "scale_bits": 50,
    "first_bits": 51,
    "level_budget": (3, 3),
    "ring_dim": None,  # the smallest ring OpenFHE's 128-bit check allows (2^16 here)
    "num_large_digits": 4,
    "bootstrap_iterations": 2,
    "secret": "SPARSE_ENCAPSULATED",
    # Slots per ciphertext: None fills the ring (2^15); fewer (a power of two) is sparse
    # packing, with its own bootstrapping keys, rotations cyclic over that many slots.
    "slots": None,
    # Two real ciphertexts per bootstrap as a + i b (a COMPLEX context; the second comes back
    # one level lower); full slots only, where bootstrapping keys include conjugation.
    "complex_packing": True,
    # One more level after each bootstrap so both halves of a pair keep ``levels``: at 7
    # levels it needs num_large_digits=6 and ~22 GB (docs/nexus.md), beyond a 24 GB machine.
    "pair_level": False,
    # Periods with sparse-slot bootstrapping keys: a full-slot ciphertext whose slot i equals
    # slot i mod p is a sparse-packed one of p slots, and bootstraps as such (much faster;
    # NEXUS's per-token values repeat every ``tokens`` slots). Each period adds its keys.
    "sparse_periods": (),
}


def _shift(bound: float) -> int:
    """k with bound / 2^k <= BOOTSTRAP_SAFE_BOUND: the bootstrap input's scaling."""
    return max(0, math.ceil(math.log2(max(bound, 1e-300) / BOOTSTRAP_SAFE_BOUND)))


def chain_parameters(**overrides: Any) -> dict[str, Any]:
    """``DEFAULT_CHAIN`` with ``overrides``, checked: what the worker builds a context from."""
    unknown = sorted(set(overrides) - set(DEFAULT_CHAIN))
    if unknown:
        raise UnknownNameError(
            f"unknown OpenFHE parameters {unknown}; known: {list(DEFAULT_CHAIN)}"
        )
    chain = {**DEFAULT_CHAIN, **overrides}
    if chain["secret"] not in ("UNIFORM_TERNARY", "SPARSE_ENCAPSULATED"):
        raise CryptoError(
            f"secret {chain['secret']!r}: use UNIFORM_TERNARY or SPARSE_ENCAPSULATED (a plain "
            "sparse secret's 128-bit security is not covered by the HE Standard)"
        )
    slots = chain["slots"]
    if slots is not None and (slots < 2 or slots & (slots - 1)):
        raise CryptoError(f"slots must be a power of two, got {slots}")
    if chain["pair_level"] and not chain["complex_packing"]:
        raise CryptoError("pair_level serves complex_packing: set both or neither")
    if slots is not None and chain["complex_packing"]:
        raise CryptoError("complex_packing needs full slots (slots=None): set one or the other")
    periods = sorted({int(p) for p in chain["sparse_periods"]})
    full = (chain["ring_dim"] or 1 << 16) // 2
    for p in periods:
        if p < 16 or p & (p - 1) or p >= full:
            raise CryptoError(
                f"sparse period {p}: a power of two from 16 to {full // 2} (below the slots)"
            )
    if periods and slots is not None:
        raise CryptoError("sparse_periods serve full-slot contexts (slots=None)")
    chain["sparse_periods"] = periods
    chain["level_budget"] = list(chain["level_budget"])
    chain["iterations"] = chain.pop("bootstrap_iterations")
    return chain


@dataclass(frozen=True)
class OpenFHEPreset:
    """The facts operators read from a preset (``levels``, ``slots``) plus OpenFHE's choices."""

    name: str
    ring_dim: int
    levels: int  # usable levels of a fresh or bootstrapped ciphertext
    scale_bits: int
    bootstrap_levels: int
    secret: str
    key_switch_digits: int
    bootstrap_iterations: int
    slots: int
    bootstrapping: bool = True


class _Handle:
    """A ciphertext's id in the worker; the worker frees it when no Ciphertext holds it
    (a ring-2^16 ciphertext at the top of the chain is ~27 MB)."""

    __slots__ = ("id", "__weakref__")

    def __init__(self, ident: int):
        self.id = ident


class OpenFHEBackend(CKKSBackend):
    """A CKKS context with keys and bootstrapping keys, in a worker process.

    Defaults (see the module docstring): ring 2^16, 50-bit primes, sparse-secret
    encapsulation, level budget [3, 3], Meta-BTS x2, 7 levels for operators after each
    bootstrap.
    """

    def __init__(
        self,
        levels: int = 7,
        bootstrap_precision: int = 11,
        python: str | Path | None = None,
        **chain: Any,
    ):
        """``levels`` for operators after each bootstrap; ``chain``: ``DEFAULT_CHAIN``'s keys
        (scale_bits, first_bits, level_budget, ring_dim, num_large_digits,
        bootstrap_iterations, secret). ``bootstrap_precision`` is one bootstrap's precision in
        bits, which Meta-BTS uses to scale its second pass (docs/nexus.md: ~11 at 50-bit
        primes, encapsulated). OpenFHE's bootstrapping needs first_bits - scale_bits <= its
        correction factor (8 here)."""
        params = chain_parameters(**chain)  # checked before a worker starts
        self._start_worker(python)
        info = self._call("setup", levels, params, bootstrap_precision)
        self._init_state(levels, bootstrap_precision, chain, params, info)

    def _init_state(
        self,
        levels: int,
        precision: int,
        overrides: dict[str, Any],
        params: dict[str, Any],
        info: dict[str, Any],
    ) -> None:
        self._precision, self._chain_overrides = precision, dict(overrides)
        self.preset = OpenFHEPreset(
            f"openfhe-{params['secret'].lower()}-{levels}",
            info["ring_dim"],
            levels,
            params["scale_bits"],
            info["boot"],
            params["secret"],
            params["num_large_digits"],
            params["iterations"],
            info["slots"],
        )
        # One id per key pair, the same in the client's and the server's process: ciphertexts
        # travel between them, and the envelope refuses those of other keys.
        self.context_id = hashlib.sha256(str(info["key_tag"]).encode()).digest()[:8].hex()
        self.top = levels
        self.bootstrapper: Bootstrapper | None = OpenFHEBootstrapper(
            params["complex_packing"], 0 if params["pair_level"] else 1, params["sparse_periods"]
        )
        self._rotation_keys: set[int] = set()

    # --- keys across processes --------------------------------------------------------------
    def export_keys(self, folder: str | Path, secret_path: str | Path) -> dict[str, int]:
        """Write the evaluation keys (context, public, relinearisation, rotation and bootstrap
        keys: what a server needs) into ``folder`` and the secret key to ``secret_path`` (the
        client's alone); returns each key file's size in bytes."""
        folder, secret_path = Path(folder), Path(secret_path)
        sizes = self._call("export_keys", str(folder), str(secret_path))
        manifest = {
            "backend": "openfhe",
            "levels": self.top,
            "bootstrap_precision": self._precision,
            "chain": self._chain_overrides,
            "rotation_keys": sorted(self._rotation_keys),
            "key_bytes": sizes,
        }
        (folder / "keys.json").write_text(json.dumps(manifest, indent=1))
        return sizes

    @classmethod
    def from_keys(
        cls,
        folder: str | Path,
        secret_path: str | Path | None = None,
        python: str | Path | None = None,
    ) -> OpenFHEBackend:
        """A backend from ``export_keys``' folder. Without ``secret_path``: the server's, which
        evaluates and bootstraps but cannot decrypt. With it: the client's, which encrypts and
        decrypts only (it loads no evaluation keys, so it stays small)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "keys.json").read_text())
            levels, precision = int(manifest["levels"]), int(manifest["bootstrap_precision"])
            overrides = dict(manifest["chain"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CryptoError(f"{folder} holds no OpenFHE key set (keys.json): {exc}") from exc
        params = chain_parameters(**overrides)
        backend = cls.__new__(cls)
        backend._start_worker(python)
        info = backend._call(
            "load_keys", str(folder), levels, params, precision, str(secret_path or "")
        )
        backend._init_state(levels, precision, overrides, params, info)
        if secret_path is None:
            backend._rotation_keys = {int(s) for s in manifest.get("rotation_keys", [])}
        else:
            backend.bootstrapper = None  # the client has no evaluation keys
        return backend

    def _start_worker(self, python: str | Path | None) -> None:
        python = python or os.environ.get("PRIVFORMER_OPENFHE_PYTHON") or setup_openfhe_venv()
        self._proc = subprocess.Popen(
            [str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._dead: list[int] = []  # worker ids whose last Ciphertext is gone

    @classmethod
    def max_levels(cls, python: str | Path | None = None, **chain: Any) -> int:
        """The most operator levels (``levels``) a chain admits at 128 bits on its ring (keyword
        arguments as ``chain_parameters``'; the ring defaults to 2^16, since OpenFHE would
        otherwise grow it): OpenFHE's own check, contexts only (no keys), so seconds."""
        probe = cls.__new__(cls)
        probe._start_worker(python)
        try:
            return int(
                probe._call("max_levels", chain_parameters(**{"ring_dim": 1 << 16, **chain}))
            )
        finally:
            probe.close()

    def live_ciphertexts(self) -> int:
        """Ciphertexts the worker holds (freed ones are released with the next call)."""
        return self._call("live")

    def _wrap(self, handle: Any, length: int) -> Ciphertext:
        h = _Handle(handle)
        weakref.finalize(h, self._dead.append, handle)
        return super()._wrap(h, length)

    # --- worker protocol -----------------------------------------------------------------
    def _call(self, method: str, *args):
        if self._dead and method != "free":
            dead, self._dead[:] = list(self._dead), []
            self._call("free", dead)
        body = pickle.dumps((method, args))
        stdin, stdout = self._pipes()
        try:
            stdin.write(struct.pack("<Q", len(body)) + body)
            stdin.flush()
            head = stdout.read(8)
            (size,) = struct.unpack("<Q", head)
            status, result = pickle.loads(stdout.read(size))
        except (BrokenPipeError, struct.error) as exc:
            raise CryptoError(f"the OpenFHE worker died during {method}") from exc
        if status != "ok":
            raise CryptoError(f"OpenFHE {method}: {result}")
        return result

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._proc.stdin is None or self._proc.stdout is None:  # Popen was given PIPEs
            raise CryptoError("the OpenFHE worker has no pipes")
        return self._proc.stdin, self._proc.stdout

    def close(self) -> None:
        if self._proc.poll() is None:
            self._pipes()[0].close()
            self._proc.wait(timeout=30)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing to report to
            self.close()

    def _vector(self, values) -> tuple[float | None, bytes | None]:
        arr = self._plain_values(values)
        if arr.size == 1:
            return float(arr[0]), None
        vec = np.zeros(self.slots)
        vec[: arr.size] = arr
        return None, vec.tobytes()

    # --- keys, encoding, encryption ------------------------------------------------------
    @property
    def rotation_keys(self) -> frozenset[int]:
        return frozenset(self._rotation_keys)

    def generate_rotation_keys(self, steps: Sequence[int]) -> None:
        wanted = {int(s) % self.slots for s in steps} - {0} - self._rotation_keys
        if wanted:
            self._call("rotation_keygen", sorted(wanted))
            self._rotation_keys |= wanted

    def encrypt(self, values: np.ndarray) -> Ciphertext:
        arr = self._encryptable(values)
        _, data = self._vector(np.concatenate([arr, np.zeros(self.slots - arr.size)]))
        return self._wrap(self._call("encrypt", data), arr.size)

    def decrypt(self, ct: Ciphertext) -> np.ndarray:
        self._own(ct)
        return np.frombuffer(self._call("decrypt", ct.handle.id, self.slots))[: ct.length].copy()

    # --- arithmetic ----------------------------------------------------------------------
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        self._own(a, b)
        return self._wrap(self._call("add", a.handle.id, b.handle.id), max(a.length, b.length))

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        self._own(a, b)
        return self._wrap(self._call("sub", a.handle.id, b.handle.id), max(a.length, b.length))

    def add_plain(self, a: Ciphertext, values) -> Ciphertext:
        self._own(a)
        scalar, data = self._vector(values)
        length = max(a.length, np.size(values))
        return self._wrap(self._call("add_plain", a.handle.id, scalar, data), length)

    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        self._own(a, b)
        self._need_level(a, "multiply")
        self._need_level(b, "multiply")
        return self._wrap(self._call("multiply", a.handle.id, b.handle.id), max(a.length, b.length))

    def multiply_plain(self, a: Ciphertext, values) -> Ciphertext:
        self._own(a)
        self._need_level(a, "multiply_plain")
        scalar, data = self._vector(values)
        return self._wrap(self._call("multiply_plain", a.handle.id, scalar, data), a.length)

    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        step = self._rotation_step(a, steps)
        if step == 0:
            return a
        return self._wrap(self._call("rotate", a.handle.id, step), self.slots)

    def rotate_many(self, a: Ciphertext, steps: Sequence[int]) -> list[Ciphertext]:
        reduced = [self._rotation_step(a, s) for s in steps]
        moved = [s for s in reduced if s]
        ids = iter(self._call("rotate_many", a.handle.id, moved) if moved else [])
        return [self._wrap(next(ids), self.slots) if s else a for s in reduced]

    def levels_left(self, a: Ciphertext) -> int:
        self._own(a)
        return self._call("level", a.handle.id)

    def native_bootstrap(
        self, a: Ciphertext, bound: float, period: int | None = None
    ) -> Ciphertext:
        """OpenFHE's EvalBootstrap, inputs scaled into [-1, 1] by 2^-shift on the hidden level;
        with ``period`` (one of the chain's ``sparse_periods``), the sparse-slot bootstrap."""
        self._own(a)
        handle = self._call("bootstrap", a.handle.id, _shift(bound), int(period or 0))
        return self._wrap(handle, a.length)

    def native_bootstrap_pair(
        self, a: Ciphertext, b: Ciphertext, bound: float
    ) -> tuple[Ciphertext, Ciphertext]:
        """One EvalBootstrap of a + i b (slots within ``bound``), unpacked into both."""
        self._own(a, b)
        real, imag = self._call("bootstrap_pair", a.handle.id, b.handle.id, _shift(bound))
        return self._wrap(real, a.length), self._wrap(imag, b.length)

    def serialize(self, a: Ciphertext) -> bytes:
        self._own(a)
        return self._envelope(a, self._call("serialize", a.handle.id))

    def deserialize(self, data: bytes, length: int | None = None) -> Ciphertext:
        body, stored_length = self._open_envelope(data)
        try:
            handle = self._call("deserialize", body)
        except CryptoError as exc:
            raise CiphertextFormatError(f"OpenFHE rejected the ciphertext: {exc}") from exc
        return self._wrap(handle, stored_length if length is None else length)


if __name__ == "__main__":  # python -m privformer.crypto.ckks.openfhe_backend: make the venv
    print(setup_openfhe_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else None))


class OpenFHEBootstrapper(Bootstrapper):
    """The real CKKS bootstrap of an ``OpenFHEBackend`` (its default bootstrapper); with
    ``complex_packing``, two ciphertexts refreshed together share one bootstrap."""

    def __init__(
        self,
        complex_packing: bool = False,
        pair_level_loss: int = 1,
        sparse_periods: Sequence[int] = (),
    ) -> None:
        super().__init__(sparse_periods)
        self.complex_packing, self.pair_level_loss = complex_packing, pair_level_loss

    @staticmethod
    def _backend(backend: CKKSBackend) -> OpenFHEBackend:
        if not isinstance(backend, OpenFHEBackend):
            raise CryptoError("OpenFHEBootstrapper refreshes OpenFHEBackend ciphertexts only")
        return backend

    def refresh(
        self, backend: CKKSBackend, a: Ciphertext, bound: float, period: int | None = None
    ) -> Ciphertext:
        return self._backend(backend).native_bootstrap(a, bound, period)

    def refresh_pair(
        self, backend: CKKSBackend, a: Ciphertext, b: Ciphertext, bound: float
    ) -> tuple[Ciphertext, Ciphertext]:
        return self._backend(backend).native_bootstrap_pair(a, b, bound)
