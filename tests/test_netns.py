"""The emulated network (``transport.netns``): namespaces made and always removed, a real rate
cap on the client-server link, and the Channel's propagation delay.

Needs root and iproute2, as the bench that uses it; CI machines of this kind have both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from privformer.crypto.mpc.channel import Channel, NetworkModel, Stats
from privformer.transport.netns import EmulatedNetwork, LinkProfile, namespaces

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="network namespaces need root and iproute2",
)

#: Receives N bytes on a port and prints the seconds from the first byte to the last.
SINK = """
import socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn, _ = srv.accept()
got, start = 0, None
while got < int(sys.argv[2]):
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    start = start or time.perf_counter()
    got += len(chunk)
print(got, time.perf_counter() - start)
"""
#: Connects to HOST:PORT and sends N bytes.
SOURCE = """
import socket, sys, time
for _ in range(100):
    try:
        conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
        break
    except OSError:
        time.sleep(0.05)
conn.sendall(b"x" * int(sys.argv[3]))
conn.close()
"""


def _transfer(net: EmulatedNetwork, sender: str, receiver: str, size: int) -> float:
    """Seconds ``size`` bytes take from ``sender``'s namespace to ``receiver``'s."""
    sink = subprocess.Popen(
        net.wrap(receiver, [sys.executable, "-c", SINK, "7301", str(size)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    subprocess.run(
        net.wrap(
            sender, [sys.executable, "-c", SOURCE, net.address(receiver, sender), "7301", str(size)]
        ),
        check=True,
        timeout=60,
    )
    out, _ = sink.communicate(timeout=60)
    got, seconds = out.split()
    assert int(got) == size
    return float(seconds)


def test_namespaces_are_removed_even_when_a_party_fails():
    before = set(namespaces())
    made: set[str] = set()
    with (
        pytest.raises(subprocess.CalledProcessError),
        EmulatedNetwork(LinkProfile("test", 100e6, 0.01)) as net,
    ):
        made = set(net.ns.values())
        assert made <= set(namespaces())
        failing = [sys.executable, "-c", "raise SystemExit(3)"]
        subprocess.run(net.wrap("client", failing), check=True)
    assert made
    assert not made & set(namespaces())
    assert set(namespaces()) == before


def test_the_client_server_link_is_rate_capped_and_the_dealer_links_are_not():
    """4 MB at 40 Mbit/s take >= 0.8 s over the shaped link (0.84 s at the cap; the bucket's
    2 ms burst lets a little through early); the unshaped dealer link carries them far faster."""
    size = 4 << 20
    with EmulatedNetwork(LinkProfile("test", 40e6, 0.01)) as net:
        shaped = _transfer(net, "client", "server", size)
        free = _transfer(net, "client", "dealer", size)
    assert shaped >= 0.8, shaped
    assert free < shaped / 4, (free, shaped)


def test_delay_emulation_holds_each_round_for_half_the_rtt():
    """Each exchange over a real socket is held RTT/2 on receipt: 10 rounds at 40 ms RTT take
    >= 0.2 s, where the same rounds without a network model take a few milliseconds."""
    link = NetworkModel(0.04, 1e9, "test", emulation="delay")
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    left, right = Channel(a, Stats(), link), Channel(b, Stats(), link)
    other = threading.Thread(
        target=lambda: [right.exchange([torch.zeros(4, dtype=torch.int64)]) for _ in range(10)]
    )
    other.start()
    start = time.perf_counter()
    for _ in range(10):
        left.exchange([torch.ones(4, dtype=torch.int64)])
    elapsed = time.perf_counter() - start
    other.join()
    left.close(), right.close()
    assert elapsed >= 0.2, elapsed
    assert left.stats.total.rounds == 10
