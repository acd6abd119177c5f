"""TCP's rules are the same over both families: any sequence of segments a peer sends
(SYNs, ACKs, RSTs, FINs, data, in and out of window, to a listener or a closed port)
draws the same answers over IPv6 as over IPv4, field for field, and leaves the same
states and drop counts. A differential property: the two hosts differ only in the
family of their addresses (the same ISN, the same MSS)."""

from __future__ import annotations

import random

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_host import tcp_packet
from tests.unit.test_ip6 import tcp6
from ustack.host import Host

ISS = 5000
IRS = 1000  # the peer's first sequence number: its SYN carries it
FAMILY_COUNTERS = ("packets_in", "ip_in", "ip6_in")  # counted by one family's input only


def fixed_isn(*_: object) -> int:
    return ISS


def hosts() -> tuple[Host, Host]:
    # MSS 1440 both: the MTU less 40 bytes of IPv4 and TCP headers, or 60 over IPv6.
    v4 = Host("10.77.0.2", mtu=1480, isn=fixed_isn, rng=random.Random(7))
    v6 = Host("10.77.0.2", mtu=1500, isn=fixed_isn, rng=random.Random(7),
              addrs6=["fd77::2", "fe80::2"])
    for h in (v4, v6):
        h.listen(7)
    return v4, v6


FLAGS = st.sampled_from([
    dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH,
    dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK,
    dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, 0, dpkt.tcp.TH_FIN])
# Offsets weighted towards the ones that complete a handshake and carry data in window.
SEGMENTS = st.lists(st.tuples(
    FLAGS,
    st.sampled_from([1, 1, 1, 1, 1, 61, -1, 0, 2, 5, 100, 70000, 1 << 31]),  # seq past IRS
    st.sampled_from([1, 1, 1, 1, 1, 2, 0, 50, -1, 1 << 31]),  # ack past ISS
    st.integers(0, 60),  # payload bytes
    st.sampled_from([40000, 40001]),  # the peer's port
    st.booleans(),  # with the MSS option
    st.sampled_from([0.0, 0.05, 1.0, 5.0]),  # time since the last
), min_size=1, max_size=12)


def answers(h: Host, v6: bool, now: float) -> list[tuple]:
    """The TCP fields of every segment `h` sends now (addresses and checksum aside: the
    checksum is checked by each family's own tests)."""
    out = []
    for raw in (bytes(p) for p in h.poll(now)):
        seg = dpkt.tcp.TCP(raw[40:]) if v6 else dpkt.ip.IP(raw).data
        out.append((seg.sport, seg.dport, seg.flags, seg.seq, seg.ack, seg.win, seg.opts,
                    seg.data))
    return out


@settings(max_examples=600, deadline=None)
@given(SEGMENTS)
def test_every_exchange_draws_the_same_answers_over_both_families(segments) -> None:
    v4, v6 = hosts()
    now = 0.0
    for flags, seq_off, ack_off, size, sport, mss, pause in segments:
        now += pause
        seq, ack = (IRS + seq_off) % (1 << 32), (ISS + ack_off) % (1 << 32)
        opts = b"\x02\x04\x05\xa0" if mss else b""
        payload = bytes(size)
        v4.receive(tcp_packet(flags, sport=sport, seq=seq, ack=ack, payload=payload,
                              opts=opts), now)
        v6.receive(tcp6(flags, seq=seq, ack=ack, payload=payload, opts=opts, sport=sport),
                   now)
        assert answers(v4, False, now) == answers(v6, True, now)
        for conn in v4.connections() + v6.connections():
            if conn.readable:
                conn.read()
        assert ([(c.remote_port, c.state) for c in v4.connections()]
                == [(c.remote_port, c.state) for c in v6.connections()])
    later = now + 300.0  # every timer: retransmissions, TIME-WAIT, keepalives
    for step in (now + 1.0, now + 3.0, now + 10.0, later):
        assert answers(v4, False, step) == answers(v6, True, step)
    c4, c6 = v4.stats(), v6.stats()
    for name in FAMILY_COUNTERS:
        c4.pop(name, None)
        c6.pop(name, None)
    assert c4 == c6
