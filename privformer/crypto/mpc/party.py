"""One party of a two-party session: its peer channel, dealer link, streams and statistics.

Party 1 (the server) listens; party 0 (the client) connects and sends a random session id and
a pairwise key (used to draw the other party's share of a private input, so sharing an input
costs no traffic). The server admits the session with an ``accept`` frame (or refuses it with an
``error`` frame, e.g. when busy); both then connect to the dealer with the session id. Every
wait of the handshake is bounded by ``HANDSHAKE_TIMEOUT_S`` (the dealer pairing by
the dealer's ``PAIR_TIMEOUT_S``); protocol steps by ``IDLE_TIMEOUT_S``.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from privformer.crypto.mpc.channel import (
    HANDSHAKE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    Channel,
    NetworkModel,
    Stats,
    encode_frame,
    read_frame,
    tune_socket,
)
from privformer.crypto.mpc.dealer import PAIR_TIMEOUT_S, DealerLink, start_dealer_thread
from privformer.crypto.mpc.prg import KEY_BYTES, Stream, new_key
from privformer.errors import WireFormatError

CLIENT, SERVER = 0, 1
#: Session ids are 16 random bytes in hex.
SESSION_ID_CHARS = 32


@dataclass
class Party:
    role: int
    peer: Channel
    dealer: DealerLink
    pair_key: bytes
    stats: Stats
    #: Opened weight masks F = W - B, by weight name (party 0 keeps them for the session).
    weight_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    _pair_seq: int = 0

    def pair_stream(self) -> Stream:
        """The next stream both parties can draw (for PRG-compressed input shares)."""
        self._pair_seq += 1
        return Stream(self.pair_key, f"pair|{self._pair_seq}")

    def close(self) -> None:
        self.dealer.close()
        self.peer.close()


def _dealer_link(dealer_addr: tuple[str, int], role: int, session: str, stats: Stats) -> DealerLink:
    sock = socket.create_connection(dealer_addr, timeout=HANDSHAKE_TIMEOUT_S)
    try:
        # The keys come once the other party has joined too: wait as long as the dealer does.
        tune_socket(sock, PAIR_TIMEOUT_S + HANDSHAKE_TIMEOUT_S)
        sock.sendall(encode_frame("hello", meta={"role": role, "session": session}))
        kind, tensors, _meta, _n = read_frame(sock)
        if kind != "keys" or len(tensors) != 1 or tensors[0].numel() != KEY_BYTES:
            raise WireFormatError("dealer sent no key")
        tune_socket(sock, IDLE_TIMEOUT_S)
    except BaseException:
        sock.close()
        raise
    return DealerLink(sock, role, bytes(tensors[0].numpy().tobytes()), stats)


def connect_client(
    server_addr: tuple[str, int],
    dealer_addr: tuple[str, int],
    network: NetworkModel | None = None,
) -> Party:
    """Party 0: connect to the server, wait to be admitted, then join the dealer."""
    stats = Stats()
    sock = socket.create_connection(server_addr, timeout=HANDSHAKE_TIMEOUT_S)
    try:
        tune_socket(sock, HANDSHAKE_TIMEOUT_S)
        session = secrets.token_hex(SESSION_ID_CHARS // 2)
        pair_key = new_key()
        key_t = torch.frombuffer(bytearray(pair_key), dtype=torch.uint8)
        sock.sendall(encode_frame("session", [key_t], {"session": session}))
        kind, _t, _meta, _n = read_frame(sock)  # PeerError if the server refuses (e.g. busy)
        if kind != "accept":
            raise WireFormatError(f"server answered the session request with {kind!r}")
        dealer = _dealer_link(dealer_addr, 0, session, stats)
    except BaseException:
        sock.close()
        raise
    return Party(CLIENT, Channel(sock, stats, network), dealer, pair_key, stats)


def read_session_request(conn: socket.socket) -> tuple[str, bytes]:
    """Party 1: the client's first frame, checked: (session id, pairwise key)."""
    tune_socket(conn, HANDSHAKE_TIMEOUT_S)
    kind, tensors, meta, _n = read_frame(conn)
    if kind != "session" or len(tensors) != 1 or tensors[0].dtype != torch.uint8:
        raise WireFormatError(f"expected a session request, got a {kind!r} frame")
    if tensors[0].numel() != KEY_BYTES:
        raise WireFormatError(f"session key has {tensors[0].numel()} bytes, need {KEY_BYTES}")
    session = meta.get("session")
    if (
        not isinstance(session, str)
        or len(session) != SESSION_ID_CHARS
        or any(c not in "0123456789abcdef" for c in session)
    ):
        raise WireFormatError(f"session id must be {SESSION_ID_CHARS} hex digits")
    return session, bytes(tensors[0].numpy().tobytes())


def accept_client(
    conn: socket.socket, dealer_addr: tuple[str, int], network: NetworkModel | None = None
) -> Party:
    """Party 1: take a client's connection, admit it and join its dealer session."""
    stats = Stats()
    session, pair_key = read_session_request(conn)
    conn.sendall(encode_frame("accept"))
    dealer = _dealer_link(dealer_addr, 1, session, stats)
    return Party(SERVER, Channel(conn, stats, network), dealer, pair_key, stats)


def run_local(
    client_fn: Callable[[Party], Any],
    server_fn: Callable[[Party], Any],
    network: NetworkModel | None = None,
) -> tuple[Any, Any]:
    """Run both parties in threads of this process over real localhost TCP, with a dealer
    thread; returns (client result, server result). For tests and quick experiments: the
    process-separated deployment is ``privformer cipherprune``."""
    dealer = start_dealer_thread()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def server() -> None:
        try:
            conn, _ = listener.accept()
            party = accept_client(conn, ("127.0.0.1", dealer.port), network)
            try:
                results[SERVER] = server_fn(party)
            finally:
                party.close()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    try:
        party = connect_client(("127.0.0.1", port), ("127.0.0.1", dealer.port), network)
        try:
            results[CLIENT] = client_fn(party)
        finally:
            party.close()
    finally:
        thread.join(timeout=600)
        listener.close()
        dealer.close()
    if errors:
        raise errors[0]
    return results[CLIENT], results[SERVER]
