"""Fuzz the parsers: any bytes into Host.receive never raise, and state stays bounded."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_host import tcp_packet
from ustack.host import Host

SEEDS = [
    tcp_packet(0x02, opts=b"\x02\x04\x05\xb4\x01\x03\x03\x07"),
    tcp_packet(0x10, seq=101, ack=5, payload=b"hello"),
    tcp_packet(0x11, seq=101, ack=5),
    bytes.fromhex("450000540000400040016065" "0a4d0001" "0a4d0002") + b"\x08\x00" + bytes(62),
]


def _host() -> Host:
    h = Host("10.77.0.2", rng=random.Random(0))
    h.listen(7, backlog=16)
    return h


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    h = _host()
    h.receive(data, 0.0)
    h.poll(0.0)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                        max_size=6), st.integers(0, 200))
def test_mutated_packets_never_raise(seed: bytes, flips: list[tuple[int, int]],
                                     cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    h = _host()
    h.receive(bytes(data[: len(data) - cut % 8]), 0.0)
    h.receive(bytes(data), 0.0)
    h.poll(1.0)
    assert len(h.connections()) <= 16


def test_syn_flood_is_bounded_by_backlog() -> None:
    h = _host()
    for port in range(1, 5000):
        h.receive(tcp_packet(0x02, sport=port), 0.0)
    h.poll(0.0)
    assert len(h.connections()) == 16  # the rest got SYN cookies and no state
    assert h.stats()["tcp_syncookies_sent"] == 5000 - 1 - 16


def _fix_checksums(data: bytearray) -> bytes:
    """Recompute the IP and TCP checksums so the mutation reaches the TCP parser."""
    from ustack.checksum import checksum
    from ustack.tcp.segment import pseudo_header

    data[10:12] = b"\0\0"
    data[10:12] = checksum((bytes(data[:20]),)).to_bytes(2, "big")
    seg = data[20:]
    if len(seg) >= 18:
        seg[16:18] = b"\0\0"
        csum = checksum((pseudo_header(bytes(data[12:16]), bytes(data[16:20]), len(seg)),
                         bytes(seg)))
        seg[16:18] = csum.to_bytes(2, "big")
    return bytes(data[:20] + seg)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEEDS[:3]), st.lists(st.tuples(st.integers(20, 60), st.integers(0, 255)),
                                            min_size=1, max_size=6))
def test_mutated_tcp_headers_with_valid_checksums_never_raise(
        seed: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    h = _host()
    h.receive(_fix_checksums(data), 0.0)
    h.poll(0.0)
    assert h.stats().get("drop_tcp_bad_checksum", 0) == 0


def test_100k_random_and_mutated_packets_keep_memory_flat() -> None:
    import tracemalloc

    rng = random.Random(20261124)
    h = _host()
    seeds = [bytearray(s) for s in SEEDS]
    now = 0.0

    def feed(count: int) -> None:
        nonlocal now
        for i in range(count):
            kind = i % 3
            if kind == 0:
                data = rng.randbytes(rng.randrange(0, 120))
            else:
                data = bytearray(rng.choice(seeds))
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = _fix_checksums(data) if kind == 2 else bytes(data)
            h.receive(data, now)
            if i % 64 == 0:
                now += 0.5
                h.poll(now)

    feed(20_000)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    feed(80_000)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 512 * 1024, f"memory grew by {growth} bytes"
    assert len(h.connections()) <= 16
    assert h.stats()["packets_in"] == 100_000


def _seeds6() -> list[bytes]:
    from tests.unit.test_ip6 import echo_request, ext, fragment, packet
    from ustack import ip6

    request = echo_request(bytes(64))
    return [
        packet(ip6.NH_ICMPV6, request),
        packet(ip6.NH_HOP_BY_HOP, ext(ip6.NH_DEST_OPTIONS, bytes((1, 2, 0, 0)))
               + ext(ip6.NH_ICMPV6, b"") + request),
        packet(ip6.NH_ROUTING, ext(ip6.NH_ICMPV6, bytes(22)) + request),
        fragment(ip6.NH_ICMPV6, 0, True, 5, request[:48]),
        fragment(ip6.NH_ICMPV6, 48, False, 5, request[48:]),
        packet(ip6.NH_TCP, bytes(20)),
    ]


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_mutated_ipv6_packets_never_raise_and_reassembly_stays_bounded(data) -> None:
    """IPv6 input (the extension header walk, reassembly, ICMPv6) on mutations of valid
    packets, several per host so fragments meet."""
    h = Host("10.77.0.2", rng=random.Random(0), addrs6=["fd77::2", "fe80::2"])
    for _ in range(data.draw(st.integers(1, 6))):
        packet = bytearray(data.draw(st.sampled_from(_seeds6())))
        for pos, value in data.draw(st.lists(st.tuples(st.integers(0, 120),
                                                       st.integers(0, 255)), max_size=4)):
            if pos < len(packet):
                packet[pos] = value
        h.receive(bytes(packet[:len(packet) - data.draw(st.integers(0, 12))]), 0.0)
    h.poll(0.0)
    h.poll(100.0)  # past every reassembly timeout
    assert h.next_deadline() is None or h.connections()


def _seeds6_more() -> list[bytes]:
    """Beyond `_seeds6`: a SYN and a data segment to the listener, a Packet Too Big
    quoting one of ours, a routing header type 0, an unknown next header."""
    import struct

    from tests.unit.test_ip6 import OURS, PEER, ext, packet, tcp6
    from tests.unit.test_path_mtu import too_big6
    from ustack import ip6

    syn = tcp6(0x02)
    # The start of a segment of ours to the peer's port 40000, for the quote.
    ours = packet(ip6.NH_TCP, struct.pack("!HHI", 7, 40000, 1) + bytes(1200), src=OURS,
                  dst=PEER)
    return [syn, tcp6(0x18, payload=b"data" * 30), too_big6(1280, ours),
            packet(ip6.NH_ROUTING, bytes((ip6.NH_TCP, 0, 0, 1)) + bytes(4) + syn[40:]),
            packet(200, ext(ip6.NH_TCP, b"") + syn[40:])]


def _fix_checksum6(data: bytearray) -> bytes:
    """The TCP or ICMPv6 checksum of an unfragmented packet made valid again (so that
    mutations reach past the checksum), when its header chain is readable."""
    from ustack import ip6
    from ustack.checksum import finish, pseudo_words, words

    nxt, off = ip6.skip_extensions(data, data[6], 40, through_fragments=False)
    field = {ip6.NH_TCP: 16, ip6.NH_ICMPV6: 2}.get(nxt)
    if field is None or off < 0 or len(data) < off + field + 2:
        return bytes(data)
    data[off + field:off + field + 2] = b"\0\0"
    value = finish(pseudo_words(bytes(data[8:40]), nxt, len(data) - off)
                   + words(bytes(data[off:])))
    data[off + field:off + field + 2] = value.to_bytes(2, "big")
    return bytes(data)


def test_100k_mutated_ipv6_packets_each_leave_a_count() -> None:
    """Every IPv6 packet, however mutated, is counted for what became of it: a named
    drop, a TCP segment or ICMPv6 message taken, a fragment held, an error answered."""
    rng = random.Random(20261203)
    h = Host("10.77.0.2", rng=random.Random(0), addrs6=["fd77::2", "fe80::2"])
    h.listen(7)
    seeds = [bytearray(s) for s in _seeds6() + _seeds6_more()]
    now, silent = 0.0, []
    for i in range(100_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if i % 2:
            data = bytearray(_fix_checksum6(data))
        if i % 7 == 0:
            data = data[:rng.randrange(len(data) + 1)]
        before = dict(h.counters)
        h.receive(bytes(data), now)
        moved = {k for k, v in h.counters.items() if before.get(k) != v} - {
            "packets_in", "ip6_in"}
        if not moved:
            silent.append(bytes(data))
        if i % 64 == 0:
            now += 0.5
            h.poll(now)
    assert h.stats()["packets_in"] == 100_000
    assert not silent, f"{len(silent)} packets left no count, e.g. {silent[0].hex()}"
    assert len(h.connections()) <= 2 * 128 + 16  # the backlog bounds SYN-RECEIVED
