"""The network layer of a host: IPv4 in and out for one address (RFC 791, RFC 1122
§3.3). In: parse and validate (`ip.parse`), reassemble fragments, answer ICMP echo,
hand TCP datagrams up. Out: an IP header (and its identification) on each segment.

With `offload` (a TUN with IFF_VNET_HDR and offloads) every packet in and out starts
with a virtio-net header (`ustack.vnet`): segments the kernel vouches for are not
checksummed again, and outgoing TCP segments leave their checksum, and their cutting
into MSS-sized pieces (TSO), to the kernel.
"""

from ustack import ip, vnet
from ustack.stats import Counters, DropReason
from ustack.tcp import segment
from ustack.tcp.segment import Segment


class Network:
    def __init__(self, addr: bytes, counters: Counters, *, offload: bool,
                 ip_id: int) -> None:
        self.addr = addr
        self.counters = counters  # the host's
        self.offload = offload
        self.fragments = ip.Fragments()
        self.out: list[bytes] = []  # packets for the link, taken by `Host.poll`
        self._ip_id = ip_id

    def input(self, packet: bytes | memoryview,
                  now: float) -> tuple[ip.Datagram, bool] | None:
        """IP's part of one packet: a TCP datagram for this host and whether its checksum
        is still to be verified; None when IP dropped it or another protocol took it."""
        self.counters["packets_in"] += 1
        verify = True
        if self.offload:
            if len(packet) < vnet.HDR_LEN:
                self.counters.drop(DropReason.VNET_TRUNCATED)
                return None
            # The kernel made this packet: a partial (NEEDS_CSUM) or already verified
            # (DATA_VALID) checksum is not ours to check.
            verify = not packet[0] & vnet.TRUSTED
            packet = memoryview(packet)[vnet.HDR_LEN:]
        dgram = ip.parse(packet, self.addr, self.counters)
        if dgram is None:
            return None
        if dgram.more or dgram.offset:
            dgram = self.fragments.add(dgram, now, self.counters)
            if dgram is None:
                return None
            verify = True
        if dgram.proto == ip.PROTO_TCP:
            return dgram, verify
        if dgram.proto == ip.PROTO_ICMP:
            reply = ip.echo_reply(dgram, self.counters, verify)
            if reply is not None:
                self.emit(dgram.src, ip.PROTO_ICMP, reply)
        else:
            self.counters.drop(DropReason.IP_PROTO_UNSUPPORTED)
        return None

    def emit_segment(self, dst: bytes, seg: Segment) -> None:
        """A TCP segment in an IP packet to `dst`."""
        self.counters["tcp_segments_out"] += 1
        # With offloads the kernel completes the checksum and cuts a TSO segment.
        header, payload = segment.encode(seg, self.addr, dst, partial=self.offload)
        framing = (vnet.tcp_header(ip.HEADER_LEN, len(header), seg.gso) if self.offload
                   else vnet.NO_OFFLOAD)
        self.emit(dst, ip.PROTO_TCP, header, payload, framing=framing)

    def emit(self, dst: bytes, proto: int, *parts: bytes | memoryview,
              framing: bytes = vnet.NO_OFFLOAD) -> None:
        """One IP packet of `parts`; with offloads, `framing` (a virtio-net header) first."""
        length = sum(len(p) for p in parts)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        packet = (ip.header(self.addr, dst, proto, length, self._ip_id), *parts)
        self.out.append(b"".join((framing, *packet) if self.offload else packet))
