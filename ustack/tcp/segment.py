"""A decoded TCP segment, and its wire encoding.

The hot path: one `struct` call parses or builds the fixed header (dpkt's TCP class
cost a sixth of a keep-alive request's budget, see BENCHMARKS.md); the tests check both
directions against dpkt. Checksums are verified (MUST-3) and made over the pseudo-header
of RFC 9293 §3.1 with one reduction each.
"""

import struct
from dataclasses import dataclass, field

from ustack.checksum import finish, pseudo_words, residue, words
from ustack.tcp import options
from ustack.tcp.options import OptionError, Options

NO_OPTIONS = Options()  # shared by incoming segments without options: never mutated

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40  # RFC 3168: ustack does not negotiate ECN; the ladder names them
CWR = 0x80

PROTO_TCP = 6
HEADER_LEN = 20
# Text in one super-segment (TSO out, coalesced in): an IPv4 datagram's 64 KB less the
# largest IP (20, no options sent) and TCP (60) headers.
SUPER_PAYLOAD_MAX = 0xFFFF - 20 - 60

_FLAG_NAMES = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"), (URG, "URG"))


@dataclass(slots=True)
class Segment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    wnd: int
    payload: bytes | memoryview = b""
    opts: Options = field(default_factory=Options)
    # Data per segment of a super-segment: outgoing, where the device is to cut it (TSO);
    # incoming, the size of the segments receive coalescing joined (ustack.tcp.gro).
    # 0: an ordinary segment.
    gso: int = 0

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload plus one for each of SYN and FIN (RFC 9293 §3.4)."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def __repr__(self) -> str:
        names = "|".join(n for f, n in _FLAG_NAMES if self.flags & f) or "-"
        ack = f" ack={self.ack}" if self.flags & ACK else ""
        return (
            f"<{self.src_port}→{self.dst_port} {names} seq={self.seq}{ack} "
            f"wnd={self.wnd} len={len(self.payload)} {self.opts}>"
        )


class SegmentError(ValueError):
    """Why a segment was dropped; `reason` is a stats.DropReason name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_HEADER = struct.Struct("!HHIIBBHHH")


def pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    """The pseudo-header of RFC 9293 §3.1 (for tools and tests that build segments)."""
    return src + dst + struct.pack("!BBH", 0, PROTO_TCP, length)


def decode(src: bytes, dst: bytes, data: bytes | memoryview, verify: bool = True) -> Segment:
    """Decode and verify one TCP segment carried from `src` to `dst`. Raises SegmentError.

    `verify=False` only for a segment the device vouches for (`ustack.vnet.TRUSTED`):
    the kernel made it and never computed (or already checked) its checksum."""
    size = len(data)
    if size < HEADER_LEN:
        raise SegmentError("TCP_MALFORMED")
    # MUST-3 over the pseudo-header and the segment, with one reduction.
    if verify and (residue(data) + pseudo_words(src + dst, PROTO_TCP, size)) % 0xFFFF:
        raise SegmentError("TCP_BAD_CHECKSUM")
    seg = read(data)
    if seg.flags & SYN and seg.flags & (RST | FIN):
        raise SegmentError("TCP_BAD_FLAGS")  # no meaningful SYN+RST / SYN+FIN exists
    return seg


def read(data: bytes | memoryview, lenient: bool = False) -> Segment:
    """The header and options of a TCP segment, its payload what follows them: the step
    `decode` and the capture reader (`ustack.ladder.capture`) share. Raises SegmentError
    for a header that does not fit, or bad options; `lenient` (a capture's segment, shown
    as it is) raises only for less than the fixed header, and takes the options that
    were captured, or none if they are bad."""
    if len(data) < HEADER_LEN:
        raise SegmentError("TCP_MALFORMED")
    # The fixed header with one struct call, not dpkt's TCP class: its parse cost ~3 µs
    # a segment, a sixth of the keep-alive budget (profile in BENCHMARKS.md).
    src_port, dst_port, seq_no, ack, offset, flags, wnd, _, _ = _HEADER.unpack_from(data)
    hlen = (offset >> 4) * 4
    if hlen < HEADER_LEN or hlen > len(data):
        if not lenient:
            raise SegmentError("TCP_MALFORMED")
        hlen = min(max(hlen, HEADER_LEN), len(data))  # a capture cut short: what is there
    try:
        opts = options.parse(data[HEADER_LEN:hlen]) if hlen > HEADER_LEN else NO_OPTIONS
    except OptionError:
        if not lenient:
            raise SegmentError("TCP_BAD_OPTIONS") from None
        opts = NO_OPTIONS
    # The six flags of RFC 9293 §3.1 (a capture shows ECN's two as well).
    return Segment(src_port, dst_port, seq_no, ack, flags if lenient else flags & 0x3F, wnd,
                   data[hlen:], opts)


def encode(seg: Segment, src: bytes, dst: bytes,
           partial: bool = False) -> tuple[bytes, bytes | memoryview]:
    """Wire form of `seg` as (header with options and checksum, payload).

    `partial`: the checksum field holds only the pseudo-header sum, for a device that
    completes it (checksum offload, `ustack.vnet.NEEDS_CSUM`), as Linux's
    tcp_v4_send_check and tcp_v6_send_check (the same sum over IPv6's pseudo-header,
    RFC 8200 §8.1)."""
    opts = options.encode(seg.opts) if seg.opts is not NO_OPTIONS else b""
    hlen = HEADER_LEN + len(opts)
    payload = seg.payload
    fields = (seg.src_port, seg.dst_port, seg.seq, seg.ack if seg.flags & ACK else 0,
              (hlen // 4) << 4, seg.flags, seg.wnd)
    pseudo = pseudo_words(src + dst, PROTO_TCP, hlen + len(payload))
    if partial:
        return _HEADER.pack(*fields, pseudo % 0xFFFF, 0) + opts, payload
    # One reduction over pseudo-header, header and data; the header's length is a
    # multiple of 4, so the data's words line up after it.
    total = pseudo + words(_HEADER.pack(*fields, 0, 0) + opts) + residue(payload)
    return _HEADER.pack(*fields, finish(total), 0) + opts, payload
