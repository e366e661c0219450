"""The OpenFHE backend (worker process under CPython 3.10), run with ``pytest -m openfhe``.

It needs a CPython 3.10 interpreter (this image's pyenv has 3.10.13); the first run creates a
venv with ``openfhe`` from PyPI under the cache folder. One context (ring 2^16, 128-bit, 7
levels after bootstrapping, sparse-secret-encapsulated Meta-BTS keys and sparse-slot keys for
period 16, a COMPLEX context for complex packing) takes about 40 s and 13 GB, and each
bootstrap 60-80 s on 2 cores (the machine's speed varies that much): the module runs in ~12
minutes.

Tolerances: at 50-bit scaling a fresh value errs by ~1e-9 and a product or rotation by ~3e-8,
so arithmetic is held to 1e-6. Two-pass bootstrapping keeps about 21 bits of [-1, 1] (measured
3.5e-7 .. 4.1e-7); larger inputs are scaled by the caller's bound, so the error scales with it:
bound 4e-6 x the bound (2^-20 = 9.5e-7 is the precision SecretKeyRefresh models). Unscaled,
a constant 8 errs by 0.04 and a constant 128 fails outright (measured), which the constant case
guards. A wrong level, key or scaling errs by O(1).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from privformer import approx
from privformer.crypto.ckks import circuits as he
from privformer.crypto.ckks.openfhe_backend import OpenFHEBackend
from privformer.errors import CiphertextFormatError, ContextMismatchError, CryptoError

pytestmark = pytest.mark.openfhe


@pytest.fixture(scope="module")
def backend():
    # the default (sparse-secret encapsulation, 7 levels), with sparse keys for period 16
    be = OpenFHEBackend(sparse_periods=(16,))
    be.generate_rotation_keys([1, 5, -3])
    yield be
    be.close()


def test_context_is_128_bit_ring_2_16_with_bootstrapping(backend):
    assert backend.preset.ring_dim == 1 << 16  # chosen by OpenFHE's HEStd_128_classic check
    assert backend.preset.secret == "SPARSE_ENCAPSULATED"  # the key itself is uniform ternary
    assert backend.preset.bootstrap_levels == 16 and backend.preset.levels == 7


def test_arithmetic_rotation_and_levels(backend):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, backend.slots), rng.uniform(-1, 1, backend.slots)
    a, b = backend.encrypt(x), backend.encrypt(y)
    assert backend.levels_left(a) == 7
    prod = backend.multiply(a, b)
    assert backend.levels_left(prod) == 6
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


@pytest.mark.parametrize("kind, bound", [("uniform", 1.0), ("uniform", 256.0), ("constant", 8.0)])
def test_bootstrap_refreshes_a_spent_ciphertext_to_20_bits(backend, kind, bound):
    rng = np.random.default_rng(1)
    x = rng.uniform(-bound, bound, backend.slots) if kind == "uniform" else np.full(4096, bound)
    spent = backend.drop_to(backend.encrypt(x), 0)
    with pytest.raises(CryptoError, match="level 0"):
        backend.multiply(spent, spent)
    fresh = backend.bootstrap(spent, bound)  # scaled into [-1, 1] and back
    assert backend.levels_left(fresh) == backend.top == 7  # as many levels as a fresh ciphertext
    err = np.abs(backend.decrypt(fresh) - x).max()
    assert err <= 4e-6 * bound, err  # ~21 bits of the bound (measured 3.5e-7 at bound 1)


@pytest.mark.parametrize("bound", [1.0, 64.0])
def test_one_bootstrap_refreshes_a_pair_packed_as_complex(backend, bound):
    """Complex packing: a + i b in one bootstrap. Each half keeps a single bootstrap's
    precision (measured 3.1e-7 and 3.9e-7 at bound 1), the first gets the top level and the
    second one less (unpacking it multiplies by -i), and the count rises by one. A lost
    imaginary part (a REAL context) errs by the bound itself."""
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-bound, bound, (2, backend.slots))
    a = backend.drop_to(backend.encrypt(x), 0)
    b = backend.drop_to(backend.multiply_plain(backend.encrypt(y), 1.0), 0)
    before = backend.bootstraps
    fresh_a, fresh_b = backend.bootstrap_many([a, b], bound, needed=backend.top - 1)
    assert backend.bootstraps == before + 1
    assert backend.levels_left(fresh_a) == backend.top
    assert backend.levels_left(fresh_b) == backend.top - 1
    for ct, want in ((fresh_a, x), (fresh_b, y)):
        err = np.abs(backend.decrypt(ct) - want).max()
        assert err <= 4e-6 * bound, err


@pytest.mark.parametrize("bound", [1.0, 8.0])
def test_a_sparse_bootstrap_refreshes_a_periodic_ciphertext(backend, bound):
    """Slots that repeat every 16 are a sparse-packed ciphertext of 16 slots: the sparse
    bootstrap refreshes all 32,768 slots to the full bootstrap's tolerance (4e-6 x the bound;
    measured 7.8e-7 at bound 1) and the same levels."""
    rng = np.random.default_rng(int(bound))
    x = np.tile(rng.uniform(-bound, bound, 16), backend.slots // 16)
    spent = backend.drop_to(backend.encrypt(x), 0)
    before = (backend.bootstraps, backend.sparse_bootstraps)
    fresh = backend.bootstrap(spent, bound, period=16)
    assert (backend.bootstraps, backend.sparse_bootstraps) == (before[0] + 1, before[1] + 1)
    assert backend.levels_left(fresh) == 7
    assert np.abs(backend.decrypt(fresh) - x).max() <= 4e-6 * bound


def test_sgn_across_real_bootstraps_matches_its_twin(backend):
    """The composition check on a real bootstrap: SGN's 5 degree-9 polynomials need 4 levels
    each, so at 7 levels they run one to a chain (4 bootstraps). Inputs have |x| >= 5e-3,
    where the twin is saturated and the polynomials contract errors (measured 3e-11 with 2
    bootstraps); 1e-4 is a tenth of the smallest SGN step a bug would skip."""
    rng = np.random.default_rng(2)
    x = rng.uniform(5e-3, 1.0, backend.slots) * rng.choice([-1.0, 1.0], backend.slots)
    out = backend.decrypt(he.sgn(backend, backend.encrypt(x), g=3, f=2))
    assert np.abs(out - approx.sign.sgn(x, 3, 2)).max() <= 1e-4


def test_serialization_round_trip_and_corruption(backend):
    x = np.linspace(-1, 1, 100)
    ct = backend.encrypt(x)
    data = backend.serialize(ct)
    back = backend.deserialize(data)
    assert back.length == 100 and backend.levels_left(back) == backend.levels_left(ct)
    assert np.abs(backend.decrypt(back) - x).max() <= 1e-6
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(CiphertextFormatError, match="checksum"):
        backend.deserialize(bytes(bad))
    with pytest.raises(CiphertextFormatError):
        backend.deserialize(data[:40])


def test_foreign_ciphertexts_and_missing_keys_are_refused(backend):
    from privformer.crypto.ckks.seal_backend import SealBackend

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
