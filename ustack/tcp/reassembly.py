"""Out-of-order reassembly with bounded memory, and the SACK blocks it implies.

Segments that arrive beyond RCV.NXT (but inside the window) are held as disjoint,
sorted ranges (smoltcp's `Assembler`, with the bytes kept alongside). When the gap
at RCV.NXT fills, `take()` hands back the now-contiguous bytes. Memory is bounded
twice: by bytes (never more than the receive window offered) and by the number of
holes; past either, new out-of-order data is refused (the sender will resend it).
"""

from ustack.tcp import seq

MAX_RANGES = 32


class Reassembly:
    def __init__(self, max_ranges: int = MAX_RANGES) -> None:
        self.max_ranges = max_ranges
        self._ranges: list[tuple[int, bytearray]] = []  # (start seq, data), sorted, disjoint
        self._recent: list[int] = []  # start seqs of ranges, most recently extended first
        self.held = 0  # bytes held

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def add(self, start: int, data: bytes | memoryview) -> bool:
        """Hold `data` (beyond RCV.NXT, inside the window); False when refused for room."""
        if not data:
            return True
        end = seq.add(start, len(data))
        ranges = self._ranges
        # Find the ranges that overlap or touch [start, end): merge them with the new data.
        first = 0
        while first < len(ranges) and seq.lt(_end(ranges[first]), start):
            first += 1
        last = first
        while last < len(ranges) and seq.le(ranges[last][0], end):
            last += 1
        if first == last and len(ranges) >= self.max_ranges:
            return False  # a new hole would exceed the bound
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
            self.held -= sum(len(r[1]) for r in ranges[first:last])
            gone = {r[0] for r in ranges[first:last]}
            self._recent = [s for s in self._recent if s not in gone]
        ranges[first:last] = [(merged_start, merged)]
        self.held += len(merged)
        self._recent.insert(0, merged_start)
        return True

    def duplicate(self, start: int, end: int) -> tuple[int, int] | None:
        """The first part of [start, end) already held, if any (what RFC 2883 reports)."""
        for r_start, data in self._ranges:
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
        self._ranges.pop(0)
        self.held -= len(data)
        self._recent.remove(start)
        return bytes(data[skip:]) if skip < len(data) else b""

    def drop_before(self, rcv_nxt: int) -> None:
        """Forget ranges wholly below `rcv_nxt` (delivered by a retransmission)."""
        while self._ranges and seq.le(_end(self._ranges[0]), rcv_nxt):
            start, data = self._ranges.pop(0)
            self.held -= len(data)
            self._recent.remove(start)

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """(left, right) edges, the most recently changed block first (RFC 2018 §4)."""
        by_start = {start: _end((start, data)) for start, data in self._ranges}
        return [(s, by_start[s]) for s in self._recent[:limit]]

    def clear(self) -> None:
        self._ranges.clear()
        self._recent.clear()
        self.held = 0


def _end(r: tuple[int, bytearray]) -> int:
    return seq.add(r[0], len(r[1]))
