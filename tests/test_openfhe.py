"""The OpenFHE backend (worker process under CPython 3.10), run with ``pytest -m openfhe``.

It needs a CPython 3.10 interpreter (this image's pyenv has 3.10.13); the first run creates a
venv with ``openfhe`` from PyPI under the cache folder. One context (ring 2^16, 128-bit, 4
levels after bootstrapping, Meta-BTS bootstrapping keys) takes about 36 s and 16.4 GB, and each
bootstrap about 35 s on 2 cores: the module runs in about 6 minutes.

Tolerances: at 55-bit scaling a fresh value errs by ~1e-10 and a product or rotation by ~1e-9,
so arithmetic is held to 1e-6. Two-iteration bootstrapping keeps about 20 bits: measured
7.6e-7 on slots in [-1, 1], 8.7e-7 in [-32, 32] and 5.2e-6 in [-256, 256]; the bounds below are
5x those (2^-20 = 9.5e-7 is the precision DecryptRefreshBackend models). A wrong level, key or
scaling errs by O(1).
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
    be = OpenFHEBackend()
    be.generate_rotation_keys([1, 5, -3])
    yield be
    be.close()


def test_context_is_128_bit_ring_2_16_with_bootstrapping(backend):
    assert backend.preset.ring_dim == 1 << 16  # chosen by OpenFHE's HEStd_128_classic check
    assert backend.preset.bootstrap_levels == 20 and backend.preset.levels == 4


def test_arithmetic_rotation_and_levels(backend):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, backend.slots), rng.uniform(-1, 1, backend.slots)
    a, b = backend.encrypt(x), backend.encrypt(y)
    assert backend.level(a) == 4
    prod = backend.multiply(a, b)
    assert backend.level(prod) == 3
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


@pytest.mark.parametrize("bound, tol", [(1.0, 4e-6), (32.0, 5e-6), (256.0, 3e-5)])
def test_bootstrap_refreshes_a_spent_ciphertext_to_20_bits(backend, bound, tol):
    x = np.random.default_rng(1).uniform(-bound, bound, backend.slots)
    spent = backend.drop_to(backend.encrypt(x), 0)
    with pytest.raises(CryptoError, match="level 0"):
        backend.multiply(spent, spent)
    fresh = backend.bootstrap(spent)
    assert backend.level(fresh) == backend.top == 4  # as many levels as a fresh ciphertext
    err = np.abs(backend.decrypt(fresh) - x).max()
    assert err <= tol, err


def test_sgn_across_real_bootstraps_matches_its_twin(backend):
    """The composition check on a real bootstrap: SGN's 5 degree-9 polynomials need 4 levels
    each, so each runs in its own chain (4 bootstraps). Inputs have |x| >= 5e-3, where the
    twin is saturated; a bootstrap error of 1e-6 stays ~1e-6 through the contracting
    polynomials (measured below 1e-5)."""
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
