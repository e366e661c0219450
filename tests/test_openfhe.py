"""The OpenFHE backend (worker process under CPython 3.10), run with ``pytest -m openfhe``.

It needs a CPython 3.10 interpreter (this image's pyenv has 3.10.13); the first run creates a
venv with ``openfhe`` from PyPI under the cache folder. One context (ring 2^16, 128-bit, 8
levels after bootstrapping, sparse-secret-encapsulated Meta-BTS keys) takes about 25 s and
13 GB, and each bootstrap about 25 s on 2 cores: the module runs in about 3 minutes.

Tolerances: at 50-bit scaling a fresh value errs by ~1e-9 and a product or rotation by ~3e-8,
so arithmetic is held to 1e-6. Two-pass bootstrapping keeps about 21 bits: measured 3.5e-7 ..
4.1e-7 on slots in [-1, 1] and [-32, 32] (bound 4e-6; 2^-20 = 9.5e-7 is the precision
DecryptRefreshBackend models). At [-256, 256] one pass already degrades (0.067) and the second
pass repairs it to 5e-6 .. 1.8e-5 (bound 1e-4): 256 is the edge of the bootstrap's input range
(README). A wrong level, key or scaling errs by O(1).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from privformer.crypto.openfhe_backend import OpenFHEBackend
from privformer.errors import CiphertextFormatError, ContextMismatchError, CryptoError
from privformer.protocols.nexus import approx
from privformer.protocols.nexus import he_ops as he

pytestmark = pytest.mark.openfhe


@pytest.fixture(scope="module")
def backend():
    be = OpenFHEBackend()  # the default: sparse-secret encapsulation, 8 levels
    be.generate_rotation_keys([1, 5, -3])
    yield be
    be.close()


def test_context_is_128_bit_ring_2_16_with_bootstrapping(backend):
    assert backend.preset.ring_dim == 1 << 16  # chosen by OpenFHE's HEStd_128_classic check
    assert backend.preset.secret == "SPARSE_ENCAPSULATED"  # the key itself is uniform ternary
    assert backend.preset.bootstrap_levels == 16 and backend.preset.levels == 8


def test_arithmetic_rotation_and_levels(backend):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, backend.slots), rng.uniform(-1, 1, backend.slots)
    a, b = backend.encrypt(x), backend.encrypt(y)
    assert backend.level(a) == 8
    prod = backend.multiply(a, b)
    assert backend.level(prod) == 7
    checks = [
        (backend.add(a, b), x + y),
        (backend.sub(a, b), x - y),
        (prod, x * y),
        (backend.multiply_plain(a, y), x * y),
        (backend.add_plain(a, 0.5), x + 0.5),
        (backend.rotate(a, 5), np.roll(x, -5)),
        (backend.rotate(a, -3), np.roll(x, 3)),
        (backend.add(prod, a), x * y + x),  # different levels: aligned by the worker
    ]
    for ct, want in checks:
        assert np.abs(backend.decrypt(ct) - want).max() <= 1e-6
    hoisted = backend.rotate_many(a, [5, 0, -3])  # one decomposition shared by the steps
    for ct, want in zip(hoisted, [np.roll(x, -5), x, np.roll(x, 3)], strict=True):
        assert np.abs(backend.decrypt(ct) - want).max() <= 1e-6


@pytest.mark.parametrize("bound, tol", [(1.0, 4e-6), (32.0, 4e-6), (256.0, 1e-4)])
def test_bootstrap_refreshes_a_spent_ciphertext_to_20_bits(backend, bound, tol):
    x = np.random.default_rng(1).uniform(-bound, bound, backend.slots)
    spent = backend.drop_to(backend.encrypt(x), 0)
    with pytest.raises(CryptoError, match="level 0"):
        backend.multiply(spent, spent)
    fresh = backend.bootstrap(spent)
    assert backend.level(fresh) == backend.top == 8  # as many levels as a fresh ciphertext
    err = np.abs(backend.decrypt(fresh) - x).max()
    assert err <= tol, err


def test_sgn_across_real_bootstraps_matches_its_twin(backend):
    """The composition check on a real bootstrap: SGN's 5 degree-9 polynomials need 4 levels
    each, so they run two to a chain (2 bootstraps). Inputs have |x| >= 5e-3, where the twin
    is saturated, and the polynomials contract errors there (measured 6e-12 with 4 bootstraps
    at uniform-secret parameters); 1e-4 is a tenth of the smallest SGN step a bug would skip."""
    rng = np.random.default_rng(2)
    x = rng.uniform(5e-3, 1.0, backend.slots) * rng.choice([-1.0, 1.0], backend.slots)
    out = backend.decrypt(he.sgn(backend, backend.encrypt(x), g=3, f=2))
    assert np.abs(out - approx.sgn(x, 3, 2)).max() <= 1e-4


def test_serialization_round_trip_and_corruption(backend):
    x = np.linspace(-1, 1, 100)
    ct = backend.encrypt(x)
    data = backend.serialize(ct)
    back = backend.deserialize(data)
    assert back.length == 100 and backend.level(back) == backend.level(ct)
    assert np.abs(backend.decrypt(back) - x).max() <= 1e-6
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(CiphertextFormatError, match="checksum"):
        backend.deserialize(bytes(bad))
    with pytest.raises(CiphertextFormatError):
        backend.deserialize(data[:40])


def test_foreign_ciphertexts_and_missing_keys_are_refused(backend):
    from privformer.crypto.seal_backend import SealBackend

    seal = SealBackend("test-small")
    with pytest.raises(ContextMismatchError):
        backend.decrypt(seal.encrypt(np.ones(4)))
    with pytest.raises(ContextMismatchError):
        backend.deserialize(seal.serialize(seal.encrypt(np.ones(4))))
    with pytest.raises(CryptoError, match="no rotation key"):
        backend.rotate(backend.encrypt(np.ones(4)), 7)


def test_worker_frees_dropped_ciphertexts(backend):
    gc.collect()
    before = backend.live_ciphertexts()
    cts = [backend.encrypt(np.ones(4)) for _ in range(8)]
    views = [c.prefix(2) for c in cts]  # a prefix shares its ciphertext's handle
    del cts
    gc.collect()
    assert backend.live_ciphertexts() == before + 8  # the prefixes keep them alive
    del views
    gc.collect()
    assert backend.live_ciphertexts() == before
