"""IPv4 as a host (RFC 791, RFC 1122 §3.3): fragments, options, and the ICMP echo."""

import socket
import struct

import dpkt
import pytest

from ustack import ip
from ustack.host import Host
from ustack.ip import FRAGMENT_TIMEOUT, MAX_PARTIAL_DATAGRAMS
from ustack.stats import Counters

US = socket.inet_aton("10.77.0.2")
PEER = socket.inet_aton("10.77.0.1")


def fragment(payload: bytes, offset: int, more: bool, ident: int = 7, proto: int = 1,
             options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident,
                      (0x2000 if more else 0) | (offset // 8), 64, proto, 0, PEER, US) + options
    csum = dpkt.in_cksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def echo_request(size: int) -> bytes:
    return bytes(dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1,
                                                                    data=b"p" * size)))


def test_fragments_in_any_order_are_reassembled() -> None:
    h = Host("10.77.0.2")
    icmp = echo_request(3000)
    parts = [(icmp[i:i + 1000], i, i + 1000 < len(icmp)) for i in range(0, len(icmp), 1000)]
    for payload, offset, more in reversed(parts):
        h.receive(fragment(payload, offset, more), 0.0)
    (reply,) = h.poll(0.0)
    assert dpkt.ip.IP(reply).data.data.data == b"p" * 3000
    assert h.stats()["ip_reassembled"] == 1 and ip.Fragments().held == 0


def test_overlapping_fragments_drop_the_datagram() -> None:
    h = Host("10.77.0.2")
    icmp = echo_request(2000)
    h.receive(fragment(icmp[:1000], 0, True), 0.0)
    h.receive(fragment(b"X" * 1000, 504, True), 0.0)  # overlaps with other bytes
    h.receive(fragment(icmp[1000:], 1000, False), 0.0)
    assert h.poll(0.0) == []
    assert h.stats()["drop_ip_fragment_overlap"] == 1


def test_exact_duplicate_fragments_are_harmless() -> None:
    h = Host("10.77.0.2")
    icmp = echo_request(1500)
    h.receive(fragment(icmp[:1000], 0, True), 0.0)
    h.receive(fragment(icmp[:1000], 0, True), 0.0)
    h.receive(fragment(icmp[1000:], 1000, False), 0.0)
    assert len(h.poll(0.0)) == 1


def test_incomplete_datagrams_time_out() -> None:
    h = Host("10.77.0.2")
    h.receive(fragment(b"a" * 1000, 0, True), 5.0)
    assert h.next_deadline() == 5.0 + FRAGMENT_TIMEOUT
    assert h.poll(5.0 + FRAGMENT_TIMEOUT) == []  # an ICMP error only quotes an echo request
    assert h.stats()["drop_ip_fragment_timeout"] == 1 and h.next_deadline() is None


@pytest.mark.parametrize("zero", [True, False])
def test_a_timeout_with_fragment_zero_sends_time_exceeded(zero: bool) -> None:
    # RFC 1122 §3.3.2: "MUST be discarded and an ICMP Time Exceeded message sent to the
    # source host (if fragment zero has been received)".
    h = Host("10.77.0.2")
    first = fragment(echo_request(1000)[:1000], 0, True)
    h.receive(first if zero else fragment(b"b" * 16, 1000, True), 0.0)
    out = [dpkt.ip.IP(p) for p in h.poll(FRAGMENT_TIMEOUT)]
    if not zero:
        assert out == [] and h.stats()["drop_ip_fragment_timeout"] == 1
        return
    [error] = out
    assert (error.src, error.dst, error.p) == (US, PEER, 1)
    assert (error.data.type, error.data.code) == (11, 1)
    assert dpkt.in_cksum(bytes(error.data)) == 0
    assert bytes(error.data)[8:] == first[:28]  # its header and first 8 bytes of data
    assert h.stats()["icmp_errors_out"] == 1


def test_partial_datagrams_are_bounded() -> None:
    frags = ip.Fragments()
    counters = Counters()
    for ident in range(MAX_PARTIAL_DATAGRAMS + 10):
        d = ip.Datagram(PEER, US, 6, b"z" * 8, ident, 0, True)
        frags.add(d, 0.0, counters)
    assert counters["drop_ip_fragment_limit"] == 10
    assert frags.held == 8 * MAX_PARTIAL_DATAGRAMS


def test_a_hole_beyond_the_last_fragment_never_completes() -> None:
    frags = ip.Fragments()
    counters = Counters()
    frags.add(ip.Datagram(PEER, US, 1, b"a" * 8, 1, 0, True), 0.0, counters)
    frags.add(ip.Datagram(PEER, US, 1, b"c" * 8, 1, 16, True), 0.0, counters)
    assert frags.add(ip.Datagram(PEER, US, 1, b"b" * 8, 1, 8, False), 0.0, counters) is None
    assert counters["drop_ip_fragment_overlap"] == 1  # data beyond the end: inconsistent


@pytest.mark.parametrize("option", [131, 137])
def test_source_routed_packets_are_dropped(option: int) -> None:
    h = Host("10.77.0.2")
    route = bytes([option, 7, 4]) + PEER + b"\x00"  # LSRR/SSRR, padded to 8 bytes
    h.receive(fragment(echo_request(10), 0, False, options=route), 0.0)
    assert h.poll(0.0) == []
    assert h.stats()["drop_ip_source_routed"] == 1


def test_other_ip_options_are_skipped_by_ihl() -> None:
    h = Host("10.77.0.2")
    h.receive(fragment(echo_request(10), 0, False, options=b"\x01\x01\x01\x00"), 0.0)
    assert len(h.poll(0.0)) == 1
