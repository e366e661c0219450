"""CipherPrune's processes: the dealer and server loops and the client's remote call.

- dealer: ``run_dealer`` (``privformer cipherprune dealer``), hands out correlated randomness;
- server: ``run_cipherprune_server`` (``privformer cipherprune serve``), weights and thresholds;
- client: ``classify_remote`` (``privformer cipherprune classify``), holds the text.

Each server announces its bound port through ``processes.announce_port``. What a session
computes is ``privformer.protocols.cipherprune.session``.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import torch

from privformer.crypto.mpc.channel import NetworkModel
from privformer.crypto.mpc.dealer import Dealer
from privformer.crypto.mpc.party import accept_client, connect_client
from privformer.errors import InputError, WireFormatError
from privformer.protocols.cipherprune.format import load_classifier
from privformer.protocols.cipherprune.session import SecureResult, client_session, server_session
from privformer.transport.processes import announce_port


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, meaning 127.0.0.1) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def run_dealer(host: str = "127.0.0.1", port: int = 0, ready_file: str | None = None) -> None:
    """Serve correlated randomness to any number of sessions until killed."""
    dealer = Dealer(host, port)
    announce_port(ready_file, dealer.port)
    dealer.serve_forever()


def run_cipherprune_server(
    model_dir: str | Path,
    dealer: tuple[str, int],
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: str | None = None,
    max_sessions: int | None = None,
    network: NetworkModel | None = None,
) -> None:
    """Serve secure classifications, one session at a time (each is CPU-bound)."""
    w, pruning = load_classifier(model_dir)
    listener = socket.create_server((host, port))
    announce_port(ready_file, listener.getsockname()[1])
    served = 0
    while max_sessions is None or served < max_sessions:
        conn, _addr = listener.accept()
        served += 1
        try:
            party = accept_client(conn, dealer, network)
        except (WireFormatError, OSError) as exc:
            print(f"refused a session: {exc}", flush=True)
            conn.close()
            continue
        try:
            trace = server_session(party, w, pruning)
            print(f"session done: tokens per layer {trace.tokens_per_layer}", flush=True)
        except (WireFormatError, OSError, InputError) as exc:
            print(f"session failed: {exc}", flush=True)
        finally:
            party.close()
    listener.close()


def classify_remote(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    server: tuple[str, int],
    dealer: tuple[str, int],
    network: NetworkModel | None = None,
) -> SecureResult:
    """The client's side of one secure classification against a running server and dealer."""
    start = time.perf_counter()
    party = connect_client(server, dealer, network)
    try:
        logits, trace, _ops = client_session(party, input_ids, attention_mask)
    finally:
        party.close()
    return SecureResult(logits, trace, party.stats.snapshot(), time.perf_counter() - start)
