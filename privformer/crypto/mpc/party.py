"""One party of a two-party session: its peer channel, dealer link, streams and statistics.

Party 1 (the server) listens; party 0 (the client) connects and sends a random session id and
a pairwise key (used to draw the other party's share of a private input, so sharing an input
costs no traffic). Both then connect to the dealer with the session id.
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
    Channel,
    NetworkModel,
    Stats,
    encode_frame,
    read_frame,
    tune_socket,
)
from privformer.crypto.mpc.dealer import DealerLink, start_dealer_thread
from privformer.crypto.mpc.prg import KEY_BYTES, Stream, new_key
from privformer.errors import WireFormatError

CLIENT, SERVER = 0, 1


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
    sock = socket.create_connection(dealer_addr)
    tune_socket(sock)
    sock.sendall(encode_frame("hello", meta={"role": role, "session": session}))
    kind, tensors, _meta, _n = read_frame(sock)
    if kind != "keys" or len(tensors) != 1 or tensors[0].numel() != KEY_BYTES:
        raise WireFormatError("dealer sent no key")
    return DealerLink(sock, role, bytes(tensors[0].numpy().tobytes()), stats)


def connect_client(
    server_addr: tuple[str, int],
    dealer_addr: tuple[str, int],
    network: NetworkModel | None = None,
) -> Party:
    """Party 0: connect to the server and the dealer."""
    stats = Stats()
    sock = socket.create_connection(server_addr)
    session = secrets.token_hex(16)
    pair_key = new_key()
    key_t = torch.frombuffer(bytearray(pair_key), dtype=torch.uint8)
    sock.sendall(encode_frame("session", [key_t], {"session": session}))
    dealer = _dealer_link(dealer_addr, 0, session, stats)
    return Party(CLIENT, Channel(sock, stats, network), dealer, pair_key, stats)


def accept_client(
    conn: socket.socket, dealer_addr: tuple[str, int], network: NetworkModel | None = None
) -> Party:
    """Party 1: take a client's connection and join its dealer session."""
    stats = Stats()
    tune_socket(conn)
    kind, tensors, meta, _n = read_frame(conn)
    if kind != "session" or len(tensors) != 1 or tensors[0].numel() != KEY_BYTES:
        raise WireFormatError("client opened no session")
    pair_key = bytes(tensors[0].numpy().tobytes())
    dealer = _dealer_link(dealer_addr, 1, str(meta["session"]), stats)
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
