"""Software segmentation: a TCP super-packet cut into the wire-sized segments it stands
for (Linux's skb_gso_segment and tcp_gso_segment), for the stages that must act per
wire packet (the fault injector: one loss drops one segment, not 44 of them).

With offloads a TCP packet (IPv4, or IPv6 with TCP right after its header) may carry up
to 64 KB of data and a segment size (`Offloaded.gso`): the kernel hands ustack such
super-packets, and ustack hands the kernel TSO requests. Each piece gets a copy of the IP
and TCP headers with its own length (for IPv4 also the identification, the first's plus
its index, as the kernel numbers the segments it cuts, and the header checksum) and
sequence number; CWR stays on the first piece only, FIN and PSH on the last only
(tcp_gso_segment). The pieces keep the offload metadata without a segment size: the TCP
checksum stays the device's to complete (outbound) or vouched for (inbound), its field
the piece's pseudo-header sum as a device completes it. A bit the fault injector flips
takes that metadata away (`faults.flip_bit`), so the receiving side verifies the
checksum and drops the piece, as a wire's corruption is caught. A super-packet the
device did not vouch for (`csum_ok` False on receive) would need its pieces checksummed
in full; the kernel never hands over such a packet, so its pieces keep the partial sum
and the host drops them as bad.
"""

import struct

from ustack.checksum import finish, pseudo_words, words
from ustack.packet import Offloaded, Packet

PROTO_TCP = 6
IP6_HEADER = 40
FIN, PSH, CWR = 0x01, 0x08, 0x80
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def cut(packet: Packet) -> list[Packet]:
    """The wire packets `packet` stands for: itself unless it is a TCP super-packet
    (`Offloaded` with a segment size smaller than its data), else one `Offloaded` per
    segment of `gso` bytes of data (the last may be shorter)."""
    if type(packet) is not Offloaded or not packet.gso:
        return [packet]
    ip = packet.ip
    v6 = len(ip) >= IP6_HEADER and ip[0] >> 4 == 6 and ip[6] == PROTO_TCP
    if not v6 and (len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != PROTO_TCP):
        return [packet]  # not TCP right after the IP header (IPv6 extensions pass whole)
    # Whatever does not add up passes whole, for the host to judge and count: a
    # malformed packet is the host's drop, never this stage's exception.
    if v6:  # tcp_gso_segment's IPv6 twin (tcp6_gso_segment): no ID, no header checksum
        ihl, total = IP6_HEADER, IP6_HEADER + _U16.unpack_from(ip, 4)[0]
    else:
        ihl, total = (ip[0] & 0x0F) * 4, _U16.unpack_from(ip, 2)[0]
    if ihl < 20 or total > len(ip) or total < ihl + 20:
        return [packet]
    thl = (ip[ihl + 12] >> 4) * 4
    start = ihl + thl
    size = packet.gso
    if thl < 20 or start > total or total - start <= size:
        return [packet]
    ip_head = bytearray(ip[:ihl])
    tcp_head = bytearray(ip[ihl:start])
    ident = 0 if v6 else _U16.unpack_from(ip_head, 4)[0]
    seq = _U32.unpack_from(tcp_head, 4)[0]
    flags = tcp_head[13]
    addresses = bytes(ip_head[8:40] if v6 else ip_head[12:20])  # the pseudo-header's
    data = memoryview(ip)[start:total]
    pieces: list[Packet] = []
    offsets = range(0, len(data), size)
    last = offsets[-1]
    for i, offset in enumerate(offsets):
        piece = data[offset:offset + size]
        length = thl + len(piece)
        if v6:
            _U16.pack_into(ip_head, 4, length)
        else:
            _U16.pack_into(ip_head, 2, ihl + length)
            _U16.pack_into(ip_head, 4, (ident + i) & 0xFFFF)
            _U16.pack_into(ip_head, 10, 0)
            _U16.pack_into(ip_head, 10, finish(words(ip_head)))
        _U32.pack_into(tcp_head, 4, (seq + offset) & 0xFFFFFFFF)
        piece_flags = flags
        if i:
            piece_flags &= ~CWR
        if offset != last:
            piece_flags &= ~(FIN | PSH)
        tcp_head[13] = piece_flags
        # The pseudo-header sum a device completes (Linux's tcp_v4_send_check).
        _U16.pack_into(tcp_head, 16, pseudo_words(addresses, PROTO_TCP, length) % 0xFFFF)
        pieces.append(Offloaded(b"".join((ip_head, tcp_head, piece)), packet.csum_ok))
    return pieces
