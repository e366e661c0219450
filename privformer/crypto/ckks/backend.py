"""The CKKS backend interface every encrypted circuit is written against, and the
``Bootstrapper`` interface a backend refreshes ciphertexts through.

Circuits only call these methods, so backends (SEAL, OpenFHE, a future GPU one) are
interchangeable. Operations are OpenFHE's (EvalAdd, EvalMult, EvalRotate, ...) in snake case,
with one deliberate difference: ``levels_left`` counts the rescalings a ciphertext still
allows, where OpenFHE's ``GetLevel`` counts those already spent. A ciphertext carries the id of
its context: combining ciphertexts of different contexts raises ``ContextMismatchError`` instead
of computing garbage.
"""

from __future__ import annotations

import hashlib
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from privformer.errors import (
    BootstrapUnavailableError,
    CiphertextFormatError,
    ContextMismatchError,
    CryptoError,
    InputError,
    LevelError,
)


class Ciphertext:
    """An opaque backend ciphertext plus the facts operators plan with."""

    __slots__ = ("context_id", "handle", "length")

    def __init__(self, context_id: str, handle: Any, length: int):
        self.context_id = context_id
        self.handle = handle
        self.length = length  # meaningful slots (decrypt returns these)

    def prefix(self, length: int) -> Ciphertext:
        """The same ciphertext, declaring only its first ``length`` slots meaningful."""
        return Ciphertext(self.context_id, self.handle, length)


_MAGIC = b"PFCT1"  # privformer ciphertext, envelope version 1
_HEAD = len(_MAGIC) + 8 + 8  # magic, context id (8 bytes), meaningful slot count


class ParameterSet(Protocol):
    """What circuits read from a backend's parameters (SEAL's ``Preset``, ``OpenFHEPreset``)."""

    @property
    def name(self) -> str: ...
    @property
    def slots(self) -> int: ...
    @property
    def levels(self) -> int: ...


class Bootstrapper(ABC):
    """Refreshes one backend's ciphertexts to its ``top`` level, and counts how often.

    ``refresh(backend, a, bound)`` gets the caller's promise that every slot of ``a`` lies in
    [-bound, bound] (see ``CKKSBackend.bootstrap``) and returns a ciphertext at ``backend.top``.

    ``complex_packing``: two real ciphertexts share one bootstrap, packed as a + i b (THOR,
    ePrint 2024/1881): ``refresh_pair`` refreshes both and counts one bootstrap; the second
    comes back ``pair_level_loss`` levels lower (unpacking it multiplies by -i, unless the
    chain keeps a level for that).
    """

    complex_packing = False
    pair_level_loss = 1

    def __init__(self, sparse_periods: Sequence[int] = ()) -> None:
        """``sparse_periods``: periods for which this bootstrapper has a sparse-slot bootstrap
        (a ciphertext whose slot i equals slot i mod p is a sparse-packed one of p slots)."""
        self.count = 0
        self.sparse_count = 0  # of ``count``, the sparse-slot bootstraps
        self.sparse_periods = frozenset(int(p) for p in sparse_periods)

    def __call__(
        self, backend: CKKSBackend, a: Ciphertext, bound: float, period: int | None = None
    ) -> Ciphertext:
        """``period``: the caller's promise that slot i of ``a`` equals slot i mod ``period``;
        a period this bootstrapper has sparse keys for gets the sparse bootstrap."""
        if period is not None:
            self.check_period(backend, a, period)
        sparse = period if period in self.sparse_periods else None
        out = self.refresh(backend, a, bound, sparse)
        self.count += 1
        self.sparse_count += sparse is not None
        return out

    def check_period(self, backend: CKKSBackend, a: Ciphertext, period: int) -> None:
        """Refuse a broken ``period`` promise where the values can be seen (test
        bootstrappers); a real bootstrap cannot see them."""
        return None

    def pair(
        self, backend: CKKSBackend, a: Ciphertext, b: Ciphertext, bound: float
    ) -> tuple[Ciphertext, Ciphertext]:
        """Both refreshed in one bootstrap (``refresh_pair``), counted once."""
        out = self.refresh_pair(backend, a, b, bound)
        self.count += 1
        return out

    @abstractmethod
    def refresh(
        self, backend: CKKSBackend, a: Ciphertext, bound: float, period: int | None = None
    ) -> Ciphertext:
        """``a`` at ``backend.top``; ``period`` (one of ``sparse_periods``, or None for a full
        bootstrap) as promised to ``__call__``."""

    def refresh_pair(
        self, backend: CKKSBackend, a: Ciphertext, b: Ciphertext, bound: float
    ) -> tuple[Ciphertext, Ciphertext]:
        """One bootstrap of a + i b, unpacked (bootstrappers with ``complex_packing``)."""
        raise NotImplementedError(f"{type(self).__name__} does not pack pairs")


class CKKSBackend(ABC):
    """Context, keys and the homomorphic operations on packed real vectors."""

    preset: ParameterSet
    context_id: str
    top: int  # levels of a fresh ciphertext, and of a bootstrapped one
    bootstrapper: Bootstrapper | None = None

    @property
    def slots(self) -> int:
        return self.preset.slots

    def _wrap(self, handle: Any, length: int) -> Ciphertext:
        return Ciphertext(self.context_id, handle, length)

    # --- checks every backend applies the same way -------------------------------------------
    def _plain_values(self, values: np.ndarray | float) -> np.ndarray:
        """Plaintext values as float64: finite, at most one per slot (one: a constant)."""
        arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if not np.isfinite(arr).all():
            raise CryptoError("cannot encode NaN or infinite values")
        if arr.size > self.slots:
            raise CryptoError(f"{arr.size} values exceed the {self.slots} slots")
        return arr

    def _encryptable(self, values: np.ndarray) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0 or arr.size > self.slots:
            raise CryptoError(f"can encrypt 1..{self.slots} values, got {arr.size}")
        return arr

    def _need_level(self, ct: Ciphertext, op: str) -> int:
        """The ciphertext's level, which a product needs to be at least 1."""
        level = self.levels_left(ct)
        if level < 1:
            raise LevelError(f"{op}: ciphertext is at level 0; bootstrap it or use a deeper preset")
        return level

    def _rotation_step(self, a: Ciphertext, steps: int) -> int:
        """``steps`` mod the slot count, checked to have a key (0: no rotation needed)."""
        self._own(a)
        step = int(steps) % self.slots
        if step and step not in self.rotation_keys:
            raise CryptoError(f"no rotation key for step {step}: call generate_rotation_keys first")
        return step

    def _own(self, *cts: Ciphertext) -> None:
        """Refuse ciphertexts of another context (they would decrypt to garbage)."""
        for ct in cts:
            if ct.context_id != self.context_id:
                raise ContextMismatchError(
                    f"ciphertext of context {ct.context_id} used with context {self.context_id}"
                )

    # --- keys ----------------------------------------------------------------------------------
    def export_keys(self, folder: Any, secret_path: Any) -> dict[str, int]:
        """Evaluation keys (and ``keys.json``) into ``folder``, the secret key to
        ``secret_path``: what ``crypto.ckks.keys.load_key_set`` reads. Per file, its bytes."""
        raise CryptoError(f"{type(self).__name__} cannot export its keys")

    @abstractmethod
    def generate_rotation_keys(self, steps: Sequence[int]) -> None:
        """Make keys for these rotation steps (only those: Galois keys are large)."""

    # --- encoding and encryption ---------------------------------------------------------------
    @abstractmethod
    def encrypt(self, values: np.ndarray) -> Ciphertext: ...

    @abstractmethod
    def decrypt(self, ct: Ciphertext) -> np.ndarray: ...

    # --- arithmetic (each result is rescaled and at the lower of its operands' levels) ---------
    @abstractmethod
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext: ...

    @abstractmethod
    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext: ...

    @abstractmethod
    def add_plain(self, a: Ciphertext, values: np.ndarray | float) -> Ciphertext: ...

    @abstractmethod
    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """Ciphertext x ciphertext, relinearised and rescaled (one level)."""

    @abstractmethod
    def multiply_plain(self, a: Ciphertext, values: np.ndarray | float) -> Ciphertext:
        """Ciphertext x plaintext vector or scalar, rescaled (one level)."""

    def multiply_plain_sum(
        self, terms: Sequence[tuple[Ciphertext, np.ndarray | float]]
    ) -> Ciphertext:
        """sum_i a_i * v_i (a linear combination with plaintext vectors), one level. Backends
        override it to rescale once for the whole sum instead of once per product."""
        total = None
        for ct, values in terms:
            term = self.multiply_plain(ct, values)
            total = term if total is None else self.add(total, term)
        if total is None:
            raise InputError("multiply_plain_sum needs at least one term")
        return total

    @abstractmethod
    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        """Cyclic left rotation of the slots by ``steps``."""

    def rotate_many(self, a: Ciphertext, steps: Sequence[int]) -> list[Ciphertext]:
        """Several rotations of one ciphertext (backends with hoisting override this)."""
        return [self.rotate(a, s) for s in steps]

    @property
    def rotation_keys(self) -> frozenset[int]:
        """The left-rotation steps (mod the slot count) that have keys."""
        return frozenset()

    @abstractmethod
    def levels_left(self, a: Ciphertext) -> int:
        """Levels left: how many more rescalings the ciphertext allows."""

    def drop_to(self, a: Ciphertext, level: int) -> Ciphertext:
        """``a`` brought down to ``level`` (no-op if already there or below). Rotations and
        products get cheaper with fewer primes, so callers drop to what they still need."""
        while self.levels_left(a) > level:
            a = self.multiply_plain(a, 1.0)
        return a

    def bootstrap(self, a: Ciphertext, bound: float = 1.0, period: int | None = None) -> Ciphertext:
        """Refresh a ciphertext to ``top`` levels through ``bootstrapper``; raises
        ``BootstrapUnavailableError`` where the backend has none.

        ``period``: the caller's promise that slot i equals slot i mod ``period`` (a value per
        token broadcast over the features of the token-interleaved layout repeats every
        ``tokens`` slots). A bootstrapper with sparse keys for that period refreshes it as a
        sparse-packed ciphertext of ``period`` slots, which is much faster.

        ``bound``: the caller's promise that every slot lies in [-bound, bound]. A real CKKS
        bootstrap only works on small encoded coefficients (docs/nexus.md), so a bootstrapper
        scales by 1 / bound where it must. An encrypted value cannot be checked, so the bound
        is the caller's to get right; the secret-key test bootstrapper checks it."""
        self._own(a)
        if self.bootstrapper is None:
            raise BootstrapUnavailableError(
                f"{type(self).__name__} has no bootstrapper: use OpenFHEBackend for real "
                "bootstrapping (SEAL has none), or SecretKeyRefresh in tests"
            )
        return self.bootstrapper(self, a, bound, period)

    @property
    def sparse_bootstraps(self) -> int:
        """Of ``bootstraps``, those run as sparse-slot bootstraps."""
        return self.bootstrapper.sparse_count if self.bootstrapper is not None else 0

    def bootstrap_many(
        self, cts: Sequence[Ciphertext], bound: float = 1.0, needed: int | None = None
    ) -> list[Ciphertext]:
        """Each of ``cts`` refreshed (every slot of each within ``bound``), two per bootstrap
        where the bootstrapper packs pairs into one complex ciphertext and every output keeps
        the ``needed`` levels (default ``top``): a pair's second half has one level fewer."""
        boot = self.bootstrapper
        needed = self.top if needed is None else needed
        if (
            len(cts) < 2
            or boot is None
            or not boot.complex_packing
            or needed > self.top - boot.pair_level_loss
        ):
            return [self.bootstrap(a, bound) for a in cts]
        self._own(*cts)
        out: list[Ciphertext] = []
        for i in range(0, len(cts) - 1, 2):
            out.extend(boot.pair(self, cts[i], cts[i + 1], bound))
        if len(cts) % 2:
            out.append(self.bootstrap(cts[-1], bound))
        return out

    @property
    def bootstraps(self) -> int:
        """Bootstraps this backend has run."""
        return self.bootstrapper.count if self.bootstrapper is not None else 0

    # --- serialization -------------------------------------------------------------------------
    # The envelope is the same for every backend: magic, context id, slot count, SHA-256 of all
    # that and the body, then the backend's own bytes. A corrupted or foreign ciphertext is
    # refused here by name, before the library parses (or silently mis-decrypts) it.
    def _envelope(self, a: Ciphertext, body: bytes) -> bytes:
        header = _MAGIC + bytes.fromhex(self.context_id) + struct.pack("<Q", a.length)
        return header + hashlib.sha256(header + body).digest() + body

    def _open_envelope(self, data: bytes) -> tuple[bytes, int]:
        """(the backend's bytes, the slot count), after checking format, digest and context."""
        if len(data) < _HEAD + 32 or not data.startswith(_MAGIC):
            raise CiphertextFormatError("not a privformer ciphertext (bad magic or too short)")
        context_id = data[len(_MAGIC) : len(_MAGIC) + 8].hex()
        (length,) = struct.unpack("<Q", data[len(_MAGIC) + 8 : _HEAD])
        digest, body = data[_HEAD : _HEAD + 32], data[_HEAD + 32 :]
        if hashlib.sha256(data[:_HEAD] + body).digest() != digest:
            raise CiphertextFormatError(
                "ciphertext checksum mismatch: corrupted in transit or storage"
            )
        if context_id != self.context_id:
            raise ContextMismatchError(
                f"ciphertext of context {context_id}, this is {self.context_id}"
            )
        return body, length

    @abstractmethod
    def serialize(self, a: Ciphertext) -> bytes: ...

    @abstractmethod
    def deserialize(self, data: bytes, length: int | None = None) -> Ciphertext: ...
