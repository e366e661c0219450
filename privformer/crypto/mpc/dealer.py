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
import math
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from privformer.crypto.mpc import fixed
from privformer.crypto.mpc.channel import (
    HANDSHAKE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    Stats,
    accept,
    encode_frame,
    read_frame,
    send_error,
    tune_socket,
)
from privformer.crypto.mpc.prg import Stream, new_key
from privformer.errors import WireFormatError

log = logging.getLogger(__name__)

#: Seconds a party waits at the dealer for the other party of its session.
PAIR_TIMEOUT_S = 30.0
#: Per-tensor cap when no model is given: ``request_cap`` of BERT-base (vocabulary 30,522,
#: 12 heads, FFN 3072) at 512 tokens is 25.2 M; 2^25 bounds one request at 256 MiB per tensor.
DEFAULT_MAX_ELEMENTS = 1 << 25
MAX_NDIM = 6

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


def _shape(value: object, what: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_NDIM
        or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in value)
    ):
        raise WireFormatError(f"{what} must be a list of at most {MAX_NDIM} sizes, got {value!r}")
    return value


def check_request(kind: object, params: object, max_elements: int) -> tuple[str, dict]:
    """Refuse a malformed request, or one asking for more than ``max_elements`` per tensor,
    before anything is allocated; return it typed."""
    if kind not in KINDS or not isinstance(params, dict):
        raise WireFormatError(f"unknown correlation kind {kind!r} or malformed parameters")
    shapes = []
    if kind in ("mul", "matmul", "onesided_mul", "onesided_matmul"):
        a, b = _shape(params.get("a"), "a"), _shape(params.get("b"), "b")
        shapes += [a, b]
        op = kind.removeprefix("onesided_")
        try:
            shapes.append(list(_out_shape(op, a, b)))
        except RuntimeError as exc:
            raise WireFormatError(f"{kind} shapes {a} and {b} do not combine: {exc}") from exc
        if kind.startswith("onesided") and not isinstance(params.get("w"), str):
            raise WireFormatError("a one-sided request needs its weight's name")
    else:
        shape = _shape(params.get("shape"), "shape")
        shapes.append(shape)
        if kind == "trunc" and not (
            isinstance(params.get("bits"), int) and 0 < params["bits"] < fixed.RING_BITS
        ):
            raise WireFormatError(f"trunc bits must lie in 1..{fixed.RING_BITS - 1}")
        if kind == "perm" and (params.get("owner") not in (0, 1) or not shape):
            raise WireFormatError("perm needs owner 0 or 1 and a shape of at least one axis")
    for shape in shapes:
        if math.prod(shape) > max_elements:
            raise WireFormatError(
                f"{kind} request of shape {shape} exceeds the dealer's cap of {max_elements:,} "
                "elements per tensor"
            )
    return str(kind), params


def _serve_pair(
    socks: dict[int, socket.socket], keys: tuple[bytes, bytes], max_elements: int
) -> None:
    own_key = new_key()
    try:
        while True:
            kind, _tensors, meta, _n = read_frame(socks[1])
            if kind == "bye":
                return
            if kind != "req":
                raise WireFormatError(f"dealer expected a request, got {kind!r}")
            req_kind, params, seq = meta.get("kind"), meta.get("params"), meta.get("seq")
            if not isinstance(seq, int):
                raise WireFormatError("request without a sequence number")
            req_kind, params = check_request(req_kind, params, max_elements)
            values = correction(req_kind, params, keys, Stream(own_key, f"own|{seq}"), seq)
            names = list(values)
            frame = encode_frame(
                "corr", [values[k] for k in names], {"seq": seq, "kind": req_kind, "names": names}
            )
            socks[receiver(req_kind, params)].sendall(frame)
    except WireFormatError as exc:
        log.warning("dealer session ended: %s", exc)
        for s in socks.values():
            send_error(s, f"dealer: {exc}")
    except Exception as exc:  # noqa: BLE001  (one session's failure never stops the dealer)
        log.warning("dealer session failed: %s: %s", type(exc).__name__, exc)
    finally:
        for s in socks.values():
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class _Waiting:
    """One half of a session, waiting for its other half."""

    conn: socket.socket
    paired: threading.Event = field(default_factory=threading.Event)


class Dealer:
    """Listens for pairs of parties (matched by session id) and serves each pair in a thread.

    Limits (each refusal is logged and the dealer keeps serving): ``max_connections`` open at
    once, an unpaired half waits ``pair_timeout_s``, each correlation request is capped at
    ``max_request_elements`` per tensor (``request_cap`` derives it from a model's shapes), and
    an ``accept`` that fails (e.g. EMFILE: out of descriptors) is retried, never fatal.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = 256,
        pair_timeout_s: float = PAIR_TIMEOUT_S,
        max_request_elements: int = DEFAULT_MAX_ELEMENTS,
    ):
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.pair_timeout_s = pair_timeout_s
        self.max_request_elements = max_request_elements
        self._slots = threading.BoundedSemaphore(max_connections)
        self._waiting: dict[str, dict[int, _Waiting]] = {}
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        while True:
            got = accept(self.listener, log.warning)  # None once the listener is closed
            if got is None:
                return
            conn, addr = got
            if not self._slots.acquire(blocking=False):
                log.warning("dealer refused %s: all connection slots are in use", addr)
                send_error(conn, "dealer: too many open connections, retry later")
                continue
            threading.Thread(target=self._hello, args=(conn, addr), daemon=True).start()

    def _hello(self, conn: socket.socket, addr: object) -> None:
        try:
            self._pair(conn, addr)
        except Exception as exc:  # noqa: BLE001  (a bad connection never stops the dealer)
            log.warning("dealer dropped %s: %s: %s", addr, type(exc).__name__, exc)
            with contextlib.suppress(OSError):
                conn.close()
        finally:
            self._slots.release()

    def _pair(self, conn: socket.socket, addr: object) -> None:
        tune_socket(conn, HANDSHAKE_TIMEOUT_S)
        try:
            kind, _t, meta, _n = read_frame(conn)
            role, session = meta.get("role"), meta.get("session")
            if kind != "hello" or role not in (0, 1) or not isinstance(session, str):
                raise WireFormatError("bad hello")
        except (WireFormatError, OSError) as exc:
            log.warning("dealer refused %s: %s", addr, exc)
            send_error(conn, f"dealer: {exc}")
            return
        me = _Waiting(conn)
        with self._lock:
            pair = self._waiting.setdefault(session, {})
            if role in pair:
                send_error(conn, "dealer: this session already has that party")
                return
            pair[role] = me
            complete = len(pair) == 2
            if complete:
                del self._waiting[session]
        if not complete:
            # The other half serves the pair; this thread only waits, or gives up.
            if not me.paired.wait(self.pair_timeout_s):
                with self._lock:
                    still_waiting = self._waiting.get(session, {}).get(role) is me
                    if still_waiting:
                        del self._waiting[session][role]
                        if not self._waiting[session]:
                            del self._waiting[session]
                if still_waiting:
                    log.warning("dealer: %s's other party never came", addr)
                    send_error(
                        conn, f"dealer: no other party joined within {self.pair_timeout_s} s"
                    )
                    return
            me.paired.wait()  # paired just at the deadline: the pair's thread owns the socket
            return
        other = pair[1 - role]
        other.paired.set()
        keys = (new_key(), new_key())
        socks = {r: pair[r].conn for r in (0, 1)}
        for r in (0, 1):
            key = torch.frombuffer(bytearray(keys[r]), dtype=torch.uint8)
            socks[r].sendall(encode_frame("keys", [key]))
            tune_socket(socks[r], IDLE_TIMEOUT_S)
        _serve_pair(socks, keys, self.max_request_elements)

    def close(self) -> None:
        self.listener.close()


def request_cap(
    hidden: int, intermediate: int, heads: int, max_positions: int, vocab: int = 0
) -> int:
    """The most elements one correlation request of this model's protocol can need at
    ``max_positions`` tokens: the one-hot embedding lookup (n x vocab, vocab x hidden), the
    weights, and elementwise work on activations and attention maps, which the comparisons
    batch up to 6 values per element into one request (measured on MiniLM; 8 leaves margin)."""
    n = max_positions
    return max(
        vocab * hidden, n * vocab, hidden * intermediate, 8 * n * intermediate, 8 * heads * n * n
    )


def start_dealer_thread(host: str = "127.0.0.1") -> Dealer:
    """A dealer in a background thread (tests and single-machine runs)."""
    dealer = Dealer(host, 0)
    threading.Thread(target=dealer.serve_forever, daemon=True).start()
    return dealer
