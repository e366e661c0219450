"""CipherPrune's processes: the dealer and server loops and the client's remote call.

- dealer: ``run_dealer`` (``privformer cipherprune dealer``), hands out correlated randomness;
- server: ``run_cipherprune_server`` (``privformer cipherprune serve``), weights and thresholds;
- client: ``classify_remote`` (``privformer cipherprune classify``), holds the text.

Each server announces its bound port through ``processes.announce_port``. What a session
computes is ``privformer.protocols.cipherprune.session``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import torch

from privformer.crypto.mpc.channel import NetworkModel, accept, send_error
from privformer.crypto.mpc.dealer import (
    DEFAULT_MAX_ELEMENTS,
    PAIR_TIMEOUT_S,
    Dealer,
    request_cap,
)
from privformer.crypto.mpc.party import accept_client, connect_client
from privformer.errors import InputError, PeerError
from privformer.protocols.cipherprune.format import load_classifier
from privformer.protocols.cipherprune.session import SecureResult, client_session, server_session
from privformer.transport.processes import announce_port


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, meaning 127.0.0.1) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def run_dealer(
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: str | None = None,
    model_dir: str | Path | None = None,
    max_connections: int = 256,
    pair_timeout_s: float = PAIR_TIMEOUT_S,
) -> None:
    """Serve correlated randomness to any number of sessions until killed. With ``model_dir``
    the per-request allocation cap comes from that model's shapes."""
    cap = DEFAULT_MAX_ELEMENTS
    if model_dir is not None:
        w, _pruning = load_classifier(model_dir)
        cap = request_cap(w.hidden, w.intermediate, w.heads, w.max_positions, w.vocab)
    dealer = Dealer(
        host,
        port,
        max_connections=max_connections,
        pair_timeout_s=pair_timeout_s,
        max_request_elements=cap,
    )
    announce_port(ready_file, dealer.port)
    dealer.serve_forever()


class CipherPruneServer:
    """Accepts clients and runs up to ``max_concurrent`` sessions at once, each in a thread.

    A client beyond that limit gets an ``error`` frame ("busy") at once. Every failure of a
    session (malformed frames, wrong shapes, a client that goes silent for ``IDLE_TIMEOUT_S``)
    is logged once with the peer's address, reported to the client when the socket still
    works, and ends only that session; an ``accept`` that fails (EMFILE) is retried.
    """

    def __init__(
        self,
        model_dir: str | Path,
        dealer: tuple[str, int],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_concurrent: int = 2,
        network: NetworkModel | None = None,
    ):
        self.weights, self.pruning = load_classifier(model_dir)
        self.dealer, self.network = dealer, network
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self._threads: list[threading.Thread] = []

    def serve(self, max_sessions: int | None = None) -> None:
        """Serve until killed, or until ``max_sessions`` sessions were admitted and finished."""
        admitted = 0
        while max_sessions is None or admitted < max_sessions:
            got = accept(self.listener, lambda message: print(message, flush=True))
            if got is None:
                break
            conn, addr = got
            if not self._slots.acquire(blocking=False):
                print(f"{addr[0]}:{addr[1]}: refused, {self.max_concurrent} sessions running")
                send_error(
                    conn, f"server busy ({self.max_concurrent} sessions running), retry later"
                )
                continue
            admitted += 1
            thread = threading.Thread(target=self._session, args=(conn, addr), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        for thread in self._threads:
            thread.join()
        self.listener.close()

    def _session(self, conn: socket.socket, addr: tuple) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        party = None
        try:
            party = accept_client(conn, self.dealer, self.network)
            trace = server_session(party, self.weights, self.pruning)
            print(f"{peer}: session done, tokens per layer {trace.tokens_per_layer}", flush=True)
        except Exception as exc:  # noqa: BLE001  (one session's failure never stops the server)
            print(f"{peer}: session failed: {type(exc).__name__}: {exc}", flush=True)
            if not isinstance(exc, PeerError | OSError):
                send_error(conn, f"server: {type(exc).__name__}: {exc}")
        finally:
            if party is not None:
                party.close()
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()


def run_cipherprune_server(
    model_dir: str | Path,
    dealer: tuple[str, int],
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: str | None = None,
    max_sessions: int | None = None,
    network: NetworkModel | None = None,
    max_concurrent: int = 2,
) -> None:
    """Serve secure classifications, up to ``max_concurrent`` at once."""
    server = CipherPruneServer(
        model_dir, dealer, host, port, max_concurrent=max_concurrent, network=network
    )
    announce_port(ready_file, server.port)
    server.serve(max_sessions)


def classify_remote(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    server: tuple[str, int],
    dealer: tuple[str, int],
    network: NetworkModel | None = None,
    vocab: int | None = None,
) -> SecureResult:
    """The client's side of one secure classification against a running server and dealer;
    ``vocab`` is the client tokenizer's size, checked against the server's model."""
    start = time.perf_counter()
    party = connect_client(server, dealer, network)
    try:
        logits, trace, _ops = client_session(party, input_ids, attention_mask, vocab=vocab)
    finally:
        party.close()
    return SecureResult(logits, trace, party.stats.snapshot(), time.perf_counter() - start)
