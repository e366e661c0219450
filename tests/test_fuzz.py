"""Property-based fuzzing (hypothesis) of the three wire formats and the STIP HTTP endpoints.

The property everywhere: any input is either accepted (and then round-trips) or refused with the
format's own error type; never another exception, never a 5xx. The default suite runs a bounded
number of examples; ``pytest -m fuzz`` runs the same properties with many more.
"""

from __future__ import annotations

import hashlib
import os
import socket

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privformer.crypto.ckks.backend import _HEAD
from privformer.crypto.ckks.float_backend import FloatBackend
from privformer.crypto.mpc.channel import encode_frame, read_frame
from privformer.errors import CryptoError, PeerError, WireFormatError
from privformer.transport import tensors as wire

LONG = os.environ.get("PRIVFORMER_FUZZ_LONG") == "1"
EXAMPLES = 3000 if LONG else 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """Bytes near a valid message: truncated, extended, or with bytes overwritten."""

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
            if kind == "flip" and data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
            elif kind == "truncate":
                data = data[: draw(st.integers(0, len(data)))]
            elif kind == "extend":
                data += draw(st.binary(max_size=64))
            elif data:
                i = draw(st.integers(0, len(data)))
                data[i:i] = draw(st.binary(min_size=1, max_size=16))
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=256))


WIRE_SEED = wire.encode(
    {"inputs_embeds": torch.randn(2, 3, 4), "attention_mask": torch.ones(2, 3, dtype=torch.int64)}
)


@FUZZ
@given(_mutations(WIRE_SEED))
def test_tensor_payloads(data):
    try:
        tensors, meta = wire.decode(data)
    except WireFormatError:
        return
    assert meta["privformer-wire"] == wire.WIRE_VERSION
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())


FRAME_SEED = encode_frame("x", [torch.arange(6).reshape(2, 3), torch.zeros(4, dtype=torch.uint8)])


@FUZZ
@given(_mutations(FRAME_SEED))
def test_2pc_frames(data):
    a, b = socket.socketpair()
    try:
        b.settimeout(2)
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        try:
            kind, tensors, meta, n = read_frame(b)
        except (WireFormatError, PeerError):
            return
        assert n <= len(data) and isinstance(kind, str) and isinstance(meta, dict)
        assert sum(t.numel() * t.element_size() for t in tensors) <= len(data)
    finally:
        a.close()
        b.close()


BACKEND = FloatBackend(slots=64)
CT_SEED = BACKEND.serialize(BACKEND.encrypt(torch.linspace(-1, 1, 64).double().numpy()))


def _resealed(data: bytes) -> bytes:
    """The same bytes with a valid checksum: reaches the backend's own parser."""
    if len(data) < _HEAD + 32:
        return data
    body = data[_HEAD + 32 :]
    return data[:_HEAD] + hashlib.sha256(data[:_HEAD] + body).digest() + body


@FUZZ
@given(_mutations(CT_SEED), st.booleans())
def test_ciphertext_envelopes(data, reseal):
    data = _resealed(data) if reseal else data
    try:
        ct = BACKEND.deserialize(data)
    except CryptoError:
        return
    assert BACKEND.decrypt(ct).shape[0] >= 1


ROUTES = [
    ("POST", "/v1/forward"),
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/{sid}/step"),
    ("DELETE", "/v1/sessions/{sid}"),
    ("GET", "/v1/info"),
]
QUERY = st.dictionaries(
    st.sampled_from(["top_k", "seq", "x"]),
    st.one_of(st.integers(-5, 2000).map(str), st.text(max_size=8)),
    max_size=2,
)
BODY = st.one_of(
    st.binary(max_size=512),
    _mutations(wire.encode({"inputs_embeds": torch.randn(1, 3, 64)})),
    st.builds(
        lambda b, n, d, k: wire.encode({"inputs_embeds": torch.randn(b, n, d) * k}),
        st.integers(0, 2),
        st.integers(0, 5),
        st.sampled_from([1, 63, 64, 65]),
        st.sampled_from([1.0, 1e30, float("inf")]),
    ),
)


@pytest.fixture(scope="module")
def decoder_url(server_for):
    return server_for("random:llama-gqa", "v2").url


@FUZZ
@given(st.sampled_from(ROUTES), QUERY, BODY, st.sampled_from(["none", "real", "junk"]))
def test_http_endpoints_never_answer_5xx(decoder_url, route, query, body, sid_kind):
    method, path = route
    with httpx.Client(base_url=decoder_url, timeout=60) as http:
        sid = "junk-id"
        if sid_kind == "real":
            opened = http.post("/v1/sessions")
            sid = opened.json()["session_id"] if opened.status_code == 200 else sid
        response = http.request(method, path.format(sid=sid), params=query, content=body)
        if sid_kind == "real":
            http.delete(f"/v1/sessions/{sid}")
        if path == "/v1/sessions" and response.status_code == 200:
            # the server is shared with other tests: leave no session behind (per-client cap)
            http.delete(f"/v1/sessions/{response.json()['session_id']}")
    assert response.status_code < 500, (route, query, response.text)
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "detail"}


@pytest.mark.fuzz
def test_long_fuzz_run():
    """``pytest -m fuzz``: the properties above with 3000 examples each."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-m",
            "not fuzz",
        ],
        env={**os.environ, "PRIVFORMER_FUZZ_LONG": "1"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-4000:]
