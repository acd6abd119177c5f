"""Captures as ladder events: pcap and pcapng files (`--pcap`'s, tcpdump's, Wireshark's),
the IP packets (IPv4 and IPv6) in their frames, and the TCP segments in those."""

import dataclasses
import struct
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

from ustack.addresses import ntop
from ustack.ip import PROTO_TCP, read_header
from ustack.ip6 import NH_FRAGMENT, skip_extensions
from ustack.ladder.track import conn_key
from ustack.probe import (
    Endpoint,
    FaultEvent,
    SegmentEvent,
)
from ustack.stats import DropReason
from ustack.tcp import segment
from ustack.tcp.segment import ACK, SYN, SegmentError

# ------------------------------------------------------------------------------ captures

PCAPNG_SHB = 0x0A0D0D0A
_PCAP_MAGICS = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}
RAW_LINKTYPES = (101, 228, 12)  # LINKTYPE_RAW, LINKTYPE_IPV4, DLT_RAW of OpenBSD


class CaptureError(ValueError):
    """Not a pcap/pcapng file, or a truncated one."""


def read_capture(f: BinaryIO) -> Iterator[tuple[float, int, bytes]]:
    """(time, link type, frame) for every packet of a classic pcap (either byte order,
    µs or ns) or pcapng (SHB/IDB/EPB/SPB/PB, link type per interface) file."""
    head = f.read(4)
    if len(head) < 4:
        raise CaptureError("empty file")
    if int.from_bytes(head, "little") == PCAPNG_SHB:
        yield from _read_pcapng(f, head)
        return
    for order in "<>":
        (magic,) = struct.unpack(order + "I", head)
        if magic in _PCAP_MAGICS:
            break
    else:
        raise CaptureError(f"not a capture file (magic {head.hex()})")
    unit = _PCAP_MAGICS[magic]
    rest = f.read(20)
    if len(rest) < 20:
        raise CaptureError("truncated pcap header")
    linktype = struct.unpack(order + "I", rest[16:20])[0] & 0xFFFF
    rec = struct.Struct(order + "IIII")
    while True:
        hdr = f.read(16)
        if len(hdr) < 16:
            return
        sec, frac, caplen, _ = rec.unpack(hdr)
        data = f.read(caplen)
        if len(data) < caplen:
            return
        yield sec + frac * unit, linktype, data


def _read_pcapng(f: BinaryIO, first: bytes) -> Iterator[tuple[float, int, bytes]]:
    order = "<"
    ifaces: list[tuple[int, float, int, float]] = []  # link type, ts unit, snaplen, offset
    last_time = 0.0
    pending = first
    while True:
        hdr = pending + f.read(8 - len(pending))
        pending = b""
        if len(hdr) < 8:
            return
        if int.from_bytes(hdr[:4], "little") == PCAPNG_SHB:
            bom = f.read(4)
            order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            (length,) = struct.unpack(order + "I", hdr[4:8])
            body = bom + f.read(length - 12)
            ifaces = []
        else:
            btype, length = struct.unpack(order + "II", hdr)
            body = f.read(length - 8)
        if length < 12 or len(body) < length - 8:
            return
        body = body[:-4]  # the trailing copy of the length
        btype = struct.unpack(order + "I", hdr[:4])[0]
        if btype == 1:  # IDB
            linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
            unit, offset = 1e-6, 0.0
            for code, value in _pcapng_options(body[8:], order):
                if code == 9 and value:
                    v = value[0]
                    unit = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                elif code == 14 and len(value) == 8:
                    offset = float(struct.unpack(order + "q", value)[0])
            ifaces.append((linktype, unit, snaplen, offset))
        elif btype in (6, 2):  # EPB, obsolete PB
            if btype == 6:
                iface, hi, lo, caplen, _ = struct.unpack_from(order + "IIIII", body)
            else:
                iface, _, hi, lo, caplen, _ = struct.unpack_from(order + "HHIIII", body)
            if iface >= len(ifaces):
                continue
            linktype, unit, _, offset = ifaces[iface]
            last_time = ((hi << 32) | lo) * unit + offset
            yield last_time, linktype, body[20:20 + caplen]
        elif btype == 3 and ifaces:  # SPB: interface 0, no time stamp
            linktype, _, snaplen, _ = ifaces[0]
            (origlen,) = struct.unpack_from(order + "I", body)
            size = min(origlen, snaplen) if snaplen else origlen
            yield last_time, linktype, body[4:4 + size]


def _pcapng_options(buf: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    i = 0
    while i + 4 <= len(buf):
        code, length = struct.unpack_from(order + "HH", buf, i)
        if code == 0:
            return
        yield code, buf[i + 4:i + 4 + length]
        i += 4 + (length + 3) // 4 * 4


_ETHERTYPES = (b"\x08\x00", b"\x86\xdd")  # IPv4, IPv6
# BSD loopback's address family, in either byte order: AF_INET, and AF_INET6 (24, 28, 30).
_BSD_FAMILIES = {bytes((f, 0, 0, 0)) for f in (2, 24, 28, 30)} | {
    bytes((0, 0, 0, f)) for f in (2, 24, 28, 30)}


def ip_of_frame(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet (IPv4 or IPv6) inside a link-layer frame, or None (other protocols,
    link types)."""
    if linktype in RAW_LINKTYPES:
        ip = frame
    elif linktype == 1:  # Ethernet, optional 802.1Q / 802.1ad tags
        i = 12
        while len(frame) >= i + 2 and frame[i:i + 2] in (b"\x81\x00", b"\x88\xa8"):
            i += 4
        if frame[i:i + 2] not in _ETHERTYPES:
            return None
        ip = frame[i + 2:]
    elif linktype == 113:  # Linux cooked v1: protocol at 14
        if frame[14:16] not in _ETHERTYPES:
            return None
        ip = frame[16:]
    elif linktype == 276:  # Linux cooked v2: protocol at 0, 20-byte header
        if frame[0:2] not in _ETHERTYPES:
            return None
        ip = frame[20:]
    elif linktype == 0:  # BSD loopback: the address family in host order
        if frame[:4] not in _BSD_FAMILIES:
            return None
        ip = frame[4:]
    else:
        return None
    if len(ip) >= 40 and ip[0] >> 4 == 6:
        return ip
    return ip if len(ip) >= 20 and ip[0] >> 4 == 4 else None


def _tcp_of_ip(time: float, packet: bytes) -> SegmentEvent | str:
    """The TCP segment in an IPv4 packet as an event (`outbound` still to be decided), or
    why it was skipped. A capture is read as it is: any address, checksums unchecked (a
    sender's capture holds them before its device completes them), the payload's length
    from the IP and TCP headers even when the capture cut the packet short (a TSO
    packet's IP total length is 0: then what was captured)."""
    if packet and packet[0] >> 4 == 6:
        return _tcp_of_ip6(time, packet) if len(packet) >= 40 else "truncated"
    found = read_header(packet)
    if isinstance(found, DropReason):
        return "truncated"
    ihl, total, _, frag, proto, src, dst = found
    if proto != PROTO_TCP:
        return "not TCP"
    if frag & 0x1FFF:
        return "IP fragment"
    try:
        seg = segment.read(packet[ihl:], lenient=True)
    except SegmentError:
        return "truncated"
    hlen = (packet[ihl + 12] >> 4) * 4  # as declared, whatever was captured of it
    length = max(0, (total if total >= ihl + hlen else len(packet)) - ihl - hlen)
    return SegmentEvent(time, Endpoint(ntop(src), seg.src_port),
                        Endpoint(ntop(dst), seg.dst_port), False, seg.flags,
                        seg.seq, seg.ack, seg.wnd, length, seg.opts)


def _tcp_of_ip6(time: float, packet: bytes) -> SegmentEvent | str:
    """`_tcp_of_ip` for an IPv6 packet: past Hop-by-Hop, Routing and Destination
    options headers; a fragment is skipped."""
    next_header, offset = skip_extensions(packet, packet[6], 40, through_fragments=False)
    if next_header == NH_FRAGMENT:
        return "IP fragment"
    if next_header != PROTO_TCP or offset < 0:
        return "not TCP"
    try:
        seg = segment.read(packet[offset:], lenient=True)
    except SegmentError:
        return "truncated"
    total = 40 + int.from_bytes(packet[4:6], "big")
    hlen = (packet[offset + 12] >> 4) * 4
    length = max(0, (total if total >= offset + hlen else len(packet)) - offset - hlen)
    return SegmentEvent(time, Endpoint(ntop(packet[8:24]), seg.src_port),
                        Endpoint(ntop(packet[24:40]), seg.dst_port), False, seg.flags,
                        seg.seq, seg.ack, seg.wnd, length, seg.opts)


DEFAULT_US = "10.77.0.2"


def fault_event(kind: str, ip: bytes, outbound: bool, time: float) -> FaultEvent | None:
    """The ladder's event for a packet the fault injector acted on (None: not TCP)."""
    pkt = _tcp_of_ip(time, ip)
    if isinstance(pkt, str):
        return None
    return FaultEvent(time, pkt.src, pkt.dst, outbound, kind, pkt.flags, pkt.seq, pkt.length)


def capture_events(f: BinaryIO, us: str | None = None) -> tuple[list[SegmentEvent], Counter]:
    """The segments of a capture as events, and the count of packets skipped, by reason.

    ustack's side of each connection is the endpoint at address `us` (default: 10.77.0.2
    if present, else the passive side: the one that answered the first SYN); in a
    connection without that address, the passive side (or the destination of its first
    packet when its SYN was not captured).
    """
    skipped: Counter = Counter()
    packets: list[SegmentEvent] = []
    for time, linktype, frame in read_capture(f):
        ip = ip_of_frame(linktype, frame)
        if ip is None:
            skipped["not IP" if linktype in (0, 1, 12, 101, 113, 228, 276)
                    else f"link type {linktype}"] += 1
            continue
        pkt = _tcp_of_ip(time, ip)
        if isinstance(pkt, str):
            skipped[pkt] += 1
        else:
            packets.append(pkt)
    addrs = {p.src.addr for p in packets} | {p.dst.addr for p in packets}
    if us is None:
        if DEFAULT_US in addrs:
            us = DEFAULT_US
        else:
            first = next((p for p in packets if p.flags & (SYN | ACK) == SYN), None)
            us = first.dst.addr if first else None
    ours: dict[tuple, Endpoint] = {}  # connection -> ustack's endpoint
    for p in packets:
        key = conn_key(p.src, p.dst)
        if key in ours:
            continue
        if us is not None and us in (p.src.addr, p.dst.addr):
            ours[key] = p.src if p.src.addr == us else p.dst
        elif p.flags & (SYN | ACK) == SYN | ACK:
            ours[key] = p.src
        else:
            ours[key] = p.dst
    events = [dataclasses.replace(p, outbound=p.src == ours[conn_key(p.src, p.dst)])
              for p in packets]
    return events, skipped


