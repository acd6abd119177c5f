"""IPv4 (RFC 791) validation and building, ICMP echo (RFC 792), and the ICMP error
that path MTU discovery reads (RFC 1191).

Every packet that is not for us, or not well formed, is dropped with a named
reason; nothing here raises on bad input.
"""

import struct
from dataclasses import dataclass

import dpkt

from ustack.checksum import finish, ones_sum, words
from ustack.pmtu import TooBig, quote
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
ICMP_UNREACHABLE, ICMP_FRAG_NEEDED = 3, 4  # type, and its code "fragmentation needed"
ICMP_TIME_EXCEEDED, ICMP_REASSEMBLY_TIME = 11, 1
# The error messages (RFC 792, RFC 1122 §3.2.2): unreachable, source quench, redirect,
# time exceeded, parameter problem. Counted; only Fragmentation Needed changes anything.
ICMP_ERRORS = frozenset({ICMP_UNREACHABLE, 4, 5, ICMP_TIME_EXCEEDED, 12})


_OPT_EOL = 0
_OPT_NOP = 1
_OPT_LSRR = 131
_OPT_SSRR = 137

FRAGMENT_TIMEOUT = 30.0  # RFC 1122 §3.3.2: a reassembly timeout of 60 s or less
MAX_PARTIAL_DATAGRAMS = 64
MAX_FRAGMENT_BYTES = 1 << 20


@dataclass(slots=True)
class Datagram:
    src: bytes
    dst: bytes
    proto: int
    payload: memoryview | bytes
    ident: int = 0
    offset: int = 0  # fragment offset in bytes
    more: bool = False  # MF: more fragments follow


def _bad_source(src: bytes) -> bool:
    # RFC 1122 §3.2.1.3: never answer a source that is broadcast, multicast or 0.0.0.0/8.
    return src[0] == 0 or src[0] >= 224 or src[0] == 127


def _source_routed(options: memoryview) -> bool:
    """Whether the IP options carry a source route (RFC 1122 §3.3.5: we drop those)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == _OPT_EOL:
            return False
        if kind == _OPT_NOP:
            i += 1
            continue
        if kind in (_OPT_LSRR, _OPT_SSRR):
            return True
        if i + 1 >= len(options) or options[i + 1] < 2:
            return False  # malformed options: skipped by IHL, as a host may (§3.2.1.8)
        i += options[i + 1]
    return False


_HEADER = struct.Struct("!BBHHHBBH4s4s")


# An IPv4 header's fields: IHL in bytes, total length, identification, flags and
# fragment offset, protocol, source, destination.
Header = tuple[int, int, int, int, int, bytes, bytes]


def read_header(view: memoryview | bytes) -> Header | DropReason:
    """The fixed header of what claims to be an IPv4 packet, or why it is none: the step
    `parse` and the capture reader (`ustack.ladder.capture`) share."""
    size = len(view)
    if not size or view[0] >> 4 != 4:
        # The kernel's IPv6 router solicitations and MLD reports end up here.
        return DropReason.NOT_IPV4
    if size < HEADER_LEN:
        return DropReason.IP_TRUNCATED
    vihl, _, total_len, ident, frag, _, proto, _, src, dst = _HEADER.unpack_from(view)
    ihl = (vihl & 0x0F) * 4
    if ihl < HEADER_LEN or ihl > size:
        return DropReason.IP_BAD_IHL
    return ihl, total_len, ident, frag, proto, src, dst


def parse(packet: bytes | memoryview, our_addr: bytes, counters: Counters) -> Datagram | None:
    """Validate an IPv4 packet addressed to `our_addr`; None (counted) when dropped."""
    view = memoryview(packet)
    found = read_header(view)
    if isinstance(found, DropReason):
        counters.drop(found)
        return None
    ihl, total_len, ident, frag, proto, src, dst = found
    if total_len < ihl or total_len > len(view):
        counters.drop(DropReason.IP_BAD_LENGTH)
        return None
    if ones_sum(view[:ihl]):  # RFC 1071: the header with its checksum sums to all ones
        counters.drop(DropReason.IP_BAD_CHECKSUM)
        return None
    if dst != our_addr:
        counters.drop(DropReason.IP_NOT_OURS)
        return None
    if _bad_source(src):
        counters.drop(DropReason.IP_BAD_SOURCE)
        return None
    if ihl > HEADER_LEN and _source_routed(view[HEADER_LEN:ihl]):
        counters.drop(DropReason.IP_SOURCE_ROUTED)
        return None
    counters["ip_in"] += 1
    # Bytes past total_len are link padding, not payload.
    return Datagram(src, dst, proto, view[ihl:total_len], ident,
                    (frag & _OFFSET_MASK) * 8, bool(frag & _MF))


class _Partial:
    __slots__ = ("deadline", "head", "held", "pieces", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: dict[int, bytes] = {}
        self.total: int | None = None  # known once the last fragment (MF=0) arrives
        self.held = 0
        self.head = b""  # fragment zero's header and first 8 bytes, once it came


class Fragments:
    """IPv4 reassembly (RFC 791 §3.2, RFC 1122 §3.3.2) with bounded memory.

    Bounded by partial datagrams, by bytes held and by a 30 s timeout. A fragment that
    overlaps another without repeating it exactly drops the whole datagram: no
    first-or-last-wins guessing that an attacker could steer (the spirit of RFC 5722).
    """

    def __init__(self) -> None:
        self._partial: dict[tuple[bytes, bytes, int, int], _Partial] = {}
        self.held = 0

    def add(self, d: Datagram, now: float, counters: Counters,
            head: bytes = b"") -> Datagram | None:
        """Take one fragment (with `head`, fragment zero's IP header and first 8 bytes
        of data, for a Time Exceeded); the whole datagram when this one completes it."""
        key = (d.src, d.dst, d.proto, d.ident)
        partial = self._partial.get(key)
        if partial is None:
            if (len(self._partial) >= MAX_PARTIAL_DATAGRAMS
                    or self.held + len(d.payload) > MAX_FRAGMENT_BYTES):
                counters.drop(DropReason.IP_FRAGMENT_LIMIT)
                return None
            partial = self._partial[key] = _Partial(now + FRAGMENT_TIMEOUT)
        end = d.offset + len(d.payload)
        if end > 0xFFFF - HEADER_LEN or (d.more and len(d.payload) % 8):
            self._discard(key, counters, DropReason.IP_FRAGMENT_TOO_BIG)
            return None
        if not d.more:
            beyond = max((s + len(p) for s, p in partial.pieces.items()), default=0) > end
            if beyond or (partial.total is not None and partial.total != end):
                self._discard(key, counters, DropReason.IP_FRAGMENT_OVERLAP)
                return None
            partial.total = end
        elif partial.total is not None and end > partial.total:
            self._discard(key, counters, DropReason.IP_FRAGMENT_OVERLAP)
            return None
        for start, piece in partial.pieces.items():
            if start < end and d.offset < start + len(piece):
                if start == d.offset and piece == bytes(d.payload):
                    return None  # an exact duplicate
                self._discard(key, counters, DropReason.IP_FRAGMENT_OVERLAP)
                return None
        if self.held + len(d.payload) > MAX_FRAGMENT_BYTES:
            self._discard(key, counters, DropReason.IP_FRAGMENT_LIMIT)
            return None
        partial.pieces[d.offset] = bytes(d.payload)
        if head:
            partial.head = head
        partial.held += len(d.payload)
        self.held += len(d.payload)
        if partial.total is None or partial.held != partial.total:
            return None
        del self._partial[key]
        self.held -= partial.held
        payload = b"".join(partial.pieces[k] for k in sorted(partial.pieces))
        counters["ip_reassembled"] += 1
        return Datagram(d.src, d.dst, d.proto, memoryview(payload), d.ident)

    def expire(self, now: float, counters: Counters) -> list[bytes]:
        """Datagrams not completed within the timeout are dropped (counted). Returns the
        head of each whose fragment zero came: it is owed a Time Exceeded (RFC 1122
        §3.3.2, a MUST)."""
        if not self._partial:
            return []
        heads = []
        for key in [k for k, p in self._partial.items() if p.deadline <= now]:
            head = self._partial[key].head
            self._discard(key, counters, DropReason.IP_FRAGMENT_TIMEOUT)
            if head:
                heads.append(head)
        return heads

    def next_deadline(self) -> float | None:
        if not self._partial:
            return None  # the common case, asked on every step
        return min(p.deadline for p in self._partial.values())

    def _discard(self, key: tuple[bytes, bytes, int, int], counters: Counters,
                 reason: DropReason) -> None:
        partial = self._partial.pop(key, None)
        if partial is not None:
            self.held -= partial.held
        counters.drop(reason)


def header(src: bytes, dst: bytes, proto: int, payload_len: int, ident: int) -> bytes:
    """A 20-byte IPv4 header with DF set and a valid checksum."""
    total = HEADER_LEN + payload_len
    ident &= 0xFFFF
    # The checksum from the header's 16-bit words, without building it twice (RFC 1071).
    words = (0x4500 + total + ident + _DF + (DEFAULT_TTL << 8 | proto)
             + int.from_bytes(src + dst, "big"))
    return _HEADER.pack(0x45, 0, total, ident, _DF, DEFAULT_TTL, proto, finish(words), src,
                        dst)


def icmp_receive(dgram: Datagram, counters: Counters,
                 verify: bool = True) -> bytes | TooBig | None:
    """One ICMP message: the payload answering an echo request, a Fragmentation
    Needed's report (`ustack.pmtu.TooBig`, RFC 1191: our packets carry DF), or None
    (counted) for anything else. `verify=False` when the device vouches for the checksum
    (`ustack.vnet.TRUSTED`)."""
    data = dgram.payload
    if len(data) < 8:
        counters.drop(DropReason.ICMP_MALFORMED)
        return None
    if verify and ones_sum(data):
        counters.drop(DropReason.ICMP_BAD_CHECKSUM)
        return None
    if data[0] in ICMP_ERRORS:
        counters["icmp_errors_in"] += 1
        mtu = int.from_bytes(data[6:8], "big")
        # RFC 1191 §4: the next hop's MTU in the low 16 bits of the unused field; a
        # router from before it says 0, and we do not guess (Linux no longer does).
        if data[0] != ICMP_UNREACHABLE or data[1] != ICMP_FRAG_NEEDED or not mtu:
            return None
        found = quote(data[8:], mtu, 4)
        if found is None:
            counters.drop(DropReason.ICMP_MALFORMED)
        return found
    icmp = dpkt.icmp.ICMP(bytes(data))
    if icmp.type != ICMP_ECHO_REQUEST or icmp.code != 0:
        counters.drop(DropReason.ICMP_IGNORED)
        return None
    # RFC 792: the reply carries the request's identifier, sequence and data unchanged.
    icmp.type = ICMP_ECHO_REPLY
    icmp.sum = 0  # dpkt recomputes a checksum only when the field is 0 (a full one: we
    # never leave an ICMP checksum to the device)
    counters["icmp_echo_replies"] += 1
    return bytes(icmp)


def error_head(packet: bytes | memoryview) -> bytes:
    """What an ICMP error about `packet` quotes (RFC 792: its IP header and the first 64
    bits of its data), or b"" where none may be sent: about an ICMP message other than
    an echo request, lest errors answer errors (RFC 1122 §3.2.2)."""
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] == PROTO_ICMP and (len(packet) <= ihl or packet[ihl] != ICMP_ECHO_REQUEST):
        return b""
    return bytes(packet[:ihl + 8])


def time_exceeded(head: bytes) -> bytes:
    """The ICMP Time Exceeded message, code 1 (fragment reassembly time exceeded,
    RFC 792), quoting `head` (`error_head`)."""
    message = struct.pack("!BBHI", ICMP_TIME_EXCEEDED, ICMP_REASSEMBLY_TIME, 0, 0) + head
    return message[:2] + finish(words(message)).to_bytes(2, "big") + message[4:]
