"""The network layer of a host: IPv4 in and out for one address (RFC 791, RFC 1122
§3.3). In: parse and validate (`ip.parse`), reassemble fragments, answer ICMP echo,
hand TCP datagrams up. Out: an IP header (and its identification) on each segment.

With `offload` (a device with checksum and TSO offloads) packets in may come with the
device's word for their checksum (`ustack.packet.Offloaded`): those are not checksummed
again; outgoing TCP segments leave their checksum, and their cutting into MSS-sized
pieces (TSO), to the device. How the device carries this is the device adapter's
business (`ustack.tun`, `ustack.vnet`).
"""

from ustack import ip
from ustack.packet import Offloaded, Packet
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
        self.out: list[Packet] = []  # packets for the link, taken by `Host.poll`
        self._ip_id = ip_id

    def input(self, packet: Packet, now: float) -> tuple[ip.Datagram, bool] | None:
        """IP's part of one packet: a TCP datagram for this host and whether its checksum
        is still to be verified; None when IP dropped it or another protocol took it."""
        self.counters["packets_in"] += 1
        verify = True
        if type(packet) is Offloaded:
            # The kernel made this packet: a partial or already verified checksum is not
            # ours to check.
            verify = not packet.csum_ok
            packet = packet.ip
        dgram = ip.parse(packet, self.addr, self.counters)  # type: ignore[arg-type]
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
        """A TCP segment in an IP packet to `dst`. With offloads its checksum is left
        partial and the packet goes as `Offloaded`: the device completes the checksum
        and cuts a TSO segment (`seg.gso`)."""
        self.counters["tcp_segments_out"] += 1
        header, payload = segment.encode(seg, self.addr, dst, partial=self.offload)
        self.emit(dst, ip.PROTO_TCP, header, payload, gso=seg.gso if self.offload else None)

    def emit(self, dst: bytes, proto: int, *parts: bytes | memoryview,
             gso: int | None = None) -> None:
        """One IP packet of `parts`; with `gso` (not None), as `Offloaded`."""
        length = sum(len(p) for p in parts)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        packet = b"".join((ip.header(self.addr, dst, proto, length, self._ip_id), *parts))
        self.out.append(packet if gso is None else Offloaded(packet, gso=gso))
