"""Framed, versioned, length-checked messages between parties, with byte and round counters.

A frame is ``MAGIC | version (u16) | header length (u32) | payload length (u64) | header (JSON)
| payload`` where the header lists the tensors (dtype, shape) whose raw bytes make up the payload.
Every size is checked before anything is allocated, so a truncated or malicious frame raises
``WireFormatError`` instead of exhausting memory or mis-reading data.

Every protocol step is an ``exchange``: both parties send one frame (possibly empty) and receive
one; that is one round. ``Stats`` counts bytes and rounds per operator; ``NetworkModel`` turns the
counts into a time for a given latency and bandwidth, and can also enforce it with sleeps.

A party that must abandon a session sends an ``error`` frame (``send_error``) before closing;
the other side's next read raises ``PeerError`` with that message instead of a bare "connection
closed". Waits are bounded: ``HANDSHAKE_TIMEOUT_S`` for a connection's first frame,
``IDLE_TIMEOUT_S`` between protocol steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from privformer.errors import PeerError, WireFormatError

MAGIC = b"PFMP"
VERSION = 1
_PREFIX = struct.Struct("!4sHIQ")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 31
_DTYPES = {"i64": torch.int64, "f64": torch.float64, "u8": torch.uint8}
_NAMES = {v: k for k, v in _DTYPES.items()}
#: Frames larger than this are sent from a helper thread so two simultaneous large sends
#: cannot deadlock on full socket buffers.
_THREAD_SEND_BYTES = 1 << 16


@dataclass
class OpStats:
    bytes_sent: int = 0
    bytes_recv: int = 0
    rounds: int = 0
    #: Sum over rounds of max(bytes sent, bytes received): the bytes a full-duplex link must carry
    #: one after the other, which is what a bandwidth cap delays.
    flight_bytes: int = 0

    def add(self, other: OpStats) -> None:
        self.bytes_sent += other.bytes_sent
        self.bytes_recv += other.bytes_recv
        self.rounds += other.rounds
        self.flight_bytes += other.flight_bytes

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Stats:
    """Counters of one party, in total and per outermost operator scope."""

    total: OpStats = field(default_factory=OpStats)
    per_op: dict[str, OpStats] = field(default_factory=dict)
    dealer_bytes_sent: int = 0
    dealer_bytes_recv: int = 0
    #: Wall seconds spent inside each outermost operator scope (compute and communication).
    seconds: dict[str, float] = field(default_factory=dict)
    _scope: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def op(self, name: str) -> Iterator[None]:
        outermost = not self._scope
        self._scope.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._scope.pop()
            if outermost:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def record(self, sent: int, recv: int) -> None:
        step = OpStats(sent, recv, 1, max(sent, recv))
        self.total.add(step)
        name = self._scope[0] if self._scope else "other"
        self.per_op.setdefault(name, OpStats()).add(step)

    def snapshot(self) -> dict:
        return {
            "total": self.total.as_dict(),
            "per_op": {k: v.as_dict() for k, v in sorted(self.per_op.items())},
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
            "dealer_bytes_sent": self.dealer_bytes_sent,
            "dealer_bytes_recv": self.dealer_bytes_recv,
        }


@dataclass(frozen=True)
class NetworkModel:
    """A link with a round-trip time and a bandwidth. Each round costs the one-way delay, RTT/2,
    plus its larger direction's bytes at the cap: in a round both parties send at once, and
    each sends its next round as soon as this one's frame has arrived. (Charging a whole RTT per
    round over-counted the runs measured through network namespaces by rounds x RTT/2; this
    model agrees with them within 4% on the WAN: README, "A real emulated network".)

    ``emulation`` says what a ``Channel`` given this model does: ``"sleep"`` stretches every round
    to ``round_time`` (no real link); ``"delay"`` is for a real rate-capped link
    (``transport.netns``): it only holds each received frame for RTT/2, the propagation delay."""

    rtt_s: float
    bandwidth_bps: float
    name: str = ""
    emulation: str = "sleep"

    def __post_init__(self) -> None:
        if self.emulation not in ("sleep", "delay"):
            raise ValueError(f"emulation must be 'sleep' or 'delay', not {self.emulation!r}")

    def round_time(self, flight_bytes: int) -> float:
        return self.rtt_s / 2 + 8.0 * flight_bytes / self.bandwidth_bps

    def time(self, stats: OpStats | dict) -> float:
        d = stats.as_dict() if isinstance(stats, OpStats) else stats
        return d["rounds"] * self.rtt_s / 2 + 8.0 * d["flight_bytes"] / self.bandwidth_bps


#: The paper's settings (CipherPrune, Table 1): LAN 3 Gbps / 0.8 ms, WAN 200 Mbps / 40 ms.
LAN = NetworkModel(0.8e-3, 3e9, "LAN")
WAN = NetworkModel(40e-3, 200e6, "WAN")


#: Seconds to wait for a new connection's first frame (a silent connection is dropped).
HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds to wait for the other side of a protocol step before giving up (a peer that is gone or
#: runs a different program otherwise hangs the party). One step's compute on the slower side
#: must fit: BERT-base's largest step at 512 tokens takes a few seconds on 2 cores.
IDLE_TIMEOUT_S = 120.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError as exc:
            raise WireFormatError(
                f"no data from the other side for {sock.gettimeout():.0f} s: it is gone or the "
                "parties run different programs (check model, pruning and length)"
            ) from exc
        if k == 0:
            raise WireFormatError(f"connection closed after {got} of {n} bytes of a frame")
        got += k
    return bytes(buf)


def encode_frame(
    kind: str, tensors: Sequence[torch.Tensor] = (), meta: dict | None = None
) -> bytes:
    specs = []
    blobs = []
    for t in tensors:
        t = t.contiguous()
        if t.dtype not in _NAMES:
            raise WireFormatError(f"cannot send dtype {t.dtype}")
        specs.append([_NAMES[t.dtype], list(t.shape)])
        blobs.append(t.numpy().tobytes())
    header = json.dumps({"kind": kind, "tensors": specs, "meta": meta or {}}).encode()
    payload = b"".join(blobs)
    return _PREFIX.pack(MAGIC, VERSION, len(header), len(payload)) + header + payload


def send_error(sock: socket.socket, detail: str) -> None:
    """Tell the other side why this side abandons the session (best effort, then close)."""
    with contextlib.suppress(OSError):
        sock.settimeout(2.0)
        sock.sendall(encode_frame("error", meta={"detail": detail[:2000]}))
    with contextlib.suppress(OSError):
        sock.close()


def read_frame(sock: socket.socket) -> tuple[str, list[torch.Tensor], dict, int]:
    """One frame from the socket: (kind, tensors, meta, bytes read). An ``error`` frame from
    the other side raises ``PeerError`` with its message."""
    magic, version, hlen, plen = _PREFIX.unpack(_recv_exact(sock, _PREFIX.size))
    if magic != MAGIC:
        raise WireFormatError(f"bad frame magic {magic!r}")
    if version != VERSION:
        raise WireFormatError(f"unsupported frame version {version} (this build speaks {VERSION})")
    if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
        raise WireFormatError(f"frame too large: header {hlen} B, payload {plen} B")
    try:
        header = json.loads(_recv_exact(sock, hlen))
        kind, specs, meta = header["kind"], header["tensors"], header["meta"]
        if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(specs, list):
            raise ValueError("kind, tensors and meta must be a string, a list and an object")
        sizes = []
        for dtype, shape in specs:
            if dtype not in _DTYPES or any((not isinstance(s, int)) or s < 0 for s in shape):
                raise ValueError(f"bad tensor spec {dtype} {shape}")
            sizes.append(math.prod(shape) * torch.empty((), dtype=_DTYPES[dtype]).element_size())
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"malformed frame header: {exc}") from exc
    if kind == "error":
        raise PeerError(f"the other party ended the session: {meta.get('detail', '?')}")
    if sum(sizes) != plen:
        raise WireFormatError(f"frame payload is {plen} B but its header describes {sum(sizes)} B")
    payload = _recv_exact(sock, plen)
    tensors = []
    offset = 0
    for (dtype, shape), size in zip(specs, sizes, strict=True):
        chunk = bytearray(payload[offset : offset + size])
        offset += size
        t = (
            torch.frombuffer(chunk, dtype=_DTYPES[dtype])
            if size
            else torch.empty(0, dtype=_DTYPES[dtype])
        )
        tensors.append(t.reshape(shape))
    return kind, tensors, meta, _PREFIX.size + hlen + plen


def tune_socket(sock: socket.socket, timeout_s: float = IDLE_TIMEOUT_S) -> None:
    sock.settimeout(timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)


def accept(
    listener: socket.socket, warn: Callable[[str], None]
) -> tuple[socket.socket, Any] | None:
    """The next connection on ``listener``, or None once it is closed. A failing ``accept``
    (EMFILE: out of descriptors, ENOBUFS) is warned about at most every 10 s and retried:
    a server under descriptor pressure slows down instead of exiting."""
    last_warning = -math.inf
    while True:
        try:
            return listener.accept()
        except OSError as exc:
            if listener.fileno() < 0:
                return None
            if time.monotonic() - last_warning > 10:
                warn(f"cannot accept a connection (will retry): {exc}")
                last_warning = time.monotonic()
            time.sleep(0.1)


class Channel:
    """A TCP connection to the other party: exchanges of frames, counted in ``stats``."""

    def __init__(
        self,
        sock: socket.socket,
        stats: Stats,
        network: NetworkModel | None = None,
        timeout_s: float = IDLE_TIMEOUT_S,
    ):
        tune_socket(sock, timeout_s)
        self.sock = sock
        self.stats = stats
        #: When set, every round is stretched to the model's time by sleeping.
        self.network = network

    def exchange(self, tensors: Sequence[torch.Tensor] = (), kind: str = "x") -> list[torch.Tensor]:
        """Send our tensors and receive the other party's, as one round."""
        start = time.perf_counter()
        frame = encode_frame(kind, tensors)
        error: list[BaseException] = []
        if len(frame) > _THREAD_SEND_BYTES:

            def send() -> None:
                try:
                    self.sock.sendall(frame)
                except BaseException as exc:  # reported to the caller after the join
                    error.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            got_kind, got, _meta, nrecv = read_frame(self.sock)
            sender.join()
            if error:
                raise error[0]
        else:
            self.sock.sendall(frame)
            got_kind, got, _meta, nrecv = read_frame(self.sock)
        if got_kind != kind:
            raise WireFormatError(
                f"protocol desynchronised: expected a {kind!r} frame, got {got_kind!r}"
            )
        self.stats.record(len(frame), nrecv)
        if self.network is not None and self.network.emulation == "delay":
            time.sleep(self.network.rtt_s / 2)  # the frame's last byte crossing the link
        elif self.network is not None:
            wait = self.network.round_time(max(len(frame), nrecv)) - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
