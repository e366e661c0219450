"""CipherPrune's server and dealer under hostile and careless clients (issue: no crash, no
unbounded memory, no silent wrong answer).

Each test sends what a careless or hostile client would, asserts the documented refusal (an
``error`` frame naming the problem), and then checks that a correct client right after still
gets the correct class from the same, still-running processes.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time

import pytest
import torch
from cases import CIPHERPRUNE_N

from privformer.crypto.mpc.channel import encode_frame, read_frame
from privformer.crypto.mpc.party import connect_client
from privformer.errors import PeerError
from privformer.protocols.cipherprune.format import save_classifier
from privformer.protocols.cipherprune.model import PruningConfig
from privformer.protocols.cipherprune.session import encode_text
from privformer.protocols.cipherprune.simulate import run_float
from privformer.transport.cipherprune import classify_remote
from privformer.transport.processes import ChildProcess

N = CIPHERPRUNE_N
PRUNING = PruningConfig([0.4 / N] * 6, [1.0 / N] * 6)
TEXT = "a gripping, beautifully acted film"
PAIR_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def processes(cipherprune_classifier, tmp_path_factory):
    """A dealer (short pair timeout, allocation cap from the model) and a server, as processes."""
    w, _ = cipherprune_classifier
    folder = tmp_path_factory.mktemp("hostile-cp")
    model_dir = save_classifier(w, PRUNING, folder / "model")
    dealer_args = ["cipherprune", "dealer", "--port", "0", "--model", str(model_dir)]
    dealer_args += ["--pair-timeout", str(PAIR_TIMEOUT_S)]
    with ChildProcess(dealer_args, log_file=folder / "dealer.log") as dealer:
        serve = ["cipherprune", "serve", "--model", str(model_dir), "--port", "0"]
        serve += ["--dealer", f"127.0.0.1:{dealer.port}", "--max-concurrent", "2"]
        with ChildProcess(serve, log_file=folder / "server.log") as server:
            yield w, dealer, server


def _expected_label(w, tokenizer) -> int:
    ids, mask = encode_text(TEXT, N, tokenizer("minilm"))
    logits, _trace, _ = run_float(w, ids, mask, PRUNING, "simulate")
    return int(logits.argmax())


def _correct_client_still_served(processes, tokenizer) -> None:
    w, dealer, server = processes
    assert server.proc.poll() is None and dealer.proc.poll() is None, "a process died"
    ids, mask = encode_text(TEXT, N, tokenizer("minilm"))
    result = classify_remote(ids, mask, ("127.0.0.1", server.port), ("127.0.0.1", dealer.port))
    assert result.label == _expected_label(w, tokenizer)


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def _refusal(sock: socket.socket) -> str:
    """The error frame the other side sends before closing (its message)."""
    with pytest.raises(PeerError) as info:
        read_frame(sock)
    sock.close()
    return str(info.value)


def _frame_with_raw_header(header: bytes) -> bytes:
    import struct

    return struct.pack("!4sHIQ", b"PFMP", 1, len(header), 0) + header


KEY = torch.zeros(16, dtype=torch.uint8)  # KEY_BYTES


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (encode_frame("session", [KEY], {}), "session id"),
        (_frame_with_raw_header(b'{"kind": "session", "tensors": [], "meta": []}'), "object"),
        (_frame_with_raw_header(b'{"kind": "session", "tensors": 5, "meta": {}}'), "malformed"),
        (encode_frame("session", [KEY[:3]], {"session": "0" * 32}), "key has 3 bytes"),
        (encode_frame("hello", [], {"session": "0" * 32}), "expected a session request"),
        (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 64, "magic"),
    ],
    ids=["meta-empty", "meta-list", "tensors-not-list", "short-key", "wrong-kind", "http"],
)
def test_malformed_session_frames_are_refused_and_the_server_keeps_serving(
    processes, tokenizer, frame, fragment
):
    _w, _dealer, server = processes
    sock = _raw(server.port)
    sock.sendall(frame)
    assert fragment in _refusal(sock)
    _correct_client_still_served(processes, tokenizer)


@pytest.mark.parametrize(
    ("length", "fragment"),
    [
        (torch.tensor([float("nan")], dtype=torch.float64), "one int64"),
        (torch.tensor([10**9]), "sequence length must be"),
        (torch.tensor([N, N]), "one int64"),
    ],
)
def test_a_bad_length_frame_is_refused(processes, tokenizer, length, fragment):
    _w, dealer, server = processes
    party = connect_client(("127.0.0.1", server.port), ("127.0.0.1", dealer.port))
    party.peer.exchange([length], "card")  # the server's card comes back in the same round
    assert fragment in _refusal(party.peer.sock)
    party.close()
    _correct_client_still_served(processes, tokenizer)


def test_a_wrong_shape_in_a_protocol_step_ends_only_that_session(processes, tokenizer):
    _w, dealer, server = processes
    party = connect_client(("127.0.0.1", server.port), ("127.0.0.1", dealer.port))
    party.peer.exchange([torch.tensor([N])], "card")
    party.peer.exchange([], "weights")  # the weight masks, as an honest client receives them
    party.peer.exchange([torch.zeros(3, dtype=torch.int64)], "onesided")  # should be (N, vocab)
    message = _refusal(party.peer.sock)
    assert "RuntimeError" in message or "shape" in message, message
    party.close()
    _correct_client_still_served(processes, tokenizer)


def test_an_idle_connection_does_not_block_a_correct_client(processes, tokenizer):
    """One slot of two is held by a silent connection; a correct client is served meanwhile,
    and the silent one is dropped after the handshake timeout (10 s)."""
    _w, _dealer, server = processes
    idle = _raw(server.port)
    start = time.monotonic()
    _correct_client_still_served(processes, tokenizer)
    assert _refusal(idle)  # timed out: "no data from the other side for 10 s"
    assert time.monotonic() - start < 40


def test_a_client_beyond_the_concurrency_cap_is_told_the_server_is_busy(processes, tokenizer):
    _w, _dealer, server = processes
    held = [_raw(server.port) for _ in range(2)]  # both slots, silent
    time.sleep(0.5)
    extra = _raw(server.port)
    assert "busy" in _refusal(extra)
    for sock in held:
        sock.close()
    time.sleep(0.5)
    _correct_client_still_served(processes, tokenizer)


def test_the_dealer_times_out_unpaired_halves_and_caps_allocations(processes, tokenizer):
    _w, dealer, _server = processes
    lonely = _raw(dealer.port)
    lonely.sendall(encode_frame("hello", meta={"role": 0, "session": "ab" * 16}))
    assert "no other party joined" in _refusal(lonely)
    # a "party 1" asking for a 2^40-element triple is refused before anything is allocated
    p0, p1 = _raw(dealer.port), _raw(dealer.port)
    for role, sock in ((0, p0), (1, p1)):
        sock.sendall(encode_frame("hello", meta={"role": role, "session": "cd" * 16}))
    for sock in (p0, p1):
        assert read_frame(sock)[0] == "keys"
    huge = {"kind": "mul", "params": {"a": [1 << 20, 1 << 20], "b": [1 << 20, 1 << 20]}}
    p1.sendall(encode_frame("req", meta={**huge, "seq": 0}))
    assert "exceeds the dealer's cap" in _refusal(p1)
    p0.close()
    _correct_client_still_served(processes, tokenizer)


def test_the_dealer_survives_descriptor_exhaustion(processes, tokenizer):
    """With 64 descriptors, 100 connections exhaust them: accept() fails with EMFILE. The
    dealer must neither exit nor spin; once the connections go, it serves again."""
    _w, dealer, _server = processes
    pid = dealer.proc.pid
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, old[1]))
    socks = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", dealer.port), timeout=5))
        time.sleep(2)
        assert dealer.proc.poll() is None, "the dealer exited under descriptor pressure"
    finally:
        for sock in socks:
            sock.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
    time.sleep(12)  # the silent connections it did accept time out (10 s handshake)
    assert dealer.proc.poll() is None
    assert "cannot accept a connection" in dealer.log()
    _correct_client_still_served(processes, tokenizer)


def test_a_client_tokenizing_for_another_vocabulary_is_stopped_before_any_input(
    processes, tokenizer
):
    """Ids from another encoder's tokenizer (MPNet's 30,527 tokens against this MiniLM-shaped
    model's) would run and classify a different text: the client checks the server's card."""
    from privformer.errors import InputError

    w, dealer, server = processes
    ids, mask = encode_text(TEXT, N, tokenizer("minilm"))
    with pytest.raises(InputError, match=f"vocabulary of {w.vocab} tokens"):
        classify_remote(
            ids, mask, ("127.0.0.1", server.port), ("127.0.0.1", dealer.port), vocab=w.vocab + 5
        )
    _correct_client_still_served(processes, tokenizer)
