"""Software segmentation (`ustack.link.segmentation.cut`) checked against dpkt and
against what the kernel's tcp_gso_segment makes of a super-packet, and the fault
injector acting per wire segment with offloads."""

import random
import socket
import struct

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack import vnet
from ustack.checksum import ones_sum, pseudo_words
from ustack.link import FaultInjector
from ustack.link.segmentation import cut
from ustack.packet import Offloaded

SRC, DST = socket.inet_aton("10.77.0.1"), socket.inet_aton("10.77.0.2")
FIN, PSH, ACK, CWR = dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_ACK, dpkt.tcp.TH_CWR


def super_packet(payload: bytes, *, seq: int = 1000, flags: int = ACK | PSH,
                 ident: int = 7, opts: bytes = b"", gso: int = 1448,
                 csum_ok: bool = True) -> Offloaded:
    tcp = dpkt.tcp.TCP(sport=80, dport=40000, seq=seq, ack=5, flags=flags, win=512,
                       opts=opts, data=payload)
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=SRC, dst=DST, p=6, id=ident, ttl=64, data=tcp)
    ip.df = 1
    raw = bytes(ip)
    return Offloaded(raw, csum_ok, gso)


def completed(piece: bytes) -> bytes:
    """What a device makes of a piece's partial checksum (Linux's skb_checksum_help)."""
    data = bytearray(piece)
    ihl = (data[0] & 0x0F) * 4
    total = ones_sum(data[ihl:])
    data[ihl + 16:ihl + 18] = (0xFFFF - total if total else 0).to_bytes(2, "big")
    return bytes(data)


def tcp_checksum_ok(packet: bytes) -> bool:
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - 20)
    return (ones_sum(pseudo) + ones_sum(packet[20:])) % 0xFFFF == 0


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 65_000 - 60), gso=st.integers(500, 9000),
       seq=st.integers(0, 2**32 - 1), ident=st.integers(0, 0xFFFF),
       flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR | PSH]),
       timestamps=st.booleans(), csum_ok=st.booleans())
def test_pieces_are_the_segments_tcp_gso_segment_makes(length: int, gso: int, seq: int,
                                                       ident: int, flags: int,
                                                       timestamps: bool,
                                                       csum_ok: bool) -> None:
    payload = random.Random(length).randbytes(length)
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 11, 22) if timestamps else b""
    packet = super_packet(payload, seq=seq, flags=flags, ident=ident, opts=opts, gso=gso,
                          csum_ok=csum_ok)
    pieces = cut(packet)
    if length <= gso:
        assert pieces == [packet]  # one segment already: left as it is
        return
    assert len(pieces) == -(-length // gso)
    data = b""
    for i, piece in enumerate(pieces):
        assert type(piece) is Offloaded and piece.gso == 0 and piece.csum_ok == csum_ok
        raw = bytes(piece.ip)
        ip = dpkt.ip.IP(raw)
        assert ip.len == len(raw)
        assert ip.id == (ident + i) & 0xFFFF  # numbered as the kernel numbers them
        check = dpkt.ip.IP(raw)
        check.sum = 0
        assert dpkt.ip.IP(bytes(check)).sum == ip.sum  # a valid IP header checksum
        tcp = ip.data
        assert tcp.seq == (seq + i * gso) & 0xFFFFFFFF
        assert tcp.opts == opts and tcp.ack == 5 and tcp.win == 512
        last = i == len(pieces) - 1
        assert len(tcp.data) == (length - i * gso if last else gso)
        want = flags
        if i:
            want &= ~CWR
        if not last:
            want &= ~(FIN | PSH)
        assert tcp.flags == want
        assert tcp_checksum_ok(completed(raw))  # the partial sum a device completes
        data += tcp.data
    assert data == payload


def test_only_tcp_super_packets_are_cut() -> None:
    plain = bytes(super_packet(b"x" * 5000).ip)
    assert cut(plain) == [plain]  # no metadata: a wire packet already
    assert cut(Offloaded(plain, True, 0)) == [Offloaded(plain, True, 0)]
    udp = bytearray(plain)
    udp[9] = 17
    assert len(cut(Offloaded(bytes(udp), True, 1448))) == 1
    assert cut(Offloaded(b"\x45\x00", True, 1448)) == [Offloaded(b"\x45\x00", True, 1448)]
    v6 = Offloaded(b"\x60" + bytes(5000), True, 1440)  # payload length 0: malformed
    assert cut(v6) == [v6]


def test_an_ipv6_super_packet_is_cut_like_tcp6_gso_segment() -> None:
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    data = bytes(range(256)) * 12  # 3,072 bytes: two whole segments and a part
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 80, 1000, 5, 0x50, 0x19, 512, 0, 0))
    ip = struct.pack("!IHBB16s16s", 0x6000_0000, 20 + len(data), 6, 64, src, dst)
    pieces = cut(Offloaded(ip + bytes(tcp) + data, True, 1440))
    assert [len(p.ip) for p in pieces] == [40 + 20 + 1440] * 2 + [40 + 20 + 192]
    got = b""
    for i, piece in enumerate(pieces):
        raw = bytes(piece.ip)
        assert struct.unpack_from("!H", raw, 4)[0] == len(raw) - 40  # payload length
        assert struct.unpack_from("!I", raw, 44)[0] == 1000 + 1440 * i
        # FIN and PSH on the last piece only (flags 0x19 = FIN|PSH|ACK).
        assert raw[53] == (0x19 if i == 2 else 0x10)
        # The pseudo-header sum a device completes (Linux tcp_v6_send_check).
        assert struct.unpack_from("!H", raw, 56)[0] == pseudo_words(
            src + dst, 6, len(raw) - 40) % 0xFFFF
        got += raw[60:]
    assert got == data


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=200), gso=st.integers(0, 3000), csum_ok=st.booleans(),
       view=st.booleans())
def test_a_malformed_packet_passes_whole_and_never_raises(raw: bytes, gso: int,
                                                         csum_ok: bool, view: bool) -> None:
    """Garbage from the device reaches the host (which counts it as a drop) unchanged,
    or cut into pieces that each add up: never an exception in the link stage."""
    packet = Offloaded(memoryview(raw) if view else raw, csum_ok, gso)
    pieces = cut(packet)
    if pieces != [packet]:
        for piece in pieces:
            ip = bytes(piece.ip)  # type: ignore[union-attr]
            assert int.from_bytes(ip[2:4], "big") == len(ip)


def test_a_packet_shorter_than_its_length_field_is_not_cut() -> None:
    whole = super_packet(b"t" * 5000)
    short = Offloaded(bytes(whole.ip)[:3000], True, 1448)
    assert cut(short) == [short]
    bad_ihl = bytearray(whole.ip)
    bad_ihl[0] = 0x41  # a 4-byte IP header
    assert cut(Offloaded(bytes(bad_ihl), True, 1448)) == [Offloaded(bytes(bad_ihl), True, 1448)]
    bad_thl = bytearray(whole.ip)
    bad_thl[20 + 12] = 0x10  # a 4-byte TCP header
    assert len(cut(Offloaded(bytes(bad_thl), True, 1448))) == 1


def test_the_device_reports_the_segment_size_of_a_super_packet() -> None:
    raw = bytes(super_packet(b"y" * 4000).ip)
    header = vnet.header(flags=vnet.NEEDS_CSUM, gso_type=vnet.GSO_TCPV4, hdr_len=40,
                         gso_size=1448, csum_start=20, csum_offset=16)
    packet = vnet.unframe(header + raw)
    assert packet is not None and packet.gso == 1448 and packet.csum_ok
    assert vnet.unframe(vnet.header(flags=vnet.NEEDS_CSUM) + raw).gso == 0  # type: ignore[union-attr]


def test_faults_count_per_wire_segment() -> None:
    """A 10-segment super-packet is ten packets to the injector, each way."""
    packet = super_packet(b"z" * 14_480)
    for send in ("rx", "tx"):
        dropped = FaultInjector(loss=1.0, seed=1)
        assert getattr(dropped, send)(packet, 0.0) == []
        assert dropped.counters["fault_dropped"] == 10
        doubled = FaultInjector(dup=1.0, seed=1)
        out = getattr(doubled, send)(packet, 0.0)
        assert len(out) == 20 and doubled.counters["fault_duplicated"] == 10
        assert all(len(p.ip) == 20 + 20 + 1448 for p in out)
    half = FaultInjector(loss=0.5, seed=4)
    passed = sum(len(half.rx(packet, 0.0)) for _ in range(100))
    assert passed + half.counters["fault_dropped"] == 1000
    assert 400 < passed < 600


def test_a_corrupted_piece_loses_the_devices_word_on_its_checksum() -> None:
    out = FaultInjector(corrupt=1.0, seed=2).tx(super_packet(b"c" * 5000), 0.0)
    assert len(out) == 4
    assert all(type(p) is bytes for p in out)  # verified by whoever receives it
    assert not any(tcp_checksum_ok(p) for p in out)  # type: ignore[arg-type]
