"""IPv6 input (RFC 8200) and ICMPv6 (RFC 4443) through the host: echo answered with a
valid checksum (read back by dpkt), each refusal a host owes as a Parameter Problem with
its code and pointer, what is dropped silently (multicast, RFC 4443 §2.4 (e)), fragment
reassembly with its rules (RFC 5722 overlaps, RFC 6946 atomic fragments, RFC 7112 whole
chains), and the errors' rate limit."""

from __future__ import annotations

import ipaddress
import random
import struct

import dpkt
import pytest

from ustack import icmp6, ip6
from ustack.checksum import finish, pseudo_words, words
from ustack.host import Host

OURS = ipaddress.IPv6Address("fd77::2").packed
LINK_LOCAL = ipaddress.IPv6Address("fe80::2").packed
PEER = ipaddress.IPv6Address("fd77::1").packed


def host() -> Host:
    return Host("10.77.0.2", rng=random.Random(0), addrs6=["fd77::2", "fe80::2"])


def packet(next_header: int, payload: bytes, src: bytes = PEER, dst: bytes = OURS,
           length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("!IHBB16s16s", 0x6000_0000, size, next_header, 1, src, dst) + payload


def echo_request(data: bytes = b"ping", src: bytes = PEER, dst: bytes = OURS) -> bytes:
    body = struct.pack("!BBHHH", icmp6.ECHO_REQUEST, 0, 0, 0x1234, 7) + data
    value = icmp6.checksum(src, dst, body)
    return body[:2] + value.to_bytes(2, "big") + body[4:]


def ext(next_header: int, body: bytes) -> bytes:
    """An extension header (options or routing) padded to 8-byte units."""
    size = -(-(len(body) + 2) // 8) * 8
    return bytes((next_header, size // 8 - 1)) + body + bytes(size - 2 - len(body))


def replies(h: Host, *packets: bytes, now: float = 0.0) -> list[bytes]:
    for p in packets:
        h.receive(p, now)
    return [bytes(p) for p in h.poll(now)]


def test_an_echo_request_is_answered_from_the_address_it_was_sent_to() -> None:
    for dst in (OURS, LINK_LOCAL):
        h = host()
        [raw] = replies(h, packet(ip6.NH_ICMPV6, echo_request(b"hello", dst=dst), dst=dst))
        reply = dpkt.ip6.IP6(raw)  # read by dpkt as well as by us
        assert (reply.src, reply.dst, reply.nxt, reply.hlim) == (dst, PEER, 58, 64)
        assert (reply.data.type, reply.data.code) == (icmp6.ECHO_REPLY, 0)
        assert raw[44:] == struct.pack("!HH", 0x1234, 7) + b"hello"
        # The checksum over the pseudo-header sums to zero (RFC 4443 §2.3).
        assert icmp6.checksum(dst, PEER, raw[40:]) == 0
        assert h.stats()["icmp6_echo_replies"] == 1


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x60" + bytes(20), "drop_ip6_truncated"),
    (packet(58, echo_request(), length=0), "drop_ip6_bad_length"),
    (packet(58, echo_request(), length=200), "drop_ip6_bad_length"),
    (packet(58, echo_request(), dst=bytes.fromhex("ff02" + "00" * 13 + "02")),
     "drop_ip6_multicast"),
    (packet(58, echo_request(), dst=ipaddress.IPv6Address("fd77::9").packed),
     "drop_ip6_not_ours"),
    (packet(58, echo_request(), src=bytes(16)), "drop_ip6_bad_source"),
    (packet(ip6.NH_NONE, b""+bytes(8)), "drop_ip6_no_next_header"),
    (packet(58, echo_request()[:2] + b"\0\0" + echo_request()[4:]), "drop_icmp_bad_checksum"),
])
def test_what_is_dropped_silently_is_counted(data: bytes, reason: str) -> None:
    h = host()
    assert replies(h, data) == []
    assert h.stats()[reason] == 1


def test_a_multicast_router_solicitation_draws_nothing() -> None:
    # What the kernel sends into a TUN as soon as IPv6 is up (RFC 4443 §2.4 (e)).
    rs = bytes((133, 0, 0, 0)) + bytes(4)
    all_routers = bytes.fromhex("ff02" + "00" * 13 + "02")
    h = host()
    assert replies(h, packet(58, rs, src=bytes.fromhex("fe80" + "00" * 13 + "01"),
                             dst=all_routers)) == []
    assert h.stats()["drop_ip6_multicast"] == 1


def problem(h: Host, data: bytes) -> tuple[int, int, bytes]:
    [raw] = replies(h, data)
    reply = dpkt.ip6.IP6(raw)
    assert (reply.src, reply.dst, reply.data.type) == (OURS, PEER, icmp6.PARAMETER_PROBLEM)
    assert icmp6.checksum(OURS, PEER, raw[40:]) == 0
    return raw[41], struct.unpack("!I", raw[44:48])[0], raw[48:]


def test_an_unknown_next_header_points_at_the_field_that_named_it() -> None:
    data = packet(17, bytes(16))  # UDP: not taken by this host
    assert problem(host(), data) == (ip6.UNRECOGNIZED_NEXT_HEADER, 6, data)
    # Named by a Destination Options header: the pointer is that header's first byte.
    data = packet(ip6.NH_DEST_OPTIONS, ext(17, b"") + bytes(8))
    assert problem(host(), data)[:2] == (ip6.UNRECOGNIZED_NEXT_HEADER, 40)


def test_hop_by_hop_anywhere_but_first_is_refused() -> None:
    data = packet(ip6.NH_DEST_OPTIONS, ext(ip6.NH_HOP_BY_HOP, b"") + ext(58, b"")
                  + echo_request())
    assert problem(host(), data)[:2] == (ip6.UNRECOGNIZED_NEXT_HEADER, 40)


def test_hop_by_hop_in_a_reassembled_part_is_refused() -> None:
    part = ext(58, b"") + echo_request(bytes(16))
    h = host()
    replies(h, fragment(ip6.NH_HOP_BY_HOP, 0, True, 4, part[:16]))
    assert problem(h, fragment(ip6.NH_HOP_BY_HOP, 16, False, 4, part[16:]))[:2] == (
        ip6.UNRECOGNIZED_NEXT_HEADER, 6)


def test_unknown_options_act_by_their_two_high_bits() -> None:
    request = echo_request()
    skip = ext(58, bytes((0x1E, 2, 0, 0)))  # 00: skip it
    assert len(replies(host(), packet(ip6.NH_HOP_BY_HOP, skip + request))) == 1
    h = host()
    silent = ext(58, bytes((0x5E, 2, 0, 0)))  # 01: discard
    assert replies(h, packet(ip6.NH_DEST_OPTIONS, silent + request)) == []
    assert h.stats()["drop_ip6_unknown_option"] == 1
    told = ext(58, bytes((0x9E, 2, 0, 0)))  # 10: discard and say so, pointing at it
    assert problem(host(), packet(ip6.NH_DEST_OPTIONS, told + request))[:2] == (
        ip6.UNRECOGNIZED_OPTION, 42)


def test_a_routing_header_with_segments_left_is_refused_and_without_is_ignored() -> None:
    type0 = ext(58, bytes((0, 1)) + bytes(4) + OURS)  # RFC 5095: type 0, one left
    assert problem(host(), packet(ip6.NH_ROUTING, type0 + echo_request()))[:2] == (
        ip6.ERRONEOUS_FIELD, 42)
    done = ext(58, bytes((0, 0)) + bytes(4) + OURS)
    assert len(replies(host(), packet(ip6.NH_ROUTING, done + echo_request()))) == 1


def test_a_chain_longer_than_the_bound_is_dropped() -> None:
    chain = b"".join(ext(ip6.NH_DEST_OPTIONS, b"") for _ in range(20))
    h = host()
    assert replies(h, packet(ip6.NH_DEST_OPTIONS, chain + echo_request())) == []
    assert h.stats()["drop_ip6_chain_too_long"] == 1


def fragment(next_header: int, offset: int, more: bool, ident: int, data: bytes) -> bytes:
    return packet(ip6.NH_FRAGMENT, struct.pack("!BBHI", next_header, 0, offset | more,
                                               ident) + data)


def test_fragments_are_reassembled_in_any_order_and_duplicates_ignored() -> None:
    request = echo_request(bytes(range(200)) * 6)
    pieces = [request[i:i + 512] for i in range(0, len(request), 512)]
    frags = [fragment(58, i * 512, i < len(pieces) - 1, 99, p) for i, p in enumerate(pieces)]
    h = host()
    got = replies(h, frags[2], frags[0], frags[0], frags[1])
    assert len(got) == 1 and got[0][48:] == request[8:]
    assert h.stats()["ip6_reassembled"] == 1


def test_an_atomic_fragment_is_the_packet_itself() -> None:
    h = host()
    assert len(replies(h, fragment(58, 0, False, 5, echo_request()))) == 1  # RFC 6946
    assert h.stats()["ip6_atomic_fragments"] == 1


def test_an_overlap_drops_the_datagram_and_its_later_fragments() -> None:
    request = echo_request(bytes(1000))
    h = host()
    got = replies(h, fragment(58, 0, True, 7, request[:512]),
                  fragment(58, 256, True, 7, request[256:768]),  # overlaps: RFC 5722
                  fragment(58, 512, False, 7, request[512:]))
    assert got == []
    assert h.stats()["drop_ip6_fragment_overlap"] == 2


def test_fragment_lengths_and_first_fragments_are_checked() -> None:
    # Not the last, yet not a multiple of 8 bytes: pointing at the Payload Length.
    assert problem(host(), fragment(58, 0, True, 1, echo_request(bytes(92))))[:2] == (
        ip6.ERRONEOUS_FIELD, 4)
    # RFC 7112: a first fragment without the whole header chain (half a TCP header).
    assert problem(host(), fragment(ip6.NH_TCP, 0, True, 2, bytes(8)))[:2] == (
        ip6.INCOMPLETE_CHAIN, 0)
    # Past 65,535 bytes: pointing at the Fragment Offset.
    assert problem(host(), fragment(58, 65528, False, 3, bytes(16)))[:2] == (
        ip6.ERRONEOUS_FIELD, 42)


def test_a_partial_datagram_times_out_and_its_source_hears_it() -> None:
    h = host()
    first = fragment(58, 0, True, 9, echo_request(bytes(600))[:512])
    replies(h, first, fragment(58, 1024, True, 10, bytes(16)))  # 10: no first fragment
    assert h.next_deadline() == pytest.approx(ip6.FRAGMENT_TIMEOUT)
    # RFC 8200 §4.5: Time Exceeded, code 1, to the source of the first fragment only.
    [raw] = [bytes(p) for p in h.poll(ip6.FRAGMENT_TIMEOUT)]
    assert (raw[8:24], raw[24:40], raw[6]) == (OURS, PEER, ip6.NH_ICMPV6)
    assert (raw[40], raw[41]) == (icmp6.TIME_EXCEEDED, 1) and raw[48:] == first
    assert icmp6.checksum(OURS, PEER, raw[40:]) == 0
    assert h.stats()["drop_ip6_fragment_timeout"] == 2
    assert h.next_deadline() is None


def test_errors_are_rate_limited() -> None:
    h = host()
    refused = packet(17, bytes(8))
    sent = replies(h, *[refused] * 30, now=0.0)
    assert len(sent) == icmp6.ERROR_BURST
    assert h.stats()["icmp6_errors_rate_limited"] == 30 - icmp6.ERROR_BURST
    assert len(replies(h, refused, now=1.0)) == 1  # refilled at ERROR_RATE a second


def test_an_error_quotes_no_more_than_the_minimum_mtu_allows() -> None:
    data = packet(17, bytes(3000))
    [raw] = replies(host(), data)
    assert len(raw) == ip6.MIN_MTU
    assert raw[48:] == data[:icmp6.MAX_INVOKING]


def tcp6(flags: int, src: bytes = PEER, dst: bytes = OURS, seq: int = 1000, ack: int = 0,
         payload: bytes = b"", opts: bytes = b"\x02\x04\x05\xa0", sport: int = 40000) -> bytes:
    """A TCP segment over IPv6 with a valid checksum (MSS 1440 offered by default)."""
    seg = dpkt.tcp.TCP(sport=sport, dport=7, seq=seq, ack=ack, flags=flags, win=65535,
                       opts=opts, data=payload)
    seg.off = (20 + len(opts)) // 4
    raw = bytearray(bytes(seg))
    raw[16:18] = b"\0\0"
    value = finish(pseudo_words(src + dst, ip6.NH_TCP, len(raw)) + words(bytes(raw)))
    raw[16:18] = value.to_bytes(2, "big")
    return packet(ip6.NH_TCP, bytes(raw), src=src, dst=dst)


def tcp_ok(raw: bytes) -> dpkt.tcp.TCP:
    """The TCP segment of an IPv6 packet we sent, its checksum checked."""
    assert finish(pseudo_words(raw[8:40], ip6.NH_TCP, len(raw) - 40) + words(raw[40:])) == 0
    return dpkt.tcp.TCP(raw[40:])


def test_a_syn_over_ipv6_is_answered_from_the_address_it_was_sent_to() -> None:
    link_peer = ipaddress.IPv6Address("fe80::1").packed
    for src, dst in ((PEER, OURS), (link_peer, LINK_LOCAL)):
        h = host()
        h.listen(7)
        [raw] = replies(h, tcp6(dpkt.tcp.TH_SYN, src=src, dst=dst))
        assert (raw[8:24], raw[24:40], raw[6]) == (dst, src, ip6.NH_TCP)
        syn_ack = tcp_ok(raw)
        assert syn_ack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK and syn_ack.ack == 1001
        # MSS: the MTU less 60 bytes of headers (RFC 8200's 40 and TCP's 20).
        assert dict(dpkt.tcp.parse_opts(syn_ack.opts))[dpkt.tcp.TCP_OPT_MSS] == (
            (1500 - 60).to_bytes(2, "big"))


def test_a_connection_over_ipv6_carries_data_and_closes() -> None:
    h = host()
    h.listen(7)
    [raw] = replies(h, tcp6(dpkt.tcp.TH_SYN))
    iss = tcp_ok(raw).seq
    replies(h, tcp6(dpkt.tcp.TH_ACK, seq=1001, ack=iss + 1, opts=b""))
    [conn] = h.connections()
    listener_conn = conn
    replies(h, tcp6(dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, seq=1001, ack=iss + 1,
                    payload=b"hello", opts=b""))
    assert listener_conn.read() == b"hello"
    listener_conn.send(b"world")
    out = [tcp_ok(p) for p in h.poll(0.0)]
    assert any(seg.data == b"world" for seg in out)
    info = h.connection_info(0.0)
    assert info[0].local == ("fd77::2", 7) and info[0].remote == ("fd77::1", 40000)


def test_a_peer_crossing_scopes_is_refused_and_a_closed_port_reset() -> None:
    h = host()
    h.listen(7)
    assert replies(h, tcp6(dpkt.tcp.TH_SYN, dst=LINK_LOCAL)) == []  # global to link-local
    assert h.stats()["drop_ip6_scope_mismatch"] == 1
    h2 = host()
    [raw] = replies(h2, tcp6(dpkt.tcp.TH_SYN))  # nothing listens on 7
    assert tcp_ok(raw).flags & dpkt.tcp.TH_RST


def test_time_wait_keys_keep_the_families_apart() -> None:
    from ustack.tcp import timewait

    v4 = bytes((0, 0, 0, 1))
    k4, k6 = timewait.key(v4, 1, 2), timewait.key(bytes(15) + b"\x01", 1, 2)
    assert k4 != k6
    assert timewait._split(k6) == (bytes(15) + b"\x01", 1, 2)
    assert timewait._split(k4) == (v4, 1, 2)


def test_no_error_answers_an_icmpv6_error_or_a_loopback_source() -> None:
    # RFC 4443 §2.4 (e.1): a Destination Unreachable behind a refused Routing header.
    unreachable = bytes((icmp6.DESTINATION_UNREACHABLE, 4, 0, 0)) + bytes(4)
    h = host()
    routed = ext(58, bytes((0, 1)) + bytes(4) + OURS) + unreachable
    assert replies(h, packet(ip6.NH_ROUTING, routed)) == []
    assert h.stats()["drop_ip6_parameter_problem"] == 1
    loopback = ipaddress.IPv6Address("::1").packed
    assert replies(h, packet(58, echo_request(src=loopback), src=loopback)) == []
    assert h.stats()["drop_ip6_bad_source"] == 1


def test_fragments_of_nothing_and_too_many_pieces_are_dropped() -> None:
    h = host()
    assert replies(h, fragment(58, 8, True, 11, b"")) == []
    assert h.stats()["drop_ip6_fragment_empty"] == 1
    for i in range(ip6.MAX_PIECES + 1):
        replies(h, fragment(58, 8 + 8 * i, True, 12, bytes(8)))
    assert h.stats()["drop_ip6_fragment_limit"] == 1


def test_refused_datagrams_take_no_slot_from_new_ones() -> None:
    h = host()
    for ident in range(ip6.MAX_PARTIAL_DATAGRAMS):  # each refused at once: an overlap
        replies(h, fragment(58, 0, True, ident, echo_request(bytes(8))),
                fragment(58, 8, True, ident, bytes(16)))
    request = echo_request(bytes(100))
    got = replies(h, fragment(58, 0, True, 999, request[:56]),
                  fragment(58, 56, False, 999, request[56:]))
    assert len(got) == 1


def test_a_reply_bigger_than_the_mtu_leaves_in_fragments_that_reassemble() -> None:
    request = echo_request(bytes(range(256)) * 12)  # 3,080 bytes
    h = host()
    got = replies(h, packet(58, request))
    assert len(got) == 3 and all(len(p) <= 1500 for p in got)
    other = Host("10.77.0.3", rng=random.Random(1), addrs6=["fd77::1"])
    for p in got:
        other.receive(p, 0.0)
    assert other.stats()["ip6_reassembled"] == 1
    assert other.stats()["drop_icmp_ignored"] == 1  # an echo reply: nothing to answer


def test_below_the_minimum_mtu_a_host_has_no_ipv6() -> None:
    h = Host("10.77.0.2", mtu=1000, rng=random.Random(0), addrs6=["fd77::2"])
    assert h.addrs6 == ()
    assert replies(h, packet(58, echo_request())) == []


def test_an_active_open_over_ipv6_comes_from_the_address_for_that_peer() -> None:
    for remote, ours in (("fd77::1", OURS), ("fe80::1", LINK_LOCAL)):
        h = host()
        tcb = h.connect(remote, 80, 0.0)
        [raw] = h.poll(0.0)
        syn = tcp_ok(raw)
        assert raw[8:24] == ours and syn.flags == dpkt.tcp.TH_SYN
        assert syn.sport == tcb.local_port
        assert dict(dpkt.tcp.parse_opts(syn.opts))[dpkt.tcp.TCP_OPT_MSS] == (
            (1500 - 60).to_bytes(2, "big"))
    bare = Host("10.77.0.2", rng=random.Random(0))
    with pytest.raises(OSError, match="no IPv6 address"):
        bare.connect("fd77::1", 80, 0.0)


def test_each_connection_has_one_nonzero_flow_label() -> None:
    h = host()
    h.listen(7)
    labels = set()
    for port in (40000, 40001):
        raw = replies(h, tcp6(dpkt.tcp.TH_SYN, sport=port))
        labels.add(int.from_bytes(raw[0][1:4], "big") & 0xFFFFF)
    assert len(labels) == 2 and 0 not in labels  # RFC 6437: per flow, uniform


def test_a_peer_without_the_mss_option_gets_ipv6s_default_and_rows_bracket_it() -> None:
    h = host()
    h.listen(7)
    replies(h, tcp6(dpkt.tcp.TH_SYN, opts=b""))
    [conn] = h.connections()
    assert conn.snd_mss == 1220  # RFC 9293 MUST-15 over IPv6: 1280 - 60
    from ustack.conninfo import format_table
    lines = format_table(h.connection_info(0.0))
    assert "[fd77::2]:7" in lines[1] and "[fd77::1]:40000" in lines[1]
