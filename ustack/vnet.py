"""The virtio-net header that frames every packet on a TUN opened with `IFF_VNET_HDR`.

With offloads on (`TUNSETOFFLOAD`: checksum, TSO4/TSO6), the kernel and ustack hand
each other large TCP segments and leave the TCP checksum to the other side:

* Kernel -> ustack: a packet whose header has `NEEDS_CSUM` carries only the pseudo-header
  sum in its TCP checksum field (the kernel never computed the rest: the data never
  crossed a wire). `DATA_VALID` says the kernel has already verified it. Either way there
  is nothing for MUST-3 to verify; anything else is verified as usual. A `gso_type`
  other than NONE marks a super-packet of up to 64 KB, which is simply a large segment.
* ustack -> kernel: every TCP segment goes out with `NEEDS_CSUM` (`csum_start` at the
  TCP header, `csum_offset` 16, the field holding the pseudo-header sum), and a segment
  with more data than one MSS carries `GSO_TCPV4` (`GSO_TCPV6` over IPv6) with
  `gso_size` = data per segment, so the kernel cuts it into MSS-sized segments (each
  with a copy of the headers).

The layout is `struct virtio_net_hdr` (10 bytes) in the host's byte order, as the kernel
expects of a legacy TUN (no TUNSETVNETLE/BE): linux/virtio_net.h.
"""

import struct

from ustack.packet import Offloaded, Packet

HDR_LEN = 10
_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_GSO_SIZE = struct.Struct("=H")

# flags
NEEDS_CSUM = 0x01
DATA_VALID = 0x02
TRUSTED = NEEDS_CSUM | DATA_VALID  # the TCP checksum is not ours to verify

# gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4

TCP_CSUM_OFFSET = 16  # the checksum field within the TCP header

NO_OFFLOAD = bytes(HDR_LEN)  # a whole packet, checksums complete (ICMP, anything not TCP)


def header(*, flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
           csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return _HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def tcp_header(ip_hlen: int, tcp_hlen: int, gso_size: int, gso_type: int = GSO_TCPV4) -> bytes:
    """The header for a TCP segment with a partial checksum; `gso_size` 0 = one segment;
    `gso_type` GSO_TCPV6 for one over IPv6."""
    return _HDR.pack(NEEDS_CSUM, gso_type if gso_size else GSO_NONE,
                     ip_hlen + tcp_hlen, gso_size, ip_hlen, TCP_CSUM_OFFSET)


def parse(frame: bytes | memoryview) -> tuple[int, int, int, int, int, int]:
    """(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) of a frame."""
    return _HDR.unpack_from(frame)


def unframe(frame: bytes) -> Offloaded | None:
    """The IP packet in a frame read from the device, with whether the device vouches
    for its checksum (`TRUSTED`) and, for a super-packet, its segment size; None for a
    frame shorter than the header."""
    if len(frame) < HDR_LEN:
        return None
    gso = _GSO_SIZE.unpack_from(frame, 4)[0] if frame[1] != GSO_NONE else 0
    return Offloaded(memoryview(frame)[HDR_LEN:], bool(frame[0] & TRUSTED), gso)


def frame_header(packet: Packet) -> tuple[bytes, bytes | memoryview]:
    """The header to write before a packet, and the IP packet: an `Offloaded` TCP segment
    leaves its checksum (and, past `gso` bytes of data, its cutting) to the kernel; any
    other packet is whole (`NO_OFFLOAD`)."""
    if type(packet) is not Offloaded:
        return NO_OFFLOAD, packet  # type: ignore[return-value]
    ip = packet.ip
    if ip[0] >> 4 == 6:  # IPv6: a 40-byte header (our TCP segments carry no extensions)
        return tcp_header(40, (ip[52] >> 4) * 4, packet.gso, GSO_TCPV6), ip
    ip_hlen = (ip[0] & 0x0F) * 4
    tcp_hlen = (ip[ip_hlen + 12] >> 4) * 4
    return tcp_header(ip_hlen, tcp_hlen, packet.gso), ip
