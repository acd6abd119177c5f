"""IPv4 (RFC 791) validation and building, and ICMP echo (RFC 792).

Every packet that is not for us, or not well formed, is dropped with a named
reason; nothing here raises on bad input.
"""

import struct
from dataclasses import dataclass

import dpkt

from ustack.checksum import checksum, ones_sum
from ustack.stats import Counters, DropReason

PROTO_ICMP = 1
PROTO_TCP = 6

HEADER_LEN = 20
DEFAULT_TTL = 64
_DF = 0x4000
_MF = 0x2000
_OFFSET_MASK = 0x1FFF

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8


@dataclass(slots=True)
class Datagram:
    src: bytes
    dst: bytes
    proto: int
    payload: memoryview


def _bad_source(src: bytes) -> bool:
    # RFC 1122 §3.2.1.3: never answer a source that is broadcast, multicast or 0.0.0.0/8.
    return src[0] == 0 or src[0] >= 224 or src[0] == 127


def parse(packet: bytes | memoryview, our_addr: bytes, counters: Counters) -> Datagram | None:
    """Validate an IPv4 packet addressed to `our_addr`; None (counted) when dropped."""
    view = memoryview(packet)
    if not view or view[0] >> 4 != 4:
        # The kernel's IPv6 router solicitations and MLD reports end up here.
        counters.drop(DropReason.NOT_IPV4)
        return None
    if len(view) < HEADER_LEN:
        counters.drop(DropReason.IP_TRUNCATED)
        return None
    ihl = (view[0] & 0x0F) * 4
    if ihl < HEADER_LEN or ihl > len(view):
        counters.drop(DropReason.IP_BAD_IHL)
        return None
    total_len, frag, proto = struct.unpack_from("!2xH2xHxB", view)
    if total_len < ihl or total_len > len(view):
        counters.drop(DropReason.IP_BAD_LENGTH)
        return None
    if ones_sum(view[:ihl]):
        counters.drop(DropReason.IP_BAD_CHECKSUM)
        return None
    dst = bytes(view[16:20])
    if dst != our_addr:
        counters.drop(DropReason.IP_NOT_OURS)
        return None
    src = bytes(view[12:16])
    if _bad_source(src):
        counters.drop(DropReason.IP_BAD_SOURCE)
        return None
    if frag & (_MF | _OFFSET_MASK):
        counters.drop(DropReason.IP_FRAGMENT)  # reassembly is not implemented yet
        return None
    counters["ip_in"] += 1
    # Bytes past total_len are link padding, not payload.
    return Datagram(src, dst, proto, view[ihl:total_len])


def header(src: bytes, dst: bytes, proto: int, payload_len: int, ident: int) -> bytes:
    """A 20-byte IPv4 header with DF set and a valid checksum."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, HEADER_LEN + payload_len, ident & 0xFFFF, _DF,
        DEFAULT_TTL, proto, 0, src, dst,
    )
    csum = checksum((hdr,))
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:]


def echo_reply(dgram: Datagram, counters: Counters) -> bytes | None:
    """The ICMP payload answering an echo request, or None (counted) for anything else."""
    data = dgram.payload
    if len(data) < 8:
        counters.drop(DropReason.ICMP_MALFORMED)
        return None
    if ones_sum(data):
        counters.drop(DropReason.ICMP_BAD_CHECKSUM)
        return None
    icmp = dpkt.icmp.ICMP(bytes(data))
    if icmp.type != ICMP_ECHO_REQUEST or icmp.code != 0:
        counters.drop(DropReason.ICMP_IGNORED)
        return None
    # RFC 792: the reply carries the request's identifier, sequence and data unchanged.
    icmp.type = ICMP_ECHO_REPLY
    icmp.sum = 0  # dpkt recomputes a checksum only when the field is 0
    counters["icmp_echo_replies"] += 1
    return bytes(icmp)
