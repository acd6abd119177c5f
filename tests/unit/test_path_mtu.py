"""Path MTU discovery through the host (RFC 8201, RFC 1191): a Packet Too Big (IPv6) or
Fragmentation Needed (IPv4) that quotes a segment in flight lowers the connection's
MSS, what went out in larger segments goes again in smaller ones with no window cut,
and connections opened to that peer afterwards start small; a message that quotes no
sequence in flight (RFC 5927 §4.1), no connection, or a larger MTU changes nothing;
the MTU never falls below the family's floor."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from tests.unit.test_host import PEER as PEER4
from tests.unit.test_host import US as US4
from tests.unit.test_host import tcp_packet
from tests.unit.test_ip6 import OURS, PEER, host, packet, tcp6, tcp_ok
from ustack import icmp6, ip6, pmtu
from ustack.checksum import finish, words
from ustack.host import Host
from ustack.tcp.eifel import DsackUndo, Eifel
from ustack.tcp.tcb import Tcb

ROUTER = bytes.fromhex("fd77" + "00" * 13 + "fe")
DATA = bytes(range(256)) * 80  # 20480 bytes: a flight of ten 1440-byte segments


def established6(h: Host, sport: int = 40000) -> tuple[Tcb, int]:
    """A connection from PEER's `sport` to port 7, MSS 1440 both ways."""
    h.receive(tcp6(dpkt.tcp.TH_SYN, sport=sport), 0.0)
    iss = tcp_ok(bytes(h.poll(0.0)[0])).seq
    h.receive(tcp6(dpkt.tcp.TH_ACK, seq=1001, ack=iss + 1, opts=b"", sport=sport), 0.0)
    conn = next(c for c in h.connections() if c.remote_port == sport)
    return conn, iss


def too_big6(mtu: int, invoking: bytes, src: bytes = ROUTER) -> bytes:
    body = struct.pack("!BBHI", icmp6.PACKET_TOO_BIG, 0, 0, mtu) + invoking[:1232]
    value = icmp6.checksum(src, OURS, body)
    return packet(ip6.NH_ICMPV6, body[:2] + value.to_bytes(2, "big") + body[4:], src=src)


def sent(h: Host, now: float = 0.0) -> list[bytes]:
    return [bytes(p) for p in h.poll(now)]


def flight6() -> tuple[Host, Tcb, int, list[bytes]]:
    """A host with one IPv6 connection that has just sent its first flight of DATA."""
    h = host()
    h.listen(7)
    conn, iss = established6(h)
    conn.send(DATA)
    return h, conn, iss, sent(h)


def test_a_packet_too_big_in_window_shrinks_the_segments_and_resends_them() -> None:
    h, conn, iss, first = flight6()
    assert [len(tcp_ok(p).data) for p in first] == [1440] * 10
    cwnd = conn.cc.cwnd
    h.receive(too_big6(1400, first[3]), 0.1)
    again = [tcp_ok(p) for p in sent(h, 0.1)]
    # The flight goes again, from SND.UNA, in segments that fit 1400: as many as the
    # window holds, which keeps its ten segments (now of 1340 bytes); the rest after.
    assert again[0].seq == iss + 1
    assert all(len(seg.data) <= 1400 - 60 for seg in again)
    assert conn.snd_mss == 1340 and conn.cc.cwnd == cwnd * 1340 // 1440
    assert sum(len(seg.data) for seg in again) == 13400
    assert conn._flight.lost_bytes == 14400 - 13400
    stats = h.stats()
    assert stats["tcp_path_mtu_lowered"] == 1 and stats["icmp_too_big_in"] == 1
    assert "tcp_rto" not in stats and not conn.in_recovery  # no congestion signal
    # A connection opened to that peer now starts at the path's size (RFC 8201 §5.2).
    conn2, _ = established6(h, sport=40001)
    assert conn2.snd_mss == 1340 and conn2.rcv_mss == 1440


def test_a_quote_outside_the_flight_no_connection_or_a_larger_mtu_changes_nothing() -> None:
    h, conn, iss, first = flight6()
    forged = bytearray(first[0])
    forged[44:48] = (iss + 1 + 20000).to_bytes(4, "big")  # beyond SND.NXT
    h.receive(too_big6(1280, bytes(forged)), 0.1)
    assert sent(h, 0.1) == [] and conn.snd_mss == 1440
    assert h.stats()["drop_icmp_out_of_window"] == 1
    stranger = bytearray(first[0])
    stranger[40:42] = (41000).to_bytes(2, "big")  # our port, as the quote has it: no such
    stranger[42:44] = (41000).to_bytes(2, "big")
    h.receive(too_big6(1280, bytes(stranger)), 0.1)
    assert h.stats()["drop_icmp_no_connection"] == 1
    h.receive(too_big6(1400, first[1]), 0.2)
    sent(h, 0.2)
    h.receive(too_big6(1450, first[2]), 0.3)  # more than we know: never raised
    assert sent(h, 0.3) == [] and conn.snd_mss == 1340


def test_the_path_mtu_never_falls_below_ipv6s_minimum() -> None:
    h, conn, _, first = flight6()
    h.receive(too_big6(576, first[0]), 0.1)
    assert all(len(tcp_ok(p).data) <= 1280 - 60 for p in sent(h, 0.1))
    assert conn.snd_mss == 1220


def test_a_bad_checksum_or_a_short_quote_is_dropped() -> None:
    h, conn, _, first = flight6()
    bad = bytearray(too_big6(1280, first[0]))
    bad[-1] ^= 1
    h.receive(bytes(bad), 0.1)
    h.receive(too_big6(1280, first[0][:44]), 0.1)  # not the 8 TCP bytes with the sequence
    assert sent(h, 0.1) == [] and conn.snd_mss == 1440
    assert h.stats()["drop_icmp_bad_checksum"] == 1
    assert h.stats()["drop_icmp_malformed"] == 1


def test_the_estimate_ages_out() -> None:
    cache = pmtu.PathMtu(1500)
    assert cache.lower(PEER, 1300, 0.0) and not cache.lower(PEER, 1400, 1.0)
    assert cache.get(PEER, pmtu.EXPIRES - 1) == 1300
    assert cache.get(PEER, pmtu.EXPIRES) == 1500 and len(cache) == 0
    for i in range(pmtu.MAX_ENTRIES + 5):
        cache.lower(i.to_bytes(16, "big"), 1300, 0.0)
    assert len(cache) == pmtu.MAX_ENTRIES  # bounded: the oldest went first
    assert cache.get((0).to_bytes(16, "big"), 0.0) == 1500


def frag_needed(mtu: int, invoking: bytes) -> bytes:
    body = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + invoking[:28]
    body = body[:2] + finish(words(body)).to_bytes(2, "big") + body[4:]
    ip = dpkt.ip.IP(src=socket.inet_aton("10.77.0.254"), dst=socket.inet_aton(US4), p=1,
                    ttl=64, data=body)
    ip.len = 20 + len(body)
    return bytes(ip)


@pytest.mark.parametrize(("mtu", "mss"), [(1000, 960), (300, 512), (0, 1460)])
def test_ipv4_fragmentation_needed_lowers_the_mss_the_same_way(mtu: int, mss: int) -> None:
    h = Host(US4)
    h.listen(7)
    h.receive(tcp_packet(dpkt.tcp.TH_SYN, opts=b"\x02\x04\x05\xb4"), 0.0)
    iss = dpkt.ip.IP(bytes(h.poll(0.0)[0])).data.seq
    h.receive(tcp_packet(dpkt.tcp.TH_ACK, seq=101, ack=iss + 1), 0.0)
    [conn] = h.connections()
    conn.send(DATA)
    first = [bytes(p) for p in h.poll(0.0)]
    h.receive(frag_needed(mtu, first[0]), 0.1)
    again = [dpkt.ip.IP(bytes(p)) for p in h.poll(0.1)]
    # 552 is the floor (Linux's min_pmtu); 0 (a router before RFC 1191) is not guessed at.
    assert conn.snd_mss == mss
    assert all(len(p.data.data) <= mss for p in again)
    assert bool(again) == (mtu != 0)
    assert socket.inet_ntoa(dpkt.ip.IP(first[0]).dst) == PEER4


def test_a_quote_of_the_other_family_or_a_short_header_names_nothing() -> None:
    v6 = packet(ip6.NH_TCP, struct.pack("!HHI", 7, 40000, 1) + bytes(12), src=OURS,
                dst=PEER)
    assert pmtu.quote(v6, 1280, 6) is not None
    assert pmtu.quote(v6, 1280, 4) is None  # an ICMPv4 message quoting IPv6
    v4 = bytes([0x45]) + bytes(8) + bytes([6]) + bytes(10) + struct.pack("!HHI", 7, 1, 2)
    assert pmtu.quote(v4, 1000, 4) is not None and pmtu.quote(v4, 1000, 6) is None
    assert pmtu.quote(bytes([0x44]) + v4[1:], 1000, 4) is None  # IHL 4: no IPv4 header


def test_a_window_kept_for_undo_does_not_bring_the_old_size_back() -> None:
    h, conn, _, first = flight6()
    # As after a retransmission timeout and a recovery: windows kept to be put back.
    conn._eifel = Eifel(conn.snd_una, conn.cc.snapshot())
    conn._dsack_undo = DsackUndo(conn.snd_una, conn.cc.snapshot())
    h.receive(too_big6(1280, first[0]), 0.1)
    assert conn.snd_mss == 1220 and conn._eifel is None and conn._dsack_undo is None
