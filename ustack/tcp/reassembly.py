"""Out-of-order reassembly with bounded memory, and the SACK blocks it implies.

Segments that arrive beyond RCV.NXT (but inside the window) are held as disjoint,
sorted ranges (smoltcp's `Assembler`, with the bytes kept alongside). When the gap
at RCV.NXT fills, `take()` hands back the now-contiguous bytes. Memory is bounded
twice: by bytes (never more than the receive window offered) and by the number of
holes; past either, new out-of-order data is refused (the sender will resend it).

The hole bound is wide: at 5 % loss a window of 2,000 segments has a hundred holes, and
a bound of 32 refused 600 of 4,600 segments of a 5 MB upload (the sender resent 7 times
as much as to the kernel, which bounds its queue by memory alone). Ranges are found by
bisection and the next segment behind a hole extends its range in place, so each
arriving segment costs O(log holes), not O(holes) or O(range).
"""

from bisect import bisect_right

from ustack.tcp import seq

MAX_RANGES = 1024


class Reassembly:
    __slots__ = ("_ranges", "_recent", "held", "max_ranges")

    def __init__(self, max_ranges: int = MAX_RANGES) -> None:
        self.max_ranges = max_ranges
        self._ranges: list[tuple[int, bytearray]] = []  # (start seq, data), sorted, disjoint
        self._recent: list[int] = []  # start seqs of ranges, most recently extended first
        self.held = 0  # bytes held

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __len__(self) -> int:
        """The ranges held (each one a hole before it)."""
        return len(self._ranges)

    def _after(self, s: int) -> int:
        """The index of the first range that starts after `s` (ranges lie within a window
        of each other, so offsets from the first one order them)."""
        ranges = self._ranges
        base = ranges[0][0]
        if seq.lt(s, base):
            return 0  # before the first range
        return bisect_right(ranges, seq.sub(s, base), key=lambda r: seq.sub(r[0], base))

    def add(self, start: int, data: bytes | memoryview) -> bool:
        """Hold `data` (beyond RCV.NXT, inside the window); False when refused for room."""
        if not data:
            return True
        end = seq.add(start, len(data))
        ranges = self._ranges
        if not ranges:
            self._insert(0, 0, start, bytearray(data))
            return True
        # The ranges that overlap or touch [start, end): merge them with the new data.
        last = self._after(end)  # ranges[last:] start beyond the new data
        first = self._after(start)
        if first and seq.ge(_end(ranges[first - 1]), start):
            first -= 1  # the range before reaches the new data
        if first == last and len(ranges) >= self.max_ranges:
            return False  # a new hole would exceed the bound
        if last - first == 1:
            r_start, r_data = ranges[first]
            r_end = seq.add(r_start, len(r_data))
            if seq.le(r_start, start) and seq.gt(end, r_end):
                # The common case behind a loss: the next segment extends a range. In
                # place: rebuilding the range cost O(range) a segment.
                r_data += data[seq.sub(r_end, start):]
                self.held += seq.sub(end, r_end)
                self._touch(r_start)
                return True
        merged_start = start
        merged = bytearray(data)
        if first < last:
            lo, hi = ranges[first], ranges[last - 1]
            if seq.lt(lo[0], start):
                merged = lo[1][: seq.sub(start, lo[0])] + merged
                merged_start = lo[0]
            hi_end = _end(hi)
            if seq.gt(hi_end, end):
                merged += hi[1][len(hi[1]) - seq.sub(hi_end, end):]
            # Bytes already held win over the new copy where they overlap (they are the same
            # bytes in a correct stream; keeping the first copy is what Linux does too).
            for r_start, r_data in ranges[first:last]:
                offset = seq.sub(r_start, merged_start)
                merged[offset:offset + len(r_data)] = r_data
        self._insert(first, last, merged_start, merged)
        return True

    def _insert(self, first: int, last: int, start: int, data: bytearray) -> None:
        """Replace ranges[first:last] by one range (start, data)."""
        gone = self._ranges[first:last]
        for r_start, r_data in gone:
            self.held -= len(r_data)
            self._recent.remove(r_start)
        self._ranges[first:last] = [(start, data)]
        self.held += len(data)
        self._recent.insert(0, start)

    def _touch(self, start: int) -> None:
        """The range at `start` changed: its block is reported first (RFC 2018 §4)."""
        recent = self._recent
        if recent[0] != start:
            recent.remove(start)
            recent.insert(0, start)

    def _pop_first(self) -> tuple[int, bytearray]:
        start, data = self._ranges.pop(0)
        self.held -= len(data)
        self._recent.remove(start)
        return start, data

    def duplicate(self, start: int, end: int) -> tuple[int, int] | None:
        """The first part of [start, end) already held, if any (what RFC 2883 reports)."""
        ranges = self._ranges
        if not ranges:
            return None
        i = self._after(start)
        if i and seq.gt(_end(ranges[i - 1]), start):
            i -= 1
        for r_start, data in ranges[i:i + 2]:
            r_end = seq.add(r_start, len(data))
            lo = start if seq.gt(start, r_start) else r_start
            hi = end if seq.lt(end, r_end) else r_end
            if seq.lt(lo, hi):
                return lo, hi
        return None

    def take(self, rcv_nxt: int) -> bytes:
        """Bytes that now continue the stream at `rcv_nxt` (possibly none)."""
        if not self._ranges:
            return b""
        start, data = self._ranges[0]
        if seq.gt(start, rcv_nxt):
            return b""
        skip = seq.sub(rcv_nxt, start)
        self._pop_first()
        return bytes(data[skip:]) if skip < len(data) else b""

    def drop_before(self, rcv_nxt: int) -> None:
        """Forget ranges wholly below `rcv_nxt` (delivered by a retransmission)."""
        while self._ranges and seq.le(_end(self._ranges[0]), rcv_nxt):
            self._pop_first()

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """(left, right) edges, the most recently changed block first (RFC 2018 §4)."""
        ranges = self._ranges
        # ranges[_after(s) - 1] is the range that starts at s.
        return [(s, _end(ranges[self._after(s) - 1])) for s in self._recent[:limit]]

    def clear(self) -> None:
        self._ranges.clear()
        self._recent.clear()
        self.held = 0


def _end(r: tuple[int, bytearray]) -> int:
    return seq.add(r[0], len(r[1]))
