"""Path MTU discovery (RFC 8201 for IPv6, RFC 1191 for IPv4): what an ICMP error says
about a path, and what the host remembers of each destination's MTU.

A router that cannot forward one of our packets (IPv6 never fragments on the way; our
IPv4 packets carry DF) drops it and answers with a Packet Too Big (ICMPv6 type 2) or a
Fragmentation Needed (ICMP type 3 code 4) quoting its start and the next hop's MTU.
`quote` reads that into a `TooBig`; the TCP layer acts on it only when the quoted
sequence number is one in flight (RFC 5927 §4.1; Linux tcp_v6_err / tcp_v4_err: a
blind attacker would otherwise shrink a connection's segments), and `PathMtu` then
remembers the destination's MTU so that connections opened to it meanwhile start with
segments that fit. An estimate is never raised by a message (RFC 8201 §4: "MUST NOT
increase") but ages out after `EXPIRES` (§4: "SHOULD NOT [try] less than 5 minutes";
Linux's mtu_expires, 10 minutes), after which connections opened to the destination
try the link's MTU again (one already open keeps its smaller segments: unlike Linux's
tcp_current_mss, nothing raises a connection's MSS again).

Below 552 bytes an IPv4 path is not followed: segments keep DF at that size, so a path
narrower still loses them (Linux clears DF there instead; not done here).

Never below IPv6's minimum link MTU (RFC 8201 §4: 1280; no atomic fragments below it,
RFC 8021), nor below Linux's net.ipv4.route.min_pmtu for IPv4 (552; RFC 1191's 68 would
let one forged message cut segments to a few bytes).
"""

import struct
from dataclasses import dataclass

from ustack.ip6 import HEADER_LEN as IP6_HEADER_LEN
from ustack.ip6 import MIN_MTU, skip_extensions

MIN_MTU6 = MIN_MTU  # IPv6's minimum link MTU
MIN_MTU4 = 552
EXPIRES = 600.0  # seconds an estimate holds
MAX_ENTRIES = 4096  # destinations remembered; the oldest is forgotten first

_PORTS_SEQ = struct.Struct("!HHI")


@dataclass(slots=True)
class TooBig:
    """A router's report that a packet of ours did not fit: the quoted packet's
    addresses, protocol, and (from its first 8 transport bytes, which both ICMPs
    guarantee) ports and sequence number; `mtu` is the next hop's, not below the
    family's floor."""

    src: bytes  # ours
    dst: bytes  # the peer's
    proto: int
    src_port: int
    dst_port: int
    seq: int
    mtu: int


def quote(invoking: bytes | memoryview, mtu: int, version: int) -> TooBig | None:
    """The `TooBig` for an error message quoting `invoking` (the IP packet as we sent
    it) with next-hop MTU `mtu`, or None when the quote is too short to name a flow, or
    is no packet of the message's own IP `version` (an ICMPv6 message speaks of IPv6
    packets, an ICMP one of IPv4's)."""
    if len(invoking) < 20 or invoking[0] >> 4 != version:
        return None
    if version == 6:
        if len(invoking) < IP6_HEADER_LEN:
            return None
        src, dst = bytes(invoking[8:24]), bytes(invoking[24:40])
        proto, offset = skip_extensions(invoking, invoking[6], IP6_HEADER_LEN)
        floor = MIN_MTU6
    else:
        offset = (invoking[0] & 0x0F) * 4
        if offset < 20:
            return None  # no IPv4 header is shorter
        src, dst, proto = bytes(invoking[12:16]), bytes(invoking[16:20]), invoking[9]
        floor = MIN_MTU4
    if offset < 0 or len(invoking) < offset + _PORTS_SEQ.size:
        return None
    src_port, dst_port, seq = _PORTS_SEQ.unpack_from(invoking, offset)
    return TooBig(src, dst, proto, src_port, dst_port, seq, max(floor, mtu))


class PathMtu:
    """The path MTU of each destination that reported one below the link's (RFC 8201
    §5.2: per destination address), for `EXPIRES` seconds; the link's MTU for the rest.
    Reads no clock: each call brings `now`."""

    def __init__(self, link_mtu: int) -> None:
        self.link_mtu = link_mtu
        self._known: dict[bytes, tuple[int, float]] = {}  # dst -> (mtu, expires at)

    def __len__(self) -> int:
        return len(self._known)

    def get(self, dst: bytes, now: float) -> int:
        """The MTU to use towards `dst`."""
        found = self._known.get(dst)
        if found is None:
            return self.link_mtu
        if now >= found[1]:
            del self._known[dst]  # aged out: the link's MTU is tried again (§4)
            return self.link_mtu
        return found[0]

    def lower(self, dst: bytes, mtu: int, now: float) -> bool:
        """A validated report of `mtu` towards `dst`: whether it lowered the estimate
        (never raised: RFC 8201 §4)."""
        if mtu >= self.get(dst, now):
            return False
        self._known.pop(dst, None)  # re-inserted last: the dict's order is age
        if len(self._known) >= MAX_ENTRIES:
            del self._known[next(iter(self._known))]
        self._known[dst] = (mtu, now + EXPIRES)
        return True
