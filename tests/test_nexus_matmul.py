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


def _counting(backend):
    """The backend with a count of plaintext products (terms of multiply_plain_sum)."""
    count = {"products": 0}
    plain_sum = backend.multiply_plain_sum

    def counted(terms):
        count["products"] += len(terms)
        return plain_sum(terms)

    backend.multiply_plain_sum = counted
    return count


@pytest.mark.parametrize(("d_in", "d_out", "copies"), [(100, 100, 2), (100, 300, 4), (60, 200, 5)])
def test_replicated_input_needs_d_in_diagonals_on_seal(d_in, d_out, copies):
    """A one-block input with zero padding (8 tokens: F = 512 features) copied ``copies``
    times: the same product as numpy (tolerance as above: unit-size inputs, sums of d_in
    products), d_in plaintext products instead of every diagonal meeting the padded block, and
    one level, as the plain path."""
    from privformer.crypto.ckks.circuits import power_of_two_steps

    be = SealBackend("test-small")
    layout = mm.TokenInterleaved(8, be.slots)
    be.generate_rotation_keys(
        sorted(set(mm.rotation_steps(layout)) | set(power_of_two_steps(be.slots)))
    )
    assert mm.replicas(d_in, d_out, layout.features) == copies
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, d_in))
    w = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    cts = mm.encrypt_activation(be, x, layout)
    count = _counting(be)
    out = mm.matmul_plain(be, cts, w, layout, zero_padded=True)
    assert count["products"] == d_in
    assert be.levels_left(out[0]) == be.levels_left(cts[0]) - 1
    assert np.abs(mm.decrypt_activation(be, out, layout, d_out) - x @ w).max() < 1e-3
    mm.matmul_plain(be, cts, w, layout)  # the plain path, for the count
    assert count["products"] - d_in > d_in


def test_replicated_input_on_minilm_shapes_at_16_tokens():
    """MiniLM's projections at 16 tokens on ring 2^16's 32,768 slots (F = 2,048), FloatBackend:
    384 x 384 and 384 x 1,536 from 384 products each (767 and 1,919 on the plain path), exact
    to float rounding; 1,536 x 384 (FFN out) does not fit replicated and keeps the plain path."""
    from privformer.crypto.ckks.circuits import power_of_two_steps
    from privformer.crypto.ckks.float_backend import FloatBackend

    be = FloatBackend(32768, top=3)
    layout = mm.TokenInterleaved(16, be.slots)
    be.generate_rotation_keys(
        sorted(set(mm.rotation_steps(layout)) | set(power_of_two_steps(be.slots)))
    )
    rng = np.random.default_rng(3)
    for d_in, d_out, replicated, plain in ((384, 384, 384, 767), (384, 1536, 384, 1919)):
        x = rng.normal(size=(16, d_in))
        w = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
        cts = mm.encrypt_activation(be, x, layout)
        count = _counting(be)
        got = mm.decrypt_activation(be, mm.matmul_plain(be, cts, w, layout, True), layout, d_out)
        assert count["products"] == replicated
        assert np.abs(got - x @ w).max() < 1e-12
        mm.matmul_plain(be, cts, w, layout)
        assert count["products"] - replicated == plain
        del be.multiply_plain_sum  # back to the class's method
    assert mm.replicas(1536, 384, layout.features) == 0
