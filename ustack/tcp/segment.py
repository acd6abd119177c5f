"""A decoded TCP segment, and its wire encoding.

Parsing uses dpkt's TCP header; dpkt never verifies checksums, so we do (MUST-3),
over the pseudo-header of RFC 9293 §3.1.
"""

import struct
from dataclasses import dataclass, field

import dpkt

from ustack.checksum import checksum, ones_sum
from ustack.tcp import options
from ustack.tcp.options import OptionError, Options

NO_OPTIONS = Options()  # shared by incoming segments without options: never mutated

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

PROTO_TCP = 6
HEADER_LEN = 20

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
    # Outgoing only: data per segment when the device is to cut this one (TSO); 0 = none.
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


def pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, PROTO_TCP, length)


def decode(src: bytes, dst: bytes, data: memoryview, verify: bool = True) -> Segment:
    """Decode and verify one TCP segment carried from `src` to `dst`. Raises SegmentError.

    `verify=False` only for a segment the device vouches for (`ustack.vnet.TRUSTED`):
    the kernel made it and never computed (or already checked) its checksum."""
    if len(data) < HEADER_LEN:
        raise SegmentError("TCP_MALFORMED")
    if verify and (ones_sum(pseudo_header(src, dst, len(data))) + ones_sum(data)) % 0xFFFF:
        raise SegmentError("TCP_BAD_CHECKSUM")  # MUST-3
    try:
        tcp = dpkt.tcp.TCP(data)
    except (dpkt.UnpackError, dpkt.NeedData):
        raise SegmentError("TCP_MALFORMED") from None
    if len(tcp.opts) + HEADER_LEN > len(data):
        raise SegmentError("TCP_MALFORMED")
    try:
        opts = options.parse(tcp.opts) if tcp.opts else NO_OPTIONS
    except OptionError:
        raise SegmentError("TCP_BAD_OPTIONS") from None
    flags = tcp.flags & 0x3F
    if flags & SYN and flags & (RST | FIN):
        raise SegmentError("TCP_BAD_FLAGS")  # no meaningful SYN+RST / SYN+FIN exists
    return Segment(tcp.sport, tcp.dport, tcp.seq, tcp.ack, flags, tcp.win, tcp.data, opts)


def encode(seg: Segment, src: bytes, dst: bytes,
           partial: bool = False) -> tuple[bytes, bytes | memoryview]:
    """Wire form of `seg` as (header with options and checksum, payload).

    `partial`: the checksum field holds only the pseudo-header sum, for a device that
    completes it (checksum offload, `ustack.vnet.NEEDS_CSUM`), as Linux's tcp_v4_send_check."""
    opts = options.encode(seg.opts) if seg.opts is not NO_OPTIONS else b""
    hlen = HEADER_LEN + len(opts)
    header = struct.pack(
        "!HHIIBBHHH", seg.src_port, seg.dst_port, seg.seq, seg.ack if seg.flags & ACK else 0,
        (hlen // 4) << 4, seg.flags, seg.wnd, 0, 0,
    ) + opts
    if partial:
        csum = ones_sum(pseudo_header(src, dst, hlen + len(seg.payload)))
        return header[:16] + csum.to_bytes(2, "big") + header[18:], seg.payload
    csum = checksum((pseudo_header(src, dst, hlen + len(seg.payload)), header, seg.payload))
    return header[:16] + csum.to_bytes(2, "big") + header[18:], seg.payload
