"""The dealer (trusted third party of CrypTen's TTP mode) and the parties' side of it.

The dealer hands out correlated randomness and never sees inputs, weights or outputs. It shares
an AES key with each party; party 0 draws all of its correlated values from its key, party 1
draws the random parts from its key, and the dealer sends only what depends on both (the
"correction", e.g. c1 = (a0 + a1)(b0 + b1) - c0 of a Beaver triple). Party 1 announces each request
(its kind and shapes; both parties run the same program, so party 0 knows them too).

Kinds (shares are of Z_{2^64}; "bits" means 0/1 values; binary shares combine with XOR):

- ``mul`` / ``matmul``: Beaver triple a, b, c = a * b (or a @ b), arithmetic shares.
- ``onesided_mul`` / ``onesided_matmul``: for x (shared) times W (party 1's plaintext weight):
  party 0 gets A and C0, party 1 gets the weight mask B (one per weight, fixed per session) and
  C1, with C0 + C1 = A * B (or A @ B).
- ``and``: bitwise triple on 64-bit words, binary shares.
- ``dabit``: a random bit r with arithmetic and binary shares.
- ``trunc``: r uniform in the ring, shares of r, of r >> bits (logical) and of msb(r).
- ``perm``: for permuting rows by pi known to ``owner`` (drawn from the owner's key): the other
  party gets masks a, r; the owner gets delta = a[pi] - r.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

import torch

from privformer.crypto.mpc import fixed
from privformer.crypto.mpc.channel import Stats, encode_frame, read_frame, tune_socket
from privformer.crypto.mpc.prg import Stream, new_key
from privformer.errors import WireFormatError

log = logging.getLogger(__name__)

KINDS = ("mul", "matmul", "onesided_mul", "onesided_matmul", "and", "dabit", "trunc", "perm")
_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": torch.matmul,
}


def _out_shape(op: str, a: list[int], b: list[int]) -> tuple[int, ...]:
    meta = _OPS[op](torch.empty(a, device="meta"), torch.empty(b, device="meta"))
    return tuple(meta.shape)


def receiver(kind: str, params: dict) -> int:
    """Which party gets the dealer's correction for this request."""
    if kind == "perm":
        return int(params["owner"])
    return 1


def weight_stream(key1: bytes, name: str) -> Stream:
    """Party 1's mask of one weight: the same for every request in a session."""
    return Stream(key1, f"weight|{name}")


def local_part(kind: str, params: dict, role: int, key: bytes, seq: int) -> dict[str, torch.Tensor]:
    """The values a party draws from its own key for request ``seq``."""
    s = Stream(key, f"req|{seq}")
    if kind in ("mul", "matmul"):
        out = {"a": s.ring(params["a"]), "b": s.ring(params["b"])}
        if role == 0:
            out["c"] = s.ring(_out_shape(kind, params["a"], params["b"]))
        return out
    if kind in ("onesided_mul", "onesided_matmul"):
        op = kind.split("_", 1)[1]
        if role == 0:
            return {"A": s.ring(params["a"]), "C": s.ring(_out_shape(op, params["a"], params["b"]))}
        return {"B": weight_stream(key, params["w"]).ring(params["b"])}
    if kind == "and":
        out = {"a": s.ring(params["shape"]), "b": s.ring(params["shape"])}
        if role == 0:
            out["c"] = s.ring(params["shape"])
        return out
    if kind == "dabit":
        return {"ra": s.ring(params["shape"]), "rb": s.bits(params["shape"])} if role == 0 else {}
    if kind == "trunc":
        shape = params["shape"]
        return {"r": s.ring(shape), "rs": s.ring(shape), "m": s.ring(shape)} if role == 0 else {}
    if kind == "perm":
        shape = params["shape"]
        if role == int(params["owner"]):
            return {"pi": s.permutation(shape[0])}
        return {"a": s.ring(shape), "r": s.ring(shape)}
    raise WireFormatError(f"unknown correlation kind {kind!r}")


def correction(
    kind: str, params: dict, keys: tuple[bytes, bytes], own: Stream, seq: int
) -> dict[str, torch.Tensor]:
    """What the dealer sends to ``receiver(kind, params)`` for request ``seq``."""
    p0 = local_part(kind, params, 0, keys[0], seq)
    p1 = local_part(kind, params, 1, keys[1], seq)
    if kind in ("mul", "matmul"):
        c = _OPS[kind](p0["a"] + p1["a"], p0["b"] + p1["b"])
        return {"c": c - p0["c"]}
    if kind in ("onesided_mul", "onesided_matmul"):
        return {"C": _OPS[kind.split("_", 1)[1]](p0["A"], p1["B"]) - p0["C"]}
    if kind == "and":
        return {"c": ((p0["a"] ^ p1["a"]) & (p0["b"] ^ p1["b"])) ^ p0["c"]}
    if kind == "dabit":
        r = own.bits(params["shape"])
        return {"ra": r - p0["ra"], "rb": r ^ p0["rb"]}
    if kind == "trunc":
        r = own.ring(params["shape"])
        return {
            "r": r - p0["r"],
            "rs": fixed.logical_shift_right(r, int(params["bits"])) - p0["rs"],
            "m": fixed.msb(r) - p0["m"],
        }
    if kind == "perm":
        owner, other = (p0, p1) if int(params["owner"]) == 0 else (p1, p0)
        return {"delta": other["a"][owner["pi"]] - other["r"]}
    raise WireFormatError(f"unknown correlation kind {kind!r}")


class DealerLink:
    """A party's connection to the dealer: ``get(kind, **params)`` returns its correlated values."""

    def __init__(self, sock: socket.socket, role: int, key: bytes, stats: Stats):
        self.sock, self.role, self.key, self.stats = sock, role, key, stats
        self.seq = 0

    def get(self, kind: str, **params) -> dict[str, torch.Tensor]:
        params = {
            k: (list(v) if isinstance(v, tuple | torch.Size) else v) for k, v in params.items()
        }
        seq = self.seq
        self.seq += 1
        if self.role == 1:
            frame = encode_frame("req", meta={"kind": kind, "params": params, "seq": seq})
            self.sock.sendall(frame)
            self.stats.dealer_bytes_sent += len(frame)
        values = local_part(kind, params, self.role, self.key, seq)
        if receiver(kind, params) == self.role:
            got_kind, tensors, meta, nbytes = read_frame(self.sock)
            self.stats.dealer_bytes_recv += nbytes
            if got_kind != "corr" or meta.get("seq") != seq or meta.get("kind") != kind:
                raise WireFormatError(
                    f"dealer out of step: expected correction {seq} ({kind}), got "
                    f"{got_kind} {meta.get('seq')} ({meta.get('kind')})"
                )
            values.update(zip(meta["names"], tensors, strict=True))
        return values

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_frame("bye"))
        with contextlib.suppress(OSError):
            self.sock.close()


def _serve_pair(socks: dict[int, socket.socket], keys: tuple[bytes, bytes]) -> None:
    own_key = new_key()
    try:
        while True:
            kind, _tensors, meta, _n = read_frame(socks[1])
            if kind == "bye":
                return
            if kind != "req":
                raise WireFormatError(f"dealer expected a request, got {kind!r}")
            req_kind, params, seq = meta["kind"], meta["params"], int(meta["seq"])
            values = correction(req_kind, params, keys, Stream(own_key, f"own|{seq}"), seq)
            names = list(values)
            frame = encode_frame(
                "corr", [values[k] for k in names], {"seq": seq, "kind": req_kind, "names": names}
            )
            socks[receiver(req_kind, params)].sendall(frame)
    except (WireFormatError, OSError, KeyError, ValueError, TypeError) as exc:
        log.warning("dealer session ended: %s", exc)
    finally:
        for s in socks.values():
            with contextlib.suppress(OSError):
                s.close()


class Dealer:
    """Listens for pairs of parties (matched by session id) and serves each pair in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self._waiting: dict[str, dict[int, socket.socket]] = {}
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._hello, args=(conn,), daemon=True).start()

    def _hello(self, conn: socket.socket) -> None:
        tune_socket(conn)
        try:
            kind, _t, meta, _n = read_frame(conn)
            role, session = int(meta["role"]), str(meta["session"])
            if kind != "hello" or role not in (0, 1):
                raise WireFormatError("bad hello")
        except (WireFormatError, OSError, KeyError, ValueError) as exc:
            log.warning("dealer refused a connection: %s", exc)
            conn.close()
            return
        with self._lock:
            pair = self._waiting.setdefault(session, {})
            if role in pair:
                conn.close()
                return
            pair[role] = conn
            if len(pair) < 2:
                return
            del self._waiting[session]
        keys = (new_key(), new_key())
        for r in (0, 1):
            key = torch.frombuffer(bytearray(keys[r]), dtype=torch.uint8)
            pair[r].sendall(encode_frame("keys", [key]))
        _serve_pair(pair, keys)

    def close(self) -> None:
        self.listener.close()


def start_dealer_thread(host: str = "127.0.0.1") -> Dealer:
    """A dealer in a background thread (tests and single-machine runs)."""
    dealer = Dealer(host, 0)
    threading.Thread(target=dealer.serve_forever, daemon=True).start()
    return dealer
