"""The network layer of a host: IPv4 in and out for its address (RFC 791, RFC 1122
§3.3). In: parse and validate (`ip.parse`), reassemble fragments, answer ICMP echo,
hand TCP datagrams up, and an ICMP error saying a TCP segment of ours was too big for
the path to the host (`on_too_big`; `ustack.pmtu`). Out: an IP header (and its
identification) on each segment.

IPv6 beside it (RFC 8200) for the host's IPv6 addresses: `ip6.parse` validates, walks
the extension headers and reassembles; TCP goes up as IPv4's does (the same
`ip.Datagram`, 16-byte addresses), ICMPv6 echo is answered and what input refuses draws
a rate-limited Parameter Problem (`ustack.icmp6`). Out, a segment takes the family of
its peer's address, from our address for that peer (`local_for`).

With `offload` (a device with checksum and TSO offloads) packets in may come with the
device's word for their checksum (`ustack.packet.Offloaded`): those are not checksummed
again; outgoing TCP segments leave their checksum, and their cutting into MSS-sized
pieces (TSO), to the device. How the device carries this is the device adapter's
business (`ustack.tun`, `ustack.vnet`).
"""

import errno
import ipaddress
from collections.abc import Callable, Sequence

from ustack import icmp6, ip, ip6
from ustack.addresses import is_link_local
from ustack.packet import Offloaded, Packet
from ustack.pmtu import PathMtu, TooBig
from ustack.stats import Counters, DropReason
from ustack.tcp import segment
from ustack.tcp.segment import Segment


class Network:
    def __init__(self, addr: bytes, counters: Counters, *, offload: bool,
                 ip_id: int, addrs6: Sequence[str] = (), mtu: int = 1500,
                 ip6_id: int = 0, verify: bool = True) -> None:
        self.addr = addr
        # IPv6: none, or the global address and the link-local one, packed; none on a
        # link below IPv6's minimum MTU (RFC 8200 §5: 1280).
        self.addrs6 = tuple(ipaddress.IPv6Address(a).packed for a in addrs6
                            if mtu >= ip6.MIN_MTU)
        self.counters = counters  # the host's
        self.offload = offload
        # Off: the link authenticates every packet (a tunnel over TLS); no TCP or ICMP
        # checksum is computed on input (IPv4's header checksum still is: 20 bytes).
        self.verify = verify
        self.fragments = ip.Fragments()
        self.fragments6 = ip6.Fragments6()
        self.errors = icmp6.RateLimiter()  # the ICMP errors we send, both families
        self.mtu = mtu
        self.path_mtu = PathMtu(mtu)  # per destination, once a router said less
        # The host's: a TCP segment of ours was too big for the path (its to validate).
        self.on_too_big: Callable[[TooBig, float], None] | None = None
        # RFC 8200 §4.5 / RFC 7739: a 32-bit Identification, from a random start.
        self._ip6_id = ip6_id
        self._flow_secret = ip6_id.to_bytes(4, "big")  # random too: flow labels
        self.out: list[Packet] = []  # packets for the link, taken by `Host.poll`
        self._ip_id = ip_id

    def input(self, packet: Packet, now: float) -> tuple[ip.Datagram, bool] | None:
        """IP's part of one packet: a TCP datagram for this host and whether its checksum
        is still to be verified; None when IP dropped it or another protocol took it."""
        self.counters["packets_in"] += 1
        verify = self.verify
        raw: bytes | memoryview
        if type(packet) is Offloaded:
            # The kernel made this packet: a partial or already verified checksum is not
            # ours to check.
            verify = self.verify and not packet.csum_ok
            raw = packet.ip
        else:
            raw = packet  # type: ignore[assignment]
        if raw and raw[0] >> 4 == 6:
            return self._input6(raw, verify, now)
        dgram = ip.parse(raw, self.addr, self.counters)
        if dgram is None:
            return None
        if dgram.more or dgram.offset:
            head = ip.error_head(raw) if not dgram.offset else b""
            dgram = self.fragments.add(dgram, now, self.counters, head)
            if dgram is None:
                return None
            verify = self.verify
        if dgram.proto == ip.PROTO_TCP:
            return dgram, verify
        if dgram.proto == ip.PROTO_ICMP:
            reply = ip.icmp_receive(dgram, self.counters, verify)
            if type(reply) is bytes:
                self.emit(dgram.src, ip.PROTO_ICMP, reply)
            elif isinstance(reply, TooBig):
                self._too_big(reply, now)
        else:
            self.counters.drop(DropReason.IP_PROTO_UNSUPPORTED)
        return None

    def _input6(self, packet: bytes | memoryview, verify: bool,
                now: float) -> tuple[ip.Datagram, bool] | None:
        """IPv6's part of one packet: a TCP datagram for the host (as `input`), ICMPv6
        echo answered, a Problem answered with an error (at most `icmp6.ERROR_RATE` a
        second), the rest counted."""
        found = ip6.parse(packet, self.addrs6, self.counters, self.fragments6, now)
        if found is None:
            return None
        if isinstance(found, ip6.Problem):
            self._error(found.dst, found.src, icmp6.parameter_problem(found), now)
            return None
        verify = verify or (found.reassembled and self.verify)
        if found.proto == ip6.NH_TCP:
            if found.dst != self.local_for(found.src):
                # A connection is keyed by the peer alone (`Host.local_for`): a peer that
                # crosses scopes (a global source to our link-local address) is refused.
                self.counters.drop(DropReason.IP6_SCOPE_MISMATCH)
                return None
            return ip.Datagram(found.src, found.dst, ip.PROTO_TCP, found.payload), verify
        reply = icmp6.receive(found, self.counters, verify)
        if type(reply) is bytes:
            self.emit6(found.dst, found.src, ip6.NH_ICMPV6, reply)
        elif isinstance(reply, TooBig):
            self._too_big(reply, now)
        return None

    def _too_big(self, report: TooBig, now: float) -> None:
        """A router could not forward a packet of ours (`ustack.pmtu`): a TCP segment's
        report goes to the host, which checks it against the connection; one for any
        other packet (an echo reply, which keeps no state to check against) changes
        nothing, as one that quotes a packet we did not send."""
        self.counters["icmp_too_big_in"] += 1
        ours = report.src == self.addr or report.src in self.addrs6
        if (report.proto != ip.PROTO_TCP or self.on_too_big is None or not ours
                or report.src != self.local_for(report.dst)):
            self.counters.drop(DropReason.ICMP_IGNORED)
            return
        self.on_too_big(report, now)

    def local_for(self, remote: bytes) -> bytes:
        """Our address in a connection with `remote`: the IPv4 one, or over IPv6 the
        link-local one for a link-local peer (fe80::/10, RFC 4291 §2.5.6) and the global
        one (the first of `addrs6`) for the rest: what the kernel's source selection
        (RFC 6724) picks on its side; TCP that crosses them is refused on input."""
        if len(remote) == 4:
            return self.addr
        if is_link_local(remote) and len(self.addrs6) > 1:
            return self.addrs6[1]
        if not self.addrs6:  # only an active open can ask: input takes no IPv6 here
            raise OSError(errno.ENETUNREACH, "this stack has no IPv6 address")
        return self.addrs6[0]

    def expire(self, now: float) -> None:
        """Reassemblies that timed out, both families: each whose first fragment came is
        answered with a Time Exceeded (RFC 1122 §3.3.2, RFC 8200 §4.5), rate-limited."""
        for head in self.fragments.expire(now, self.counters):
            self._error(self.addr, head[12:16], ip.time_exceeded(head), now)
        for src, dst, head in self.fragments6.expire(now, self.counters):
            self._error(dst, src, icmp6.time_exceeded(head, dst, src), now)

    def _error(self, src: bytes, dst: bytes, message: bytes, now: float) -> None:
        """An ICMP or ICMPv6 error (by the family of `dst`) from our `src`, at most
        `icmp6.ERROR_RATE` a second for both (RFC 4443 §2.4 (f); RFC 1812 §4.3.2.8)."""
        family = "icmp" if len(dst) == 4 else "icmp6"
        if not self.errors.allow(now):
            self.counters[f"{family}_errors_rate_limited"] += 1
            return
        self.counters[f"{family}_errors_out"] += 1
        if len(dst) == 4:
            self.emit(dst, ip.PROTO_ICMP, message)
        else:
            self.emit6(src, dst, ip6.NH_ICMPV6, message)

    def next_deadline(self) -> float | None:
        """The earliest reassembly timeout, or None (the common case)."""
        v4, v6 = self.fragments.next_deadline(), self.fragments6.next_deadline()
        if v4 is None or v6 is None:
            return v4 if v6 is None else v6
        return min(v4, v6)

    def emit6(self, src: bytes, dst: bytes, next_header: int, payload: bytes | memoryview,
              *more: bytes | memoryview, gso: int | None = None, flow: int = 0) -> None:
        """One IPv6 packet from our `src` (the address the peer used) to `dst` with flow
        label `flow`: with `gso` (not None) as `Offloaded` (a TCP segment the device
        cuts); one bigger than the link's MTU otherwise in fragments (RFC 8200 §4.5:
        the source fragments)."""
        length = len(payload) + sum(len(p) for p in more)
        if gso is not None or ip6.HEADER_LEN + length <= self.mtu:
            packet = b"".join((ip6.header(src, dst, next_header, length, flow), payload,
                               *more))
            self.out.append(packet if gso is None else Offloaded(packet, gso=gso))
            return
        payload = b"".join((payload, *more))
        self._ip6_id = (self._ip6_id + 1) & 0xFFFFFFFF
        for fragment in ip6.fragments(src, dst, next_header, payload, self.mtu,
                                      self._ip6_id):
            self.out.append(fragment)

    def emit_segment(self, src: bytes, dst: bytes, seg: Segment) -> None:
        """A TCP segment in an IP packet from our `src` to `dst` (either family). With
        offloads its checksum is left partial and the packet goes as `Offloaded`: the
        device completes the checksum and cuts a TSO segment (`seg.gso`)."""
        self.counters["tcp_segments_out"] += 1
        header, payload = segment.encode(seg, src, dst, partial=self.offload)
        gso = seg.gso if self.offload else None
        if len(dst) == 4:
            self.emit(dst, ip.PROTO_TCP, header, payload, gso=gso)
        else:
            # RFC 6437 §3: one flow label per connection, from a hash of its 4-tuple with
            # a secret (this process's str/bytes hash seed), uniform over 20 bits.
            flow = hash((self._flow_secret, dst, seg.src_port, seg.dst_port)) & 0xFFFFF
            self.emit6(src, dst, ip6.NH_TCP, header, payload, gso=gso, flow=flow)

    def emit(self, dst: bytes, proto: int, *parts: bytes | memoryview,
             gso: int | None = None) -> None:
        """One IP packet of `parts`; with `gso` (not None), as `Offloaded`."""
        length = sum(len(p) for p in parts)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        packet = b"".join((ip.header(self.addr, dst, proto, length, self._ip_id), *parts))
        self.out.append(packet if gso is None else Offloaded(packet, gso=gso))
