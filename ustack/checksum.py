"""The Internet checksum (RFC 1071) at C speed.

Summing 16-bit words in ones' complement is the same as taking the big-endian
integer of the data modulo 0xffff (2**16 ≡ 1 mod 0xffff), and `int.from_bytes`
plus `%` run in C: ~2.5 µs for 1,400 bytes against ~12 µs for dpkt's Python loop.
"""

from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview


def words(data: Buffer) -> int:
    """`data` as one integer congruent to the sum of its 16-bit words (an odd last byte
    padded with a zero byte), not yet reduced: callers add several and reduce once."""
    value = int.from_bytes(data, "big")
    return value << 8 if len(data) & 1 else value


def residue(data: Buffer) -> int:
    """`data`'s 16-bit words summed, congruent to `words(data)` mod 0xffff (not reduced:
    callers add the pseudo-header and reduce once), from the little-endian reading,
    which C converts ~20 % faster for a large segment: in ones' complement the
    little-endian reading is 256 times the big-endian one (RFC 1071 §2 (B): byte-order
    independence; 256 * 256 = 65536 = 1 mod 0xffff), so 256 times it again is the
    big-endian sum. Reduced before it is shifted: no second integer as long as the
    data is made."""
    return (int.from_bytes(data, "little") % 0xFFFF) << 8


def ones_sum(data: Buffer) -> int:
    """Ones' complement sum of `data` (odd length padded with a zero byte), mod 0xffff."""
    return words(data) % 0xFFFF


def pseudo_words(addresses: bytes, proto: int, length: int) -> int:
    """The pseudo-header's words, unreduced (see `words`): source and destination address
    (`addresses`, both, as they stand in the IP header), protocol and the length of the
    segment it covers (RFC 9293 §3.1)."""
    return int.from_bytes(addresses, "big") + proto + length


def finish(total: int) -> int:
    """Checksum field value for a ones' complement sum `total` (any non-negative int)."""
    total %= 0xFFFF
    # A residue of 0 means the sum was all ones (0xffff), whose complement is 0.
    return 0xFFFF - total if total else 0


def checksum(parts: Iterable[Buffer]) -> int:
    """Checksum over the concatenation of `parts`; each part but the last must be even."""
    return finish(sum(words(p) for p in parts))
