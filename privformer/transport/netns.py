"""A real emulated network for the 2PC parties: Linux network namespaces joined by veth pairs.

``EmulatedNetwork`` makes three namespaces (client, server, dealer), each party's processes run
inside its own (``wrap``), and tears them down on exit, also when a party failed:

    client ns ──veth (shaped: the link under test)── server ns
        └──────── veth ──── dealer ns ──── veth ────────┘     (unshaped)

The client-server veth carries the protocol's traffic through the kernel, its rate capped by a
``tbf`` qdisc on both ends (each direction gets the full rate, as a full-duplex link). The dealer
links are not shaped: the dealer stands in for an offline preprocessing phase, whose traffic
the paper's figures leave out too.

Propagation delay: this kernel ships without ``sch_netem`` (``tc qdisc add ... netem`` answers
"Specified qdisc kind is unknown"; ``tbf`` and ``htb`` exist), so the kernel cannot delay
packets. The parties' ``Channel`` adds it instead (``NetworkModel(emulation="delay")``): each
received frame is held for RTT/2 after its last byte arrived, which is when a link with that
one-way delay would have delivered it. Bytes and rate are real; the delay is emulated.

Needs root and iproute2 (``ip``, ``tc``). Namespaces are named ``pf-<tag>-<party>`` so that
``remove_stale`` can clear what a killed run left behind.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from privformer.errors import PrivformerError

PARTIES = ("client", "server", "dealer")
PREFIX = "pf-"


@dataclass(frozen=True)
class LinkProfile:
    """A link's rate and round-trip time (the paper's LAN and WAN)."""

    name: str
    rate_bps: float
    rtt_s: float


LAN = LinkProfile("LAN", 3e9, 0.8e-3)
WAN = LinkProfile("WAN", 200e6, 40e-3)


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise PrivformerError(f"`{' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Names of the network namespaces that exist now."""
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces a killed run left behind (those named ``prefix...``)."""
    gone = [ns for ns in namespaces() if ns.startswith(prefix)]
    for ns in gone:
        with contextlib.suppress(PrivformerError):
            _run("ip", "netns", "del", ns)
    return gone


class EmulatedNetwork:
    """Three namespaces and their links; a context manager that always removes what it made.

    ``address(party, peer)`` is the address at which ``peer`` reaches ``party``;
    ``wrap(party, argv)`` the command line that runs ``argv`` inside ``party``'s namespace."""

    def __init__(self, profile: LinkProfile, shaped: bool = True):
        """``shaped=False``: the same namespaces and links with no rate cap (a baseline)."""
        self.profile, self.shaped = profile, shaped
        self.tag = secrets.token_hex(2)
        self.octet = 16 + secrets.randbelow(200)  # 10.<octet>.<link>.0/24
        self.ns = {p: f"{PREFIX}{self.tag}-{p}" for p in PARTIES}
        self._addresses: dict[tuple[str, str], str] = {}
        self._made: list[str] = []

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the namespaces (their veths go with them)."""
        for ns in reversed(self._made):
            with contextlib.suppress(PrivformerError):
                _run("ip", "netns", "del", ns)
        self._made.clear()

    def _build(self) -> None:
        for party in PARTIES:
            _run("ip", "netns", "add", self.ns[party])
            self._made.append(self.ns[party])
            _run("ip", "-n", self.ns[party], "link", "set", "lo", "up")
        links = [
            ("client", "server", True),
            ("client", "dealer", False),
            ("server", "dealer", False),
        ]
        for index, (a, b, shaped) in enumerate(links, start=1):
            ends = {a: f"pf{self.tag}{index}a", b: f"pf{self.tag}{index}b"}
            _run("ip", "link", "add", ends[a], "type", "veth", "peer", "name", ends[b])
            for host, party in enumerate((a, b), start=1):
                address = f"10.{self.octet}.{index}.{host}"
                _run("ip", "link", "set", ends[party], "netns", self.ns[party])
                _run("ip", "-n", self.ns[party], "addr", "add", f"{address}/24", "dev", ends[party])
                _run("ip", "-n", self.ns[party], "link", "set", ends[party], "up")
                other = b if party == a else a
                self._addresses[(party, other)] = address
                if shaped and self.shaped:
                    self._shape(self.ns[party], ends[party])

    def _shape(self, ns: str, device: str) -> None:
        rate = self.profile.rate_bps
        # a bucket of 2 ms at the rate (at least 64 KB: one TSO segment) and a queue of 50 ms
        burst = max(int(rate / 8 * 2e-3), 64 << 10)
        _run(
            "tc", "-n", ns, "qdisc", "add", "dev", device, "root", "tbf",
            "rate", f"{int(rate)}bit", "burst", str(burst), "latency", "50ms",
        )  # fmt: skip

    def address(self, party: str, peer: str) -> str:
        """Where ``peer`` reaches ``party`` (e.g. the server's address for the client)."""
        return self._addresses[(party, peer)]

    def wrap(self, party: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``party``'s namespace."""
        return ["ip", "netns", "exec", self.ns[party], *argv]
