"""32-bit sequence-number arithmetic that wraps (RFC 9293 §3.4).

Plain ints, no objects per compare: `lt(a, b)` is true when `a` is "before" `b`
on the circle, i.e. `(a - b) mod 2**32` is in the upper half.
"""

MASK = 0xFFFF_FFFF
_HALF = 0x8000_0000


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def sub(a: int, b: int) -> int:
    """Distance from b forward to a, in [0, 2**32)."""
    return (a - b) & MASK


def ahead(a: int, b: int) -> int:
    """How far a is past b: sub(a, b) when a is not before b, else 0 (a window whose
    right edge RCV.NXT has passed, an ACK behind a buffer's start)."""
    d = (a - b) & MASK
    return d if d < _HALF else 0


def lt(a: int, b: int) -> bool:
    return a != b and ((a - b) & MASK) >= _HALF


def le(a: int, b: int) -> bool:
    return a == b or ((a - b) & MASK) >= _HALF


def gt(a: int, b: int) -> bool:
    return lt(b, a)


def ge(a: int, b: int) -> bool:
    return le(b, a)


def in_range(v: int, lo: int, hi: int) -> bool:
    """lo <= v < hi on the circle (an empty range when lo == hi)."""
    return ((v - lo) & MASK) < ((hi - lo) & MASK)
