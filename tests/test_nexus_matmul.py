"""NEXUS plaintext-weight x ciphertext-activation matmul (token-interleaved packing, BSGS
diagonals) on SEAL's test-small preset, against numpy.

Tolerance: at scale 2^30 each encoded value and each rescale errs by about 2^-30 relative times
the ring noise (~1e-6 absolute per slot after one product); a block sums F = 128 products and two
blocks add, so |error| stays near 1e-5 for unit-size inputs; 1e-3 leaves a wide margin while
still catching any wrong diagonal (which errs by O(1)).
"""

from __future__ import annotations

import numpy as np
import pytest

from privformer.crypto.ckks.seal_backend import SealBackend
from privformer.errors import InputError
from privformer.protocols.nexus import matmul as mm


@pytest.fixture(scope="module")
def backend():
    be = SealBackend("test-small")
    be.generate_rotation_keys(mm.rotation_steps(mm.TokenInterleaved(32, be.slots)))
    return be


def test_packing_round_trips():
    layout = mm.TokenInterleaved(32, 4096)
    x = np.random.default_rng(0).normal(size=(32, 200))
    vecs = layout.pack(x)
    assert len(vecs) == 2 and all(v.shape == (4096,) for v in vecs)
    assert vecs[0][5 * 32 + 7] == x[7, 5]  # slot f n + t holds feature f of token t
    assert np.array_equal(layout.unpack(vecs, 200), x)
    with pytest.raises(InputError, match="power of two"):
        mm.TokenInterleaved(48, 4096)


def test_encrypted_matmul_matches_numpy(backend):
    rng = np.random.default_rng(1)
    layout = mm.TokenInterleaved(32, backend.slots)
    x = rng.normal(size=(32, 160))
    w = rng.normal(size=(160, 200)) / np.sqrt(160)
    cts = mm.encrypt_activation(backend, x, layout)
    out = mm.matmul_plain(backend, cts, w, layout)
    assert len(out) == 2
    assert all(backend.levels_left(c) == backend.levels_left(cts[0]) - 1 for c in out)  # one level
    got = mm.decrypt_activation(backend, out, layout, 200)
    assert np.abs(got - x @ w).max() < 1e-3
    # chains: the output packing is the input packing of the next matmul
    w2 = rng.normal(size=(200, 64)) / np.sqrt(200)
    got2 = mm.decrypt_activation(backend, mm.matmul_plain(backend, out, w2, layout), layout, 64)
    assert np.abs(got2 - (x @ w) @ w2).max() < 1e-3


def test_matmul_refuses_a_mismatched_weight(backend):
    layout = mm.TokenInterleaved(32, backend.slots)
    cts = mm.encrypt_activation(backend, np.ones((32, 100)), layout)
    with pytest.raises(InputError, match="does not match"):
        mm.matmul_plain(backend, cts, np.ones((300, 10)), layout)
    with pytest.raises(InputError, match="activation"):
        mm.encrypt_activation(backend, np.ones((16, 100)), layout)


def test_plain_sum_rescales_once_and_agrees(backend):
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=backend.slots) for _ in range(3)]
    ws = [rng.normal(size=backend.slots) for _ in range(3)]
    cts = [backend.encrypt(x) for x in xs]
    fused = backend.multiply_plain_sum(list(zip(cts, ws, strict=True)))
    assert backend.levels_left(fused) == backend.levels_left(cts[0]) - 1
    exact = sum(x * w for x, w in zip(xs, ws, strict=True))
    assert np.abs(backend.decrypt(fused) - exact).max() < 1e-4
    with pytest.raises(ValueError):
        backend.multiply_plain_sum([])
