"""The 2PC engine: fixed point, PRG, wire format, and every protocol against its float twin.

Both parties run in threads of this process over real localhost TCP with a dealer thread
(``run_local``); the process-separated deployment is tested in test_cipherprune.py.

Tolerances: encoding rounds each input by at most 2^-19 (1.9e-6) and each truncation is off by
at most one unit of 2^-18 (3.8e-6), so a product of values of magnitude <= 4 errs by at most
2 * 4 * 1.9e-6 + 3.8e-6 = 1.9e-5. Iterated approximations amplify this (stated per test).
"""

from __future__ import annotations

import math
import socket
import time

import pytest
import torch

from privformer import approx
from privformer.crypto.mpc import compare, fixed
from privformer.crypto.mpc import shared as sh
from privformer.crypto.mpc.channel import NetworkModel, encode_frame, read_frame
from privformer.crypto.mpc.party import CLIENT, SERVER, run_local
from privformer.crypto.mpc.prg import Stream, new_key
from privformer.errors import OutOfRangeError, WireFormatError
from privformer.protocols.cipherprune import nonlinear as nl

ULP = 1.0 / fixed.SCALE


def _both(fn, x: torch.Tensor, y: torch.Tensor | None = None):
    """Run fn(party, x_shared[, y_shared]) on both parties; x from the client, y from the
    server; return the opened result (ring tensor) and the client's stats."""

    def prog(p):
        xs = sh.share_input(p, CLIENT, fixed.encode(x) if p.role == CLIENT else None, x.shape)
        args = [xs]
        if y is not None:
            args.append(
                sh.share_input(p, SERVER, fixed.encode(y) if p.role == SERVER else None, y.shape)
            )
        with p.stats.op("under test"):
            out = fn(p, *args)
        return sh.open_(out), p.stats.snapshot()

    (c_out, c_stats), (s_out, _s_stats) = run_local(prog, prog)
    assert torch.equal(c_out, s_out)
    return c_out, c_stats["per_op"].get("under test", {})


def test_fixed_point_round_trip_and_range():
    x = torch.tensor([-3.25, 0.0, 1e-6, 12345.678])
    assert torch.allclose(fixed.decode(fixed.encode(x)), x.double(), atol=ULP / 2)
    with pytest.raises(OutOfRangeError, match="input"):
        fixed.encode(torch.tensor([fixed.MAX_INPUT * 2]))
    with pytest.raises(OutOfRangeError):
        fixed.encode(torch.tensor([float("nan")]))


def test_prg_streams_are_reproducible_and_distinct():
    key = new_key()
    a, b = Stream(key, 1).ring((1000,)), Stream(key, 1).ring((1000,))
    assert torch.equal(a, b)
    assert not torch.equal(a, Stream(key, 2).ring((1000,)))
    assert not torch.equal(a, Stream(new_key(), 1).ring((1000,)))
    perm = Stream(key, 3).permutation(500)
    assert torch.equal(torch.sort(perm).values, torch.arange(500))
    bits = Stream(key, 4).bits((10000,))
    assert set(bits.unique().tolist()) == {0, 1} and 4500 < int(bits.sum()) < 5500


def _read_sent(data: bytes, close: bool = False):
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        if close:
            a.close()
        return read_frame(b)
    finally:
        a.close()
        b.close()


def test_frames_are_checked():
    frame = encode_frame("x", [torch.arange(3)], {"note": 1})
    kind, tensors, meta, size = _read_sent(frame)
    assert kind == "x" and torch.equal(tensors[0], torch.arange(3)) and meta == {"note": 1}
    assert size == len(frame)
    with pytest.raises(WireFormatError, match="magic"):
        _read_sent(b"XXXX" + frame[4:])
    with pytest.raises(WireFormatError, match="version"):
        _read_sent(frame[:4] + (99).to_bytes(2, "big") + frame[6:])
    with pytest.raises(WireFormatError, match="closed"):
        _read_sent(frame[:-8], close=True)  # truncated, then the peer goes away
    # a payload length that disagrees with the header's tensor list
    bad = bytearray(frame)
    bad[10:18] = (len(frame) - 18 - 4).to_bytes(8, "big")  # lie about the payload size
    with pytest.raises(WireFormatError):
        _read_sent(bytes(bad), close=True)


def test_input_sharing_hides_the_value_and_reconstructs():
    x = torch.randn(64, dtype=torch.float64)

    def prog(p):
        s = sh.share_input(p, CLIENT, fixed.encode(x) if p.role == CLIENT else None, x.shape)
        return s.share, sh.open_(s)

    (c_share, c_open), (s_share, _) = run_local(prog, prog)
    assert torch.allclose(fixed.decode(c_open), x, atol=ULP)
    # the server's share is uniform-looking, nowhere near the encoded value
    assert (s_share - fixed.encode(x)).abs().float().mean() > 2**50


def test_truncation_is_exact_to_one_unit():
    ring = torch.randint(-(2**61), 2**61, (50000,), dtype=torch.int64)

    def prog(p):
        s = sh.share_input(p, CLIENT, ring if p.role == CLIENT else None, ring.shape)
        return sh.open_(sh.truncate(s))

    got, _ = run_local(prog, prog)
    diff = got - torch.div(ring, fixed.SCALE, rounding_mode="floor")
    assert set(diff.unique().tolist()) <= {0, 1}


def test_products_and_linear_layers():
    torch.manual_seed(1)
    x, y = (
        torch.rand(16, 32, dtype=torch.float64) * 8 - 4,
        torch.rand(32, 8, dtype=torch.float64) * 8 - 4,
    )
    w = torch.rand(32, 8, dtype=torch.float64) - 0.5
    out, stats = _both(lambda p, a, b: sh.mul(a, a), x, y)
    assert (fixed.decode(out) - x * x).abs().max() < 2e-5
    assert stats["rounds"] == 2  # open e, f; truncate
    out, _ = _both(lambda p, a, b: sh.matmul(a, b), x, y)
    # 32 products summed: 32 * 2 * 4 * 1.9e-6 + 3.8e-6
    assert (fixed.decode(out) - x @ y).abs().max() < 5e-4

    def lin(p, a):
        weights = {"w": fixed.encode(w) if p.role == SERVER else None}
        sh.open_weight_masks(p, weights, {"w": w.shape})
        bias = fixed.encode(torch.ones(8)) if p.role == SERVER else None
        return sh.linear(a, "w", weights["w"], bias, w.shape)

    out, stats = _both(lin, x)
    assert (fixed.decode(out) - (x @ w + 1)).abs().max() < 1e-4
    assert stats["rounds"] == 3  # weight masks (once per session), x0 - A, truncate


def test_comparison_is_exact_including_edges():
    vals = torch.tensor([0.0, ULP, -ULP, 1000.0, -1000.0, 3.5, -3.5, 2.0**19, -(2.0**19)])
    x = torch.cat([vals, torch.randn(5000, dtype=torch.float64) * 100])
    out, stats = _both(lambda p, a: compare.ltz(a), x)
    assert torch.equal(out, (fixed.encode(x) < 0).long())
    assert stats["rounds"] == 8  # generate bits, 6 adder levels, bit to arithmetic


def test_max_and_select():
    x = torch.randn(6, 37, dtype=torch.float64) * 5
    out, stats = _both(lambda p, a: compare.max_lastdim(a), x)
    assert torch.equal(out, fixed.encode(x).max(-1, keepdim=True).values)
    assert stats["rounds"] == 6 * 9  # ceil(log2 37) levels of comparison + select


@pytest.mark.parametrize("cfg", [approx.gelu.GELU_HIGH, approx.gelu.GELU_LOW], ids=lambda c: c.name)
def test_gelu_matches_its_twin(cfg):
    x = torch.cat([torch.linspace(-6, 6, 601, dtype=torch.float64), torch.randn(2000).double() * 3])
    out, _ = _both(lambda p, a: nl.gelu(a, cfg), x)
    # the polynomial's coefficients are encoded too: |c| 2^-19 |u|^k summed stays < 5e-5
    assert (fixed.decode(out) - approx.gelu.cipherprune(x, cfg)).abs().max() < 1e-4


@pytest.mark.parametrize(
    "cfg", [approx.softmax.EXP_HIGH, approx.softmax.EXP_LOW], ids=lambda c: c.name
)
def test_exp_matches_its_twin(cfg):
    x = -torch.cat(
        [torch.linspace(0, 20, 401, dtype=torch.float64), torch.rand(1000).double() * 18]
    )
    out, _ = _both(lambda p, a: nl.exp_neg(a, cfg), x)
    # 2^s squarings multiply the relative error of the Taylor value (<= 2 units) by 2^s:
    # 64 * 2 * 3.8e-6 = 4.9e-4 at worst for exp-high
    assert (fixed.decode(out) - approx.softmax.exp_neg(x, cfg)).abs().max() < 5e-4


def test_softmax_matches_twin_on_peaked_and_flat_rows():
    torch.manual_seed(2)
    rows = torch.randn(8, 64, dtype=torch.float64) * 3
    rows[0] = 0.0  # flat
    rows[1, 5] = 40.0  # peaked
    mask = torch.zeros(64, dtype=torch.float64)
    mask[50:] = -1024.0

    def prog(p, a):
        m = sh.share_input(
            p, CLIENT, fixed.encode(mask.expand(8, 64)) if p.role == CLIENT else None, (8, 64)
        )
        return nl.softmax(a, m)

    out, _ = _both(prog, rows)
    got = fixed.decode(out)
    assert (got - approx.softmax.cipherprune(rows, mask)).abs().max() < 1e-4
    assert (got - torch.softmax(rows + mask, -1)).abs().max() < 1e-4
    assert got[:, 50:].abs().max() < 1e-5  # masked keys get (almost exactly) nothing


def test_layernorm_matches_twin():
    torch.manual_seed(3)
    x = (
        torch.randn(10, 48, dtype=torch.float64)
        * torch.logspace(-0.5, 1, 10, dtype=torch.float64)[:, None]
    )
    g, b = torch.rand(48, dtype=torch.float64) + 0.5, torch.randn(48, dtype=torch.float64) * 0.1

    def prog(p, a):
        gw = fixed.encode(g) if p.role == SERVER else None
        sh.open_weight_masks(p, {"g": gw}, {"g": g.shape})
        return nl.layernorm(a, "g", gw, fixed.encode(b) if p.role == SERVER else None, 1e-12)

    out, _ = _both(prog, x)
    ref = torch.nn.functional.layer_norm(x, (48,), g, b, 1e-12)
    assert ((fixed.decode(out) - ref).abs() / ref.abs().clamp_min(1)).max() < 1e-3
    with pytest.raises(OutOfRangeError, match="layernorm.rsqrt"):
        approx.layernorm.cipherprune(x * 100, g, b, 1e-12)  # variance beyond 256: the twin says so


@pytest.mark.parametrize("low, high", [(2.0**-9, 2.0**14), (0.05, 256.0), (1.5, 1.9)])
def test_rsqrt_octaves_matches_twin_in_rounds_independent_of_the_range(low, high):
    """The octave form: the twin within 1e-4 relative of 1/sqrt everywhere on the range (its
    design tolerance, RSQRT_REL_TOL) and 2PC within the fixed point's reach of the twin: v is
    encoded to ULP/2, which moves 1/sqrt(v) by ULP/(4 v) relative (2.4e-4 at v = 2^-9; bound
    twice that), and the Newton steps on m = v / 2^e in [1, 2) hold y to a few units of ULP
    (8 allowed) before 2^(-e/2) scales it (the result is kept at scale 2^30). Rounds: 8 (one
    batched comparison) + 2 + 6 x 2 whatever the range, against 1 + 6 x (Newton steps) for
    the linear start."""
    config = approx.layernorm.LayerNormConfig(var_low=low, var_high=high, octaves=True)
    v = (
        torch.cat(
            [
                torch.logspace(math.log10(low), math.log10(high), 61, dtype=torch.float64),
                torch.tensor(
                    [2.0**k for k in approx.layernorm.octaves(config)[1]], dtype=torch.float64
                ),
            ]
        )
        .clamp(low, high)
        .unsqueeze(-1)
    )  # powers of two included: the comparisons' edges
    twin = approx.layernorm.rsqrt(v, config)
    assert ((twin * v.sqrt() - 1).abs()).max() <= approx.layernorm.RSQRT_REL_TOL
    out, stats = _both(lambda p, a: nl.rsqrt_octaves(a, config), v)
    got = out.to(torch.float64) / 2**approx.layernorm.OCTAVE_FRAC_BITS  # its finer scale
    assert ((got - twin).abs() <= twin * (ULP / (2 * v) + 8 * ULP)).all()
    compares = 8 if approx.layernorm.octaves(config)[1] else 0
    assert stats["rounds"] == compares + 2 + 6 * approx.layernorm.OCTAVE_NEWTON_STEPS
    newton = approx.layernorm.LayerNormConfig(var_low=low, var_high=high)
    if high / low > 1000:  # the wide ranges: fewer rounds than Newton over the whole range
        assert stats["rounds"] < 1 + 6 * approx.layernorm.rsqrt_iterations(newton)


def test_permute_rows_is_a_hidden_permutation():
    x = torch.arange(40, dtype=torch.float64).reshape(20, 2)

    def prog(p, a):
        return sh.permute_rows(sh.permute_rows(a, CLIENT), SERVER)

    out, stats = _both(prog, x)
    got = fixed.decode(out)
    assert sorted(got[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(got[:, 1] - got[:, 0], torch.ones(20, dtype=torch.float64))  # rows intact
    assert not torch.equal(got, x)  # identity has probability 1/20!
    assert stats["rounds"] == 2


def test_network_model_stretches_rounds():
    net = NetworkModel(rtt_s=0.05, bandwidth_bps=1e9)
    x = torch.randn(4, dtype=torch.float64)

    def prog(p):
        s = sh.share_input(p, CLIENT, fixed.encode(x) if p.role == CLIENT else None, x.shape)
        start = time.perf_counter()
        for _ in range(4):
            sh.open_(s)
        return time.perf_counter() - start, p.stats.total.as_dict()

    (elapsed, total), _ = run_local(prog, prog, network=net)
    assert total["rounds"] == 4
    assert elapsed >= net.time(total) * 0.95
    # one one-way delay (RTT/2) per round: both parties send at once
    assert net.time(total) == pytest.approx(4 * 0.05 / 2 + 8 * total["flight_bytes"] / 1e9)


def test_parties_running_different_programs_fail_fast():
    x = torch.randn(4, dtype=torch.float64)

    def client(p):
        s = sh.share_input(p, CLIENT, fixed.encode(x), x.shape)
        return sh.open_(s)

    def server(p):
        s = sh.share_input(p, CLIENT, None, x.shape)
        return sh.open_(sh.truncate(s))

    with pytest.raises(WireFormatError, match="desynchronised"):
        run_local(client, server)
