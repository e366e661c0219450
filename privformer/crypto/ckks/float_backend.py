"""``FloatBackend``: the ``CKKSBackend`` interface on plain float64 vectors, with CKKS's levels.

A "ciphertext" here is a float64 slot vector and a level. Every operation does what the CKKS
operation does to the slots (rotations are cyclic, products consume one level and refuse a
level-0 operand), with no noise and no encryption. It is the ``simulate`` executor of encrypted
circuits: the very circuit that runs on SEAL or OpenFHE runs here in milliseconds, so a circuit's
float result, its level use and its bootstrap count are those of the encrypted run (which
differs only by CKKS noise), and a twin cannot drift from the encrypted code.

``top`` is the level a fresh or bootstrapped vector has: 7 mirrors OpenFHE's default chain
(``openfhe_backend.DEFAULT_CHAIN``), so bootstraps are counted where a real backend would place
them. Bootstrapping goes through a ``Bootstrapper`` like any backend; the default one checks
the caller's stated bound (as ``SecretKeyRefresh`` does) and adds no error unless asked to.
Rotation keys are tracked like a real backend's, so a missing key fails here first.

It protects nothing: it is for accuracy studies, plans and tests.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privformer.crypto.ckks.backend import Ciphertext, CKKSBackend
from privformer.crypto.ckks.refresh import SecretKeyRefresh
from privformer.errors import CiphertextFormatError, InputError, LevelError


@dataclass(frozen=True)
class FloatParameters:
    """Slots and levels of a ``FloatBackend`` (the facts circuits read from a preset)."""

    slots: int
    levels: int

    @property
    def name(self) -> str:
        return f"float-{self.slots}-slots-{self.levels}-levels"


class _Slots:
    """A slot vector and its level (immutable by convention: operations make new ones)."""

    __slots__ = ("values", "level")

    def __init__(self, values: np.ndarray, level: int):
        self.values, self.level = values, level


class FloatBackend(CKKSBackend):
    """CKKS's slot semantics and level accounting in float64 (see the module docstring).

    ``bootstrap_error_bits``: each bootstrap adds uniform error of 2^-bits times the largest
    slot (None: exact), to study how an operator tolerates a real bootstrap's error.
    ``complex_packing``: two ciphertexts refreshed together share one bootstrap, as on
    ``OpenFHEBackend`` (so the counts are a real backend's), the second ``pair_level_loss``
    levels lower (0: OpenFHE's ``pair_level`` chain). ``sparse_periods``: bootstraps of
    ciphertexts promised to repeat with one of these periods count as sparse-slot ones
    (``sparse_bootstraps``), as on ``OpenFHEBackend`` with those keys.
    """

    def __init__(
        self,
        slots: int = 1 << 14,
        top: int = 7,
        bootstrap_error_bits: float | None = None,
        complex_packing: bool = True,
        pair_level_loss: int = 1,
        sparse_periods: Sequence[int] = (),
    ):
        if slots < 2 or slots & (slots - 1):
            raise InputError(f"slots must be a power of two >= 2, got {slots}")
        if top < 1:
            raise InputError(f"top must be at least one level, got {top}")
        self.preset = FloatParameters(slots, top)
        self.top = top
        self.context_id = secrets.token_hex(8)
        self.bootstrapper = SecretKeyRefresh(
            float("inf") if bootstrap_error_bits is None else bootstrap_error_bits,
            complex_packing=complex_packing,
            pair_level_loss=pair_level_loss,
            sparse_periods=sparse_periods,
        )
        self._rotation_keys: set[int] = set()
        self.operations = 0  # products and rotations done (a cost counter for plans and tests)

    def _slots(self, a: Ciphertext) -> _Slots:
        self._own(a)
        return a.handle

    def _new(self, values: np.ndarray, level: int, length: int) -> Ciphertext:
        return self._wrap(_Slots(values, level), length)

    # --- keys, encryption ------------------------------------------------------------------------
    def generate_rotation_keys(self, steps: Sequence[int]) -> None:
        self._rotation_keys |= {int(s) % self.slots for s in steps} - {0}

    @property
    def rotation_keys(self) -> frozenset[int]:
        return frozenset(self._rotation_keys)

    def encrypt(self, values: np.ndarray) -> Ciphertext:
        arr = self._encryptable(values)
        vec = np.zeros(self.slots)
        vec[: arr.size] = arr
        return self._new(vec, self.top, arr.size)

    def decrypt(self, ct: Ciphertext) -> np.ndarray:
        return self._slots(ct).values[: ct.length].copy()

    # --- arithmetic -------------------------------------------------------------------------------
    def _plain(self, values: np.ndarray | float) -> np.ndarray | float:
        arr = self._plain_values(values)
        if arr.size == 1 and np.ndim(values) == 0:
            return float(arr[0])
        vec = np.zeros(self.slots)
        vec[: arr.size] = arr
        return vec

    def _product_level(self, *cts: Ciphertext) -> int:
        level = min(self._slots(c).level for c in cts)
        if level < 1:
            raise LevelError(
                "multiply: ciphertext is at level 0; bootstrap it or use a deeper preset"
            )
        return level - 1

    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        x, y = self._slots(a), self._slots(b)
        return self._new(x.values + y.values, min(x.level, y.level), max(a.length, b.length))

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        x, y = self._slots(a), self._slots(b)
        return self._new(x.values - y.values, min(x.level, y.level), max(a.length, b.length))

    def add_plain(self, a: Ciphertext, values: np.ndarray | float) -> Ciphertext:
        x = self._slots(a)
        length = max(a.length, np.size(values))
        return self._new(x.values + self._plain(values), x.level, length)

    def multiply(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        level = self._product_level(a, b)
        self.operations += 1
        values = self._slots(a).values * self._slots(b).values
        return self._new(values, level, max(a.length, b.length))

    def multiply_plain(self, a: Ciphertext, values: np.ndarray | float) -> Ciphertext:
        level = self._product_level(a)
        self.operations += 1
        return self._new(self._slots(a).values * self._plain(values), level, a.length)

    def multiply_plain_sum(self, terms) -> Ciphertext:
        terms = list(terms)
        if not terms:
            raise InputError("multiply_plain_sum needs at least one term")
        level = self._product_level(*(ct for ct, _ in terms))
        self.operations += len(terms)
        total = sum(self._slots(ct).values * self._plain(v) for ct, v in terms)
        return self._new(np.asarray(total), level, max(ct.length for ct, _ in terms))

    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        step = self._rotation_step(a, steps)
        if step == 0:
            return a
        self.operations += 1
        x = self._slots(a)
        return self._new(np.roll(x.values, -step), x.level, self.slots)

    def levels_left(self, a: Ciphertext) -> int:
        return self._slots(a).level

    def drop_to(self, a: Ciphertext, level: int) -> Ciphertext:
        x = self._slots(a)
        return a if x.level <= level else self._new(x.values, level, a.length)

    # --- serialization (for transport tests; nothing is hidden) -------------------------------
    def serialize(self, a: Ciphertext) -> bytes:
        x = self._slots(a)
        return self._envelope(a, struct.pack("<q", x.level) + x.values.astype("<f8").tobytes())

    def deserialize(self, data: bytes, length: int | None = None) -> Ciphertext:
        body, stored = self._open_envelope(data)
        if len(body) != 8 + 8 * self.slots:
            raise CiphertextFormatError(f"expected {self.slots} slots, got {len(body) - 8} bytes")
        (level,) = struct.unpack("<q", body[:8])
        if not 0 <= level <= self.top:
            raise CiphertextFormatError(f"level {level} outside 0..{self.top}")
        values = np.frombuffer(body[8:], dtype="<f8").astype(np.float64)
        return self._new(values, level, stored if length is None else length)
