"""The struct-based TCP codec against dpkt, an independent one, on random segments.

segment.decode parses the fixed header with one struct call (the hot path); dpkt stays
the reference: every field it reads must be what we read, every segment we build must
parse in dpkt to what we meant, and every checksum must agree with dpkt's in_cksum.
"""

import socket
import struct

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from ustack.tcp import options, segment
from ustack.tcp.options import Options
from ustack.tcp.segment import ACK, Segment, SegmentError

SRC = socket.inet_aton("10.77.0.1")
DST = socket.inet_aton("10.77.0.2")

OPTION_LISTS = st.sampled_from([
    b"",
    b"\x01\x01\x08\x0a\x00\x00\x00\x07\x00\x00\x00\x09",  # NOP NOP TS
    b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x03\x07",
    b"\x01\x01\x05\x0a\x00\x00\x00\x10\x00\x00\x00\x20",  # SACK, one block
    b"\x02\x04\x05\xb4",
    b"\x01\x01\x01\x01",
])


def _dpkt_segment(sport, dport, seq_no, ack, flags, win, opts, payload) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq_no, ack=ack, flags=flags, win=win,
                       opts=opts, data=payload)
    tcp.off = (20 + len(opts)) // 4
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, len(bytes(tcp)))
    tcp.sum = 0
    tcp.sum = dpkt.in_cksum(pseudo + bytes(tcp))
    return bytes(tcp)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 0x3F), st.integers(0, 65535), OPTION_LISTS,
       st.binary(max_size=300))
def test_decode_reads_what_dpkt_reads(sport, dport, seq_no, ack, flags, win, opts,
                                      payload) -> None:
    wire = _dpkt_segment(sport, dport, seq_no, ack, flags, win, opts, payload)
    ref = dpkt.tcp.TCP(wire)
    try:
        seg = segment.decode(SRC, DST, memoryview(wire))
    except SegmentError as e:
        assert e.reason == "TCP_BAD_FLAGS" and flags & 0x02 and flags & 0x05
        return
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.wnd) == (
        ref.sport, ref.dport, ref.seq, ref.ack, ref.flags & 0x3F, ref.win)
    assert bytes(seg.payload) == ref.data
    assert seg.opts == (options.parse(ref.opts) if ref.opts else Options())


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 0x3F), st.integers(0, 65535),
       st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.binary(max_size=300))
def test_encode_is_what_dpkt_parses_with_its_checksum(sport, dport, seq_no, ack, flags, win,
                                                      ts_val, payload) -> None:
    opts = Options(ts_val=ts_val, ts_ecr=7) if ts_val is not None else Options()
    seg = Segment(sport, dport, seq_no, ack, flags | ACK, win, payload, opts)
    header, data = segment.encode(seg, SRC, DST)
    wire = header + bytes(data)
    ref = dpkt.tcp.TCP(wire)
    assert (ref.sport, ref.dport, ref.seq, ref.ack, ref.flags, ref.win, ref.data) == (
        sport, dport, seq_no, ack, flags | ACK, win, payload)
    assert options.parse(ref.opts) == opts
    pseudo = SRC + DST + struct.pack("!BBH", 0, 6, len(wire))
    zeroed = wire[:16] + b"\x00\x00" + wire[18:]
    assert ref.sum == dpkt.in_cksum(pseudo + zeroed)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=20, max_size=80))
def test_any_header_bytes_decode_or_fail_cleanly(raw: bytes) -> None:
    try:
        seg = segment.decode(SRC, DST, memoryview(raw), verify=False)
    except SegmentError:
        return
    assert 20 <= len(raw) - len(seg.payload) <= 60


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=3000))
def test_the_little_endian_residue_is_the_big_endian_sum(data: bytes) -> None:
    """`checksum.residue` (the receive path's reading) equals the word sum `words`
    gives, and dpkt's checksum of the same bytes."""
    from ustack.checksum import finish, residue, words

    assert residue(data) % 0xFFFF == words(data) % 0xFFFF
    # Equal in ones' complement, where 0 and 0xffff are one value (RFC 1071).
    assert (finish(residue(data)) - dpkt.in_cksum(data)) % 0xFFFF == 0
