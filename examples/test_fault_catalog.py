"""One runnable example per kind of fault ustack can put on a test's link, each a test of
how a client (here the kernel's own sockets) survives it. Run with

    python -m pytest -p ustack.testing examples/test_fault_catalog.py

The marker (`@pytest.mark.ustack(...)`) sets the link up before the test starts;
`ustack_host.rule(...)`, `.faults(...)`, `.preset(...)` and `.stack.shape(...)` change it
mid-test.
"""

import socket
import time

import pytest


def fetch(addr: str, path: str, timeout: float = 10) -> bytes:
    """An HTTP/1.1 GET over a kernel socket; the body."""
    with socket.create_connection((addr, 80), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: ustack\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply.partition(b"\r\n\r\n")[2]


BODY = bytes(i % 256 for i in range(200_000))


@pytest.mark.ustack(rate_bps=8e6, queue=50)
def test_a_bottleneck_sets_the_pace(ustack_host):
    # 8 mbit/s behind a 50-packet queue: 200 kB take at least 0.2 s.
    start = time.monotonic()
    assert fetch(ustack_host.addr, "/bytes/200000") == BODY
    assert time.monotonic() - start >= 200_000 * 8 / 8e6


@pytest.mark.ustack(gemodel=(0.02, 0.3, 1.0, 0.0), seed=5)
def test_bursty_loss(ustack_host):
    # Gilbert-Elliott: bad spells of ~3 packets lost in a row, ~6 % of all.
    assert fetch(ustack_host.addr, "/bytes/200000") == BODY
    assert ustack_host.stats()["shaper_ge_dropped"] > 0


@pytest.mark.ustack(delay_ms=20, jitter_ms=10, distribution="pareto", correlation=0.25)
def test_a_late_tail(ustack_host):
    # 20 ms each way, jitter with a Pareto tail (a few packets much later than the rest)
    # and each packet's lateness correlated with the last's, as netem's
    # `delay 20ms 10ms 25% distribution pareto`. Jitter alone reorders packets.
    start = time.monotonic()
    assert fetch(ustack_host.addr, "/bytes/200000") == BODY
    assert time.monotonic() - start >= 0.04  # at least one round trip of the delay
    assert ustack_host.stats()["fault_delayed"] > 0


@pytest.mark.ustack(reorder=0.5, reorder_gap=4, seed=2)
def test_reordering_with_a_gap(ustack_host):
    # At most one packet in four is held back until the next overtakes it (netem's
    # `reorder 50% gap 4`): the receiver sees holes that fill a packet later.
    assert fetch(ustack_host.addr, "/bytes/200000") == BODY
    assert ustack_host.stats()["fault_reordered"] > 0


@pytest.mark.ustack(preset="3g", seed=3)
def test_a_named_link(ustack_host):
    # A 3G link (1.5 mbit, 50 ms each way with jitter, a little loss); also "wifi" and
    # "satellite" (`ustack.link.presets` says what numbers each one is).
    start = time.monotonic()
    assert fetch(ustack_host.addr, "/bytes/50000") == BODY[:50000]
    assert time.monotonic() - start >= 50_000 * 8 / 1.5e6


@pytest.mark.ustack(rules=["drop flags=SA count=2 port=80"])
def test_lost_syn_acks(ustack_host):
    # The first two SYN-ACKs never arrive: a SYN or SYN-ACK is sent again, then it works.
    assert fetch(ustack_host.addr, "/bytes/1000") == BODY[:1000]
    assert ustack_host.stats()["rule_fired"] == 2


@pytest.mark.ustack(rules=["corrupt offset=50000 dir=tx port=80"])
def test_a_corrupted_segment(ustack_host):
    # The segment carrying byte 50,000 of the response is corrupted on the way: the
    # client's TCP drops it (bad checksum) and ustack sends it again.
    assert fetch(ustack_host.addr, "/bytes/200000") == BODY


@pytest.mark.ustack(rules=["reset after=50000 dir=tx port=80"])
def test_a_reset_mid_response(ustack_host):
    with pytest.raises(ConnectionResetError):
        fetch(ustack_host.addr, "/bytes/200000")


@pytest.mark.ustack(rules=["reset state=ESTABLISHED dir=tx port=80"])
def test_a_reset_in_a_given_state(ustack_host):
    # A RST from ustack's side behind its first segment in ESTABLISHED (states by RFC
    # 9293's names, as the wire shows them; SYN-SENT to CLOSED).
    with pytest.raises(ConnectionResetError):
        fetch(ustack_host.addr, "/bytes/200000")


@pytest.mark.ustack(rules=["drop final=handshake dir=rx port=80", "drop final=close port=80"])
def test_lost_final_acks(ustack_host):
    # The ACK that completes the handshake is lost (the request carries it again), and
    # the last ACK of the close (its FIN is sent again and answered).
    assert fetch(ustack_host.addr, "/bytes/1000") == BODY[:1000]
    deadline = time.monotonic() + 5  # the close ends just after the client has the body
    while ustack_host.stats()["rule_fired"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ustack_host.stats()["rule_fired"] == 2


@pytest.mark.ustack(rules=["blackhole after=50000 port=80"])
def test_a_black_hole_is_a_timeout(ustack_host):
    # Past 50 kB nothing more gets through, either way: no close, no reset, silence.
    with pytest.raises(TimeoutError):
        fetch(ustack_host.addr, "/bytes/200000", timeout=2)


@pytest.mark.ustack(rules=["zerowindow ms=500 after=20000 port=7"])
def test_a_closed_window(ustack_host):
    # ustack says it has no room for half a second: the client waits, then goes on.
    data = bytes(200_000)
    start = time.monotonic()
    with socket.create_connection((ustack_host.addr, 7), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got == data and time.monotonic() - start >= 0.5


def test_faults_changed_mid_test(ustack_host):
    # Clean first; then 10 % loss each way and a rule, set while the stack runs.
    assert fetch(ustack_host.addr, "/bytes/1000") == BODY[:1000]
    ustack_host.faults(loss=0.1, seed=3)
    ustack_host.rule("drop flags=FA count=1")
    assert fetch(ustack_host.addr, "/bytes/200000") == BODY
    assert ustack_host.stats()["fault_dropped"] > 0
