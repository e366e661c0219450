"""The CKKS backend (SEAL) and the encrypted NEXUS blocks against their float64 twins.

Tolerances: fresh CKKS encodings carry ~3e-6 absolute error at scale 2^30 and ~1e-9 at 2^40
(measured); a rotation adds ~5e-6 at 2^30. The encrypted SGN (depth 16, scale 2^40) was within
1.7e-6 of its simulate twin over [-1, 1] (the steep part near 0 amplifies noise), so 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from privformer import approx
from privformer.crypto.ckks import circuits as he_ops
from privformer.crypto.ckks.presets import MAX_MODULUS_BITS_128, PRESETS, Preset, get_preset
from privformer.crypto.ckks.seal_backend import SealBackend
from privformer.errors import (
    BootstrapUnavailableError,
    CiphertextFormatError,
    ContextMismatchError,
    CryptoError,
    InsecureParametersError,
    LevelError,
)


@pytest.fixture(scope="module")
def small() -> SealBackend:
    backend = SealBackend("test-small")
    backend.generate_rotation_keys(he_ops.quick_sum_steps(256))
    return backend


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_128_bit_secure(name):
    preset = get_preset(name)
    assert preset.total_bits <= MAX_MODULUS_BITS_128[preset.ring_dim]
    SealBackend(preset)  # SEAL re-checks the same bound (TC128) and would refuse


def test_insecure_parameters_are_refused():
    too_big = Preset("too-big", 1 << 13, (60, 40, 40, 40, 60), 40)  # 240 > 218 bits
    with pytest.raises(InsecureParametersError, match="exceeds the 218-bit bound"):
        too_big.check_security()
    with pytest.raises(InsecureParametersError):
        SealBackend(too_big)


def test_arithmetic_levels_and_exact_scales(small):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300)
    cx, cy = small.encrypt(x), small.encrypt(y)
    assert small.levels_left(cx) == 4
    prod = small.multiply(cx, cy)
    assert small.levels_left(prod) == 3
    # x*y (level 3) + x (level 4): the fresh operand is dropped a level with an exact scale
    mixed = small.add(prod, cx)
    assert np.abs(small.decrypt(mixed) - (x * y + x)).max() < 1e-4
    scaled = small.multiply_plain(mixed, y)
    assert np.abs(small.decrypt(scaled) - (x * y + x) * y).max() < 1e-4
    shifted = small.add_plain(small.sub(cx, cy), 0.5)
    assert np.abs(small.decrypt(shifted) - (x - y + 0.5)).max() < 1e-4


def test_level_exhaustion_and_bootstrap_are_clear_errors(small):
    ct = small.encrypt(np.ones(4))
    for _ in range(4):
        ct = small.multiply(ct, ct)
    assert small.levels_left(ct) == 0
    with pytest.raises(LevelError, match="level 0"):
        small.multiply(ct, ct)
    with pytest.raises(BootstrapUnavailableError, match="no bootstrapper"):
        small.bootstrap(ct)


def test_rotation_and_quick_sum(small):
    v = np.random.default_rng(1).normal(size=200)
    rotated = small.decrypt(small.rotate(small.encrypt(v), 1))
    assert np.abs(rotated[:199] - v[1:]).max() < 1e-4
    total = small.decrypt(he_ops.quick_sum(small, small.encrypt(v), 256))[0]
    assert abs(total - v.sum()) < 1e-3
    with pytest.raises(CryptoError, match="no rotation key"):
        small.rotate(small.encrypt(v), 3)


def test_mismatched_contexts_and_corrupted_ciphertexts(small):
    other = SealBackend("test-small")
    ct = small.encrypt(np.arange(8.0))
    with pytest.raises(ContextMismatchError):
        other.add(other.encrypt(np.arange(8.0)), ct)
    data = small.serialize(ct)
    assert np.abs(small.decrypt(small.deserialize(data)) - np.arange(8.0)).max() < 1e-4
    with pytest.raises(ContextMismatchError):
        other.deserialize(data)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(CiphertextFormatError, match="checksum"):
        small.deserialize(bytes(flipped))
    with pytest.raises(CiphertextFormatError, match="magic"):
        small.deserialize(b"garbage")


def test_encrypted_sgn_matches_its_simulate_twin():
    backend = SealBackend("depth19")
    x = np.concatenate([np.linspace(-1, 1, 1001), np.random.default_rng(2).uniform(-1, 1, 1000)])
    out = backend.decrypt(he_ops.sgn(backend, backend.encrypt(x)))
    assert backend.levels_left(he_ops.sgn(backend, backend.encrypt(x[:4]))) == 19 - 16
    assert np.abs(out - approx.sign.sgn(x)).max() < 1e-5


@pytest.mark.parametrize(
    ("chain", "fragment"),
    [
        ({"sparse_periods": (12,)}, "sparse period 12"),
        ({"sparse_periods": (8,)}, "sparse period 8"),
        ({"sparse_periods": (1 << 15,)}, "below the slots"),
        ({"sparse_periods": (16,), "slots": 1 << 14, "complex_packing": False}, "full-slot"),
    ],
)
def test_openfhe_sparse_periods_are_checked_before_a_worker_starts(chain, fragment):
    """Sparse-slot bootstrapping keys exist for powers of two from 16 to half the slots, on a
    full-slot context; anything else is refused with the reason (no 3.10 worker needed)."""
    from privformer.crypto.ckks.openfhe_backend import chain_parameters

    with pytest.raises(CryptoError, match=fragment):
        chain_parameters(**chain)
    assert chain_parameters(sparse_periods=(32, 16, 16))["sparse_periods"] == [16, 32]
