"""ICMPv6 (RFC 4443) for a host on a TUN: echo replies, the errors IPv6 input calls
for (Parameter Problem; Time Exceeded when a reassembly times out), rate-limited;
checksums over the IPv6 pseudo-header.

Neighbour Discovery and MLD (RFC 4861, RFC 3810) are not needed on a TUN, a layer-3
link with no link-layer addresses to resolve: their messages (which the kernel sends to
multicast addresses, dropped before they get here) and any that reach us are counted
and ignored. Error messages received are counted; a Packet Too Big is read into a
`ustack.pmtu.TooBig` for the host to act on (path MTU discovery, RFC 8201); the others
change nothing (for TCP a hard error would be a Destination Unreachable, which RFC 5461
counsels treating as soft: the retransmission timer decides).
"""

import struct

from ustack.checksum import finish, pseudo_words, words
from ustack.ip6 import NH_ICMPV6, QUOTE_MAX, Datagram6, Problem
from ustack.pmtu import TooBig, quote
from ustack.stats import Counters, DropReason

DESTINATION_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129

MAX_INVOKING = QUOTE_MAX  # what an error carries of the invoking packet (§2.4 (c))
ERROR_RATE = 10.0  # errors per second on average (§2.4 (f): rate-limited; Linux: 1/s/peer)
ERROR_BURST = 10.0

_ERROR_HEAD = struct.Struct("!BBHI")


def checksum(src: bytes, dst: bytes, message: bytes | memoryview) -> int:
    """The ICMPv6 checksum field for `message` (its own field zero) from src to dst."""
    return finish(pseudo_words(src + dst, NH_ICMPV6, len(message)) + words(message))


def receive(dgram: Datagram6, counters: Counters,
            verify: bool = True) -> bytes | TooBig | None:
    """One ICMPv6 message: the message answering an echo request, a Packet Too Big's
    report (`TooBig`), or None (counted) for anything else; `verify=False` when the
    device vouches for the checksum."""
    data = dgram.payload
    if len(data) < 4:
        counters.drop(DropReason.ICMP_MALFORMED)
        return None
    if verify and finish(pseudo_words(dgram.src + dgram.dst, NH_ICMPV6, len(data))
                         + words(data)) != 0:
        counters.drop(DropReason.ICMP_BAD_CHECKSUM)
        return None
    kind, code = data[0], data[1]
    if kind < 128:
        counters["icmp6_errors_in"] += 1
        if kind != PACKET_TOO_BIG:
            return None
        # §3.2: the MTU, then as much of our packet as fitted.
        found = quote(data[8:], int.from_bytes(data[4:8], "big"), 6) if (
            code == 0 and len(data) >= 8) else None
        if found is None:
            counters.drop(DropReason.ICMP_MALFORMED)
        return found
    if kind != ECHO_REQUEST or code != 0 or len(data) < 8:
        counters.drop(DropReason.ICMP_IGNORED)
        return None
    # §4.2: the reply carries the request's identifier, sequence number and data.
    body = bytes(data[4:])
    reply = bytes((ECHO_REPLY, 0)) + b"\0\0" + body
    value = checksum(dgram.dst, dgram.src, reply)
    counters["icmp6_echo_replies"] += 1
    return reply[:2] + value.to_bytes(2, "big") + body


def error(kind: int, code: int, field: int, invoking: bytes, src: bytes, dst: bytes) -> bytes:
    """An error message (§2.1) from `src` to `dst`: its type, code and 32-bit field, then
    as much of the invoking packet as fits in the minimum MTU (§2.4 (c))."""
    message = _ERROR_HEAD.pack(kind, code, 0, field) + invoking[:MAX_INVOKING]
    value = checksum(src, dst, message)
    return message[:2] + value.to_bytes(2, "big") + message[4:]


def parameter_problem(problem: Problem) -> bytes:
    """The Parameter Problem message (§3.4) for a refused packet, from the address it was
    sent to, back to its source."""
    return error(PARAMETER_PROBLEM, problem.code, problem.pointer, problem.packet,
                 problem.dst, problem.src)


def time_exceeded(invoking: bytes, src: bytes, dst: bytes) -> bytes:
    """Time Exceeded, code 1 (§3.3: fragment reassembly time exceeded), from `src`."""
    return error(TIME_EXCEEDED, 1, 0, invoking, src, dst)


class RateLimiter:
    """A token bucket for the errors we send (RFC 4443 §2.4 (f)): `rate` a second on
    average, `burst` at once. It reads no clock: each call brings `now`."""

    def __init__(self, rate: float = ERROR_RATE, burst: float = ERROR_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
