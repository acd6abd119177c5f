"""IPv6 (RFC 8200) input validation, the extension header chain, fragment reassembly,
and the header of what we send.

A host's view (RFC 8200 §4, RFC 8504): the hop limit is not checked on input; packets
to multicast addresses are dropped (on a TUN they are the kernel's Router Solicitations
and MLD reports) and never draw an ICMPv6 error (RFC 4443 §2.4 (e)). Extension headers
are walked in order; what a host must refuse comes back as a `Problem`, the ICMPv6
Parameter Problem to send (`ustack.icmp6`). Everything else that is not for us or not
well formed is dropped with a named reason; nothing here raises on bad input.
"""

import struct
from dataclasses import dataclass

from ustack.stats import Counters, DropReason

HEADER_LEN = 40
HOP_LIMIT = 64  # what we send with (RFC 8200 §3 leaves it to the host; Linux's default)
MIN_MTU = 1280  # RFC 8200 §5: every link carries this much
# An ICMPv6 error carries as much of the invoking packet as fits in the minimum MTU
# (RFC 4443 §2.4 (c)): past its own IPv6 header and 8 bytes of ICMPv6 header.
QUOTE_MAX = MIN_MTU - HEADER_LEN - 8

NH_HOP_BY_HOP = 0
NH_TCP = 6
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ICMPV6 = 58
NH_NONE = 59
NH_DEST_OPTIONS = 60
UPPER_LAYERS = frozenset({NH_TCP, NH_ICMPV6})  # what this host takes above IPv6

# ICMPv6 Parameter Problem codes (RFC 4443 §3.4, RFC 7112 §5).
ERRONEOUS_FIELD = 0
UNRECOGNIZED_NEXT_HEADER = 1
UNRECOGNIZED_OPTION = 2
INCOMPLETE_CHAIN = 3

MAX_EXTENSION_HEADERS = 16  # a longer chain is an attack, not a packet (bounded work)
FRAGMENT_TIMEOUT = 60.0  # RFC 8200 §4.5: reassembly is abandoned 60 s after the first
MAX_PARTIAL_DATAGRAMS = 64
MAX_PIECES = 64  # fragments per datagram: bounds the overlap checks (FreeBSD keeps 16)
MAX_FRAGMENT_BYTES = 1 << 20
MAX_REFUSED = 256  # datagrams remembered as refused (RFC 5722) until their timeout

_HEADER = struct.Struct("!IHBB16s16s")
_LOOPBACK = bytes(15) + b"\x01"
_V4_MAPPED = bytes(10) + b"\xff\xff"
_V4_COMPATIBLE = bytes(12)  # ::/96, deprecated (RFC 4291 §2.5.5.1); `::` and `::1` too
_FRAGMENT = struct.Struct("!BBHI")


@dataclass(slots=True)
class Datagram6:
    """An upper-layer packet for us: its addresses, protocol (TCP or ICMPv6), payload."""

    src: bytes
    dst: bytes
    proto: int
    payload: memoryview | bytes
    hop_limit: int = HOP_LIMIT
    reassembled: bool = False  # from fragments: no device vouched for its checksum


@dataclass(slots=True)
class Problem:
    """A packet refused with an ICMPv6 Parameter Problem (RFC 4443 §3.4): its code, the
    offset in `packet` of the field at fault, and the packet (whose source gets it)."""

    code: int
    pointer: int
    packet: bytes
    src: bytes
    dst: bytes


def is_multicast(addr: bytes) -> bool:
    """ff00::/8 (RFC 4291 §2.7)."""
    return addr[0] == 0xFF


def _bad_source(src: bytes) -> bool:
    """A source no reply may go to (RFC 4291 §2.5.2-2.5.5, RFC 4443 §2.4 (e.6)): the
    unspecified address, multicast, loopback (never on a link), an IPv4-mapped one, an
    IPv4-compatible one (deprecated, RFC 4291 §2.5.5.1)."""
    return (is_multicast(src) or src[:12] in (_V4_COMPATIBLE, _V4_MAPPED)
            or src == _LOOPBACK)


def header(src: bytes, dst: bytes, next_header: int, payload_len: int,
           flow_label: int = 0) -> bytes:
    """A 40-byte IPv6 header (traffic class 0) with our hop limit."""
    return _HEADER.pack(0x6000_0000 | flow_label & 0xFFFFF, payload_len, next_header,
                        HOP_LIMIT, src, dst)


def fragments(src: bytes, dst: bytes, next_header: int, payload: bytes, mtu: int,
              ident: int) -> list[bytes]:
    """`payload` (the upper-layer header and data) as fragments for a link of `mtu`, at
    least 1280 (RFC 8200 §5), for a payload too big for one packet (§4.5): each but the
    last a multiple of 8 bytes; never an atomic fragment (RFC 8021)."""
    size = (mtu - HEADER_LEN - _FRAGMENT.size) // 8 * 8
    out = []
    for start in range(0, len(payload), size):
        piece = payload[start:start + size]
        more = start + size < len(payload)
        out.append(header(src, dst, NH_FRAGMENT, _FRAGMENT.size + len(piece))
                   + _FRAGMENT.pack(next_header, 0, start | more, ident) + piece)
    return out


def parse(packet: bytes | memoryview, ours: tuple[bytes, ...], counters: Counters,
          fragments: "Fragments6", now: float) -> Datagram6 | Problem | None:
    """Validate an IPv6 packet for one of `ours`, walk its extension headers (reassembling
    fragments in `fragments`); the upper-layer datagram, a Problem to answer, or None
    (counted) when dropped or held for reassembly."""
    view = memoryview(packet)
    if len(view) < HEADER_LEN:
        counters.drop(DropReason.IP6_TRUNCATED)
        return None
    first, payload_len, next_header, hop_limit, src, dst = _HEADER.unpack_from(view)
    if first >> 28 != 6:
        counters.drop(DropReason.IP6_BAD_VERSION)
        return None
    if payload_len == 0 or HEADER_LEN + payload_len > len(view):
        # 0 would be a jumbogram (RFC 2675), which no TUN link carries.
        counters.drop(DropReason.IP6_BAD_LENGTH)
        return None
    if is_multicast(dst):
        counters.drop(DropReason.IP6_MULTICAST)
        return None
    if dst not in ours:
        counters.drop(DropReason.IP6_NOT_OURS)
        return None
    if _bad_source(src):
        counters.drop(DropReason.IP6_BAD_SOURCE)
        return None
    counters["ip6_in"] += 1
    # Bytes past the payload length are link padding.
    view = view[:HEADER_LEN + payload_len]
    return _walk(view, next_header, 6, HEADER_LEN, src, dst, hop_limit, counters,
                 fragments, now)


def _walk(view: memoryview, next_header: int, nh_at: int, offset: int, src: bytes,
          dst: bytes, hop_limit: int, counters: Counters, fragments: "Fragments6 | None",
          now: float) -> Datagram6 | Problem | None:
    """RFC 8200 §4.1: the headers in order from `offset`, whose type `next_header` was
    named at `nh_at` (the field an unknown type's Problem points at). `fragments` None:
    a reassembled packet, which may not be a fragment again."""
    for _ in range(MAX_EXTENSION_HEADERS):
        if next_header in UPPER_LAYERS:
            return Datagram6(src, dst, next_header, view[offset:], hop_limit)
        if next_header == NH_NONE:
            counters.drop(DropReason.IP6_NO_NEXT_HEADER)
            return None
        if next_header == NH_FRAGMENT:
            if fragments is None:
                counters.drop(DropReason.IP6_BAD_CHAIN)
                return None
            return _fragment(view, offset, src, dst, hop_limit, counters, fragments, now)
        if next_header not in (NH_HOP_BY_HOP, NH_DEST_OPTIONS, NH_ROUTING) or (
                next_header == NH_HOP_BY_HOP and (offset != HEADER_LEN or fragments is None)):
            # §4.1: Hop-by-Hop only right after the IPv6 header (never in a reassembled
            # part); ESP, AH, Mobility and the rest are not ours to take.
            return _problem(view, UNRECOGNIZED_NEXT_HEADER, nh_at, src, dst, counters)
        if len(view) < offset + 2 or len(view) < offset + 8 * (view[offset + 1] + 1):
            counters.drop(DropReason.IP6_TRUNCATED)
            return None
        end = offset + 8 * (view[offset + 1] + 1)
        if next_header == NH_ROUTING:
            # §4.4: with segments left we would be a hop on its route. We implement no
            # routing type (type 0 is deprecated, RFC 5095), so each is unrecognized:
            # refused pointing at the type. With none left, the header is ignored.
            if view[offset + 3]:
                return _problem(view, ERRONEOUS_FIELD, offset + 2, src, dst, counters)
        else:
            verdict = _options(view, offset + 2, end, src, dst, counters)
            if verdict is not True:
                return verdict or None  # a Problem, or dropped
        next_header, nh_at, offset = view[offset], offset, end
    counters.drop(DropReason.IP6_CHAIN_TOO_LONG)
    return None


def _options(view: memoryview, i: int, end: int, src: bytes, dst: bytes,
             counters: Counters) -> Problem | bool:
    """Hop-by-Hop or Destination options (§4.2): Pad1 and PadN are all we know; an
    unknown option's two high bits say skip it, or drop the packet, with or without a
    Problem (the "unless multicast" case cannot arise: multicast never gets here).
    True: go on; False: dropped (counted); or the Problem."""
    while i < end:
        kind = view[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 2 > end or i + 2 + view[i + 1] > end:
            return _problem(view, ERRONEOUS_FIELD, i, src, dst, counters) or False
        action = kind >> 6
        if kind != 1 and action == 1:
            counters.drop(DropReason.IP6_UNKNOWN_OPTION)
            return False
        if kind != 1 and action >= 2:
            return _problem(view, UNRECOGNIZED_OPTION, i, src, dst, counters) or False
        i += 2 + view[i + 1]
    return True


def _fragment(view: memoryview, offset: int, src: bytes, dst: bytes, hop_limit: int,
              counters: Counters, fragments: "Fragments6",
              now: float) -> Datagram6 | Problem | None:
    """A Fragment header (§4.5) at `offset`: an atomic fragment is the packet itself
    (RFC 6946); other fragments are reassembled, then their chain walked on."""
    if len(view) < offset + _FRAGMENT.size:
        counters.drop(DropReason.IP6_TRUNCATED)
        return None
    next_header, _, off_m, ident = _FRAGMENT.unpack_from(view, offset)
    start, more = off_m & 0xFFF8, bool(off_m & 1)
    data = view[offset + _FRAGMENT.size:]
    if not data and more:
        # Nothing to place (Linux discards these too); it would only take a slot.
        counters.drop(DropReason.IP6_FRAGMENT_EMPTY)
        return None
    if start == 0 and not more:
        counters["ip6_atomic_fragments"] += 1
        return _walk(view, next_header, offset, offset + _FRAGMENT.size, src, dst, hop_limit,
                     counters, fragments, now)
    if more and len(data) % 8:
        # §4.5: a fragment other than the last must be a multiple of 8 bytes long.
        return _problem(view, ERRONEOUS_FIELD, 4, src, dst, counters)
    if start + len(data) > 0xFFFF:
        return _problem(view, ERRONEOUS_FIELD, offset + 2, src, dst, counters)
    if start == 0 and not _chain_complete(data, next_header):
        # RFC 7112 §5: the first fragment must hold the whole header chain.
        return _problem(view, INCOMPLETE_CHAIN, 0, src, dst, counters)
    counters["ip6_fragments_in"] += 1  # Linux's Ip6ReasmReqds
    head = bytes(view[:QUOTE_MAX]) if start == 0 and _error_allowed(view) else b""
    whole = fragments.add((src, dst, ident), start, more, next_header, data, now, counters,
                          head)
    if whole is None:
        return None
    first_next, payload = whole
    counters["ip6_reassembled"] += 1
    # The unfragmentable part was walked on each fragment; the rest of the chain is in
    # the reassembled data, walked as one packet (where a second Fragment header, which
    # §4.5 does not allow, is refused).
    rebuilt = memoryview(header(src, dst, first_next, len(payload)) + payload)
    found = _walk(rebuilt, first_next, 6, HEADER_LEN, src, dst, hop_limit, counters, None, now)
    if isinstance(found, Datagram6):
        found.reassembled = True
    return found


def _chain_complete(data: memoryview, next_header: int) -> bool:
    """Whether the first fragment's data holds every extension header and the upper-layer
    header (RFC 7112 §4): TCP's 20 bytes, ICMPv6's 4."""
    offset = 0
    for _ in range(MAX_EXTENSION_HEADERS):
        if next_header == NH_TCP:
            return len(data) >= offset + 20
        if next_header == NH_ICMPV6:
            return len(data) >= offset + 4
        if next_header not in (NH_DEST_OPTIONS, NH_ROUTING) or len(data) < offset + 2:
            return next_header not in (NH_DEST_OPTIONS, NH_ROUTING)  # judged later
        next_header, offset = data[offset], offset + 8 * (data[offset + 1] + 1)
    return False


def _problem(view: memoryview, code: int, pointer: int, src: bytes, dst: bytes,
             counters: Counters) -> Problem | None:
    """The Parameter Problem for a refused packet (counted), or None where RFC 4443
    §2.4 (e.1) forbids one: the packet carries an ICMPv6 error, or may (Linux
    is_ineligible)."""
    counters.drop(DropReason.IP6_PARAMETER_PROBLEM)
    if not _error_allowed(view):
        return None
    return Problem(code, pointer, bytes(view), src, dst)


def _error_allowed(view: memoryview) -> bool:
    """Whether a packet may draw an ICMPv6 error: not if, past its extension headers,
    it is an ICMPv6 error message or too short to tell (Linux is_ineligible). A later
    fragment (`skip_extensions` stops at its Fragment header) has no upper layer to
    look at: allowed."""
    next_header, offset = skip_extensions(view, view[6], HEADER_LEN)
    if offset < 0:
        return False
    if next_header != NH_ICMPV6:
        return True
    return len(view) > offset and view[offset] >= 128  # informational, not an error


def skip_extensions(data: bytes | memoryview, next_header: int, offset: int,
                    through_fragments: bool = True) -> tuple[int, int]:
    """Past the extension headers that start at `offset` with type `next_header`
    (Linux ipv6_skip_exthdr), without validating them: the type of the first header
    that is none, and its offset. A first fragment's Fragment header is passed, a later
    one's stops the walk (no upper-layer header follows it), and with
    `through_fragments` False any stops it; a chain `data` cuts short gives offset -1.
    At most MAX_EXTENSION_HEADERS are passed."""
    for _ in range(MAX_EXTENSION_HEADERS):
        if next_header == NH_FRAGMENT and through_fragments:
            if len(data) < offset + _FRAGMENT.size:
                return next_header, -1
            if int.from_bytes(data[offset + 2:offset + 4], "big") & 0xFFF8:
                return next_header, offset
            next_header, offset = data[offset], offset + _FRAGMENT.size
        elif next_header in (NH_HOP_BY_HOP, NH_DEST_OPTIONS, NH_ROUTING):
            if len(data) < offset + 2:
                return next_header, -1
            next_header, offset = data[offset], offset + 8 * (data[offset + 1] + 1)
        else:
            break
    return next_header, offset


class _Partial:
    __slots__ = ("deadline", "first_next", "head", "held", "pieces", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: dict[int, bytes] = {}
        self.total: int | None = None  # known once the last fragment (M=0) arrives
        self.first_next: int | None = None  # the first fragment's Next Header
        self.held = 0
        self.head = b""  # the first fragment as an ICMPv6 error would quote it


class Fragments6:
    """IPv6 reassembly (RFC 8200 §4.5) with bounded memory and work: partial datagrams,
    bytes held, fragments per datagram, a 60 s timeout. A fragment that overlaps another
    drops the whole datagram, and its later fragments are dropped until the timeout
    (RFC 5722 §4: remembered apart, so refused datagrams take no slot); an exact
    duplicate is ignored."""

    def __init__(self) -> None:
        self._partial: dict[tuple[bytes, bytes, int], _Partial] = {}
        self._refused: dict[tuple[bytes, bytes, int], float] = {}  # key: until when
        self.held = 0

    def add(self, key: tuple[bytes, bytes, int], start: int, more: bool, next_header: int,
            data: memoryview, now: float, counters: Counters,
            head: bytes = b"") -> tuple[int, bytes] | None:
        """Take one fragment (with `head`, the first fragment as a Time Exceeded would
        quote it); (the first fragment's Next Header, the whole data) once this one
        completes the datagram."""
        if key in self._refused:
            counters.drop(DropReason.IP6_FRAGMENT_OVERLAP)
            return None
        partial = self._partial.get(key)
        if partial is None:
            if (len(self._partial) >= MAX_PARTIAL_DATAGRAMS
                    or self.held + len(data) > MAX_FRAGMENT_BYTES):
                counters.drop(DropReason.IP6_FRAGMENT_LIMIT)
                return None
            partial = self._partial[key] = _Partial(now + FRAGMENT_TIMEOUT)
        end = start + len(data)
        if (not more and partial.total not in (None, end)) or (
                partial.total is not None and end > partial.total) or (
                not more and any(s + len(p) > end for s, p in partial.pieces.items())):
            self._refuse(key, counters)
            return None
        for piece_start, piece in partial.pieces.items():
            if piece_start < end and start < piece_start + len(piece):
                if piece_start == start and piece == bytes(data):
                    return None  # an exact duplicate
                self._refuse(key, counters)
                return None
        if (self.held + len(data) > MAX_FRAGMENT_BYTES
                or len(partial.pieces) >= MAX_PIECES):
            self._discard(key, counters, DropReason.IP6_FRAGMENT_LIMIT)
            return None
        if not more:
            partial.total = end
        if start == 0:
            partial.first_next = next_header
            partial.head = head
        partial.pieces[start] = bytes(data)
        partial.held += len(data)
        self.held += len(data)
        if (partial.total is None or partial.held != partial.total
                or partial.first_next is None):
            return None
        del self._partial[key]
        self.held -= partial.held
        return partial.first_next, b"".join(partial.pieces[k] for k in sorted(partial.pieces))

    def _refuse(self, key: tuple[bytes, bytes, int], counters: Counters) -> None:
        partial = self._partial.pop(key)
        self.held -= partial.held
        if len(self._refused) >= MAX_REFUSED:
            del self._refused[next(iter(self._refused))]  # the oldest goes
        self._refused[key] = partial.deadline
        counters.drop(DropReason.IP6_FRAGMENT_OVERLAP)

    def expire(self, now: float, counters: Counters) -> list[tuple[bytes, bytes, bytes]]:
        """Datagrams not completed within the timeout are dropped (counted); refused
        ones are forgotten. Returns (source, destination, quote) for each whose first
        fragment came: it is owed a Time Exceeded (§4.5: "should be sent")."""
        if self._refused:
            for key in [k for k, until in self._refused.items() if until <= now]:
                del self._refused[key]
        if not self._partial:
            return []
        owed = []
        for key in [k for k, p in self._partial.items() if p.deadline <= now]:
            head = self._partial[key].head
            self._discard(key, counters, DropReason.IP6_FRAGMENT_TIMEOUT)
            if head:
                owed.append((key[0], key[1], head))
        return owed

    def next_deadline(self) -> float | None:
        """The earliest timeout of a partial or refused datagram, or None."""
        if not self._partial and not self._refused:
            return None
        return min([p.deadline for p in self._partial.values()]
                   + list(self._refused.values()))

    def _discard(self, key: tuple[bytes, bytes, int], counters: Counters,
                 reason: DropReason) -> None:
        partial = self._partial.pop(key, None)
        if partial is not None:
            self.held -= partial.held
        counters.drop(reason)
