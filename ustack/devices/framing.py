"""Framing of a byte stream of back-to-back IP packets, as tunnels carry them over TLS,
QUIC or TCP (the iOS developer tunnel, many VPNs): each packet's own length field says
where it ends (IPv4's Total Length, RFC 791; IPv6's Payload Length plus its 40-byte
header, RFC 8200), so outgoing packets need nothing added. Sans-IO: bytes in, packets
out.

What cannot be framed ends the stream (`FramingError`, with why): a version nibble other
than 4 or 6, or a length shorter than the header it belongs to (there is no way to find
the next packet after either). A packet that frames but is bad inside (a checksum, an
address) is the stack's to drop and count.
"""

from __future__ import annotations

IPV4_MIN, IPV6_HEADER = 20, 40
MAX_PACKET = IPV6_HEADER + 0xFFFF  # the largest length either header can say


class FramingError(ValueError):
    """The stream is not back-to-back IP packets: it cannot be followed any further."""


class Framer:
    """Cuts a stream into packets: `feed` bytes as they are read; complete packets come
    out, a packet split across reads waits for the rest (at most `MAX_PACKET` bytes)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.offset = 0  # bytes of the stream framed so far (for the error message)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held for the next read."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The packets `data` completes, in order; FramingError where the stream stops
        making sense (the packets before it are returned by the calls before)."""
        buf = self._buf
        buf += data
        packets = []
        start, n = 0, len(buf)
        while n - start >= 4:
            size = _length(buf, start, self.offset + start)
            if size is None:  # an IPv6 header not yet whole enough to read its length
                break
            if n - start < size:
                break
            packets.append(bytes(buf[start:start + size]))
            start += size
        if start:
            del buf[:start]
            self.offset += start
        return packets


def _length(buf: bytearray, at: int, where: int) -> int | None:
    """The length of the packet that starts at `at` (`where` in the stream), None when
    too little of it is here to tell."""
    version = buf[at] >> 4
    if version == 4:
        total = buf[at + 2] << 8 | buf[at + 3]
        header = (buf[at] & 0x0F) * 4
        if header < IPV4_MIN or total < header:
            raise FramingError(f"at byte {where}: an IPv4 packet of {total} bytes with a "
                               f"{header}-byte header")
        return total
    if version == 6:
        if len(buf) - at < 6:
            return None
        payload = buf[at + 4] << 8 | buf[at + 5]
        if payload == 0:
            raise FramingError(f"at byte {where}: an IPv6 packet with payload length 0 (a "
                               "jumbogram, which cannot be framed)")
        return IPV6_HEADER + payload
    raise FramingError(f"at byte {where}: version {version} is neither IPv4 nor IPv6 (not a "
                       "stream of IP packets)")
