"""The send buffer: what the user handed over and the peer has not acknowledged.

Kept as the user's own `bytes` objects, not copied into one bytearray: a segment's data
is a view into one of them (no copy at all) unless it straddles two, and an ACK drops
whole chunks from the front. Other buffer types (bytearray, memoryview) are copied once,
since the user may change them after the call (as a socket's send() would have copied).
"""

from bisect import bisect_right

_SMALL = 4096  # chunks up to this size are merged with the next small write

class SendBuffer:
    __slots__ = ("_base", "_chunks", "_len", "_starts")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # where each chunk begins, counted since the start
        self._base = 0  # bytes dropped since the start: where the buffer now begins
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # the user may change it after the call; counts in bytes
        if not data:
            return
        chunks = self._chunks
        if chunks and len(chunks[-1]) + len(data) <= _SMALL:
            # Small writes are joined (cheaply) so that a segment never gathers from
            # hundreds of pieces; a view of the old chunk stays valid (bytes never change).
            chunks[-1] = chunks[-1] + data
        else:
            chunks.append(data)
            self._starts.append(self._base + self._len)
        self._len += len(data)

    def drop(self, n: int) -> None:
        """Forget the first `n` bytes (acknowledged)."""
        n = min(n, self._len)
        self._base += n
        self._len -= n
        chunks, starts = self._chunks, self._starts
        first = 0
        while first < len(chunks) and starts[first] + len(chunks[first]) <= self._base:
            first += 1
        if first:
            del chunks[:first], starts[:first]  # release acknowledged chunks at once

    def slice(self, offset: int, n: int) -> bytes | memoryview:
        """`n` bytes from `offset` (from the start of what is held): a view when they lie
        in one chunk, else one joined copy."""
        if n <= 0:
            return b""
        at = self._base + offset
        chunks, starts = self._chunks, self._starts
        i = bisect_right(starts, at) - 1
        chunk = chunks[i]
        start = at - starts[i]
        if start + n <= len(chunk):
            if start == 0 and n == len(chunk):
                return chunk
            return memoryview(chunk)[start:start + n]
        pieces: list[bytes | memoryview] = [memoryview(chunk)[start:]]
        need = n - len(pieces[0])
        while need > 0:
            i += 1
            piece = chunks[i]
            pieces.append(memoryview(piece)[:need] if len(piece) > need else piece)
            need -= len(piece)
        return b"".join(pieces)

    def clear(self) -> None:
        self._base += self._len
        self._len = 0
        self._chunks.clear()
        self._starts.clear()
