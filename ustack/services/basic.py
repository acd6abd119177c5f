"""echo (RFC 862), discard (RFC 863) and chargen (RFC 864), and the producer that
chargen and http share: it writes while the transport lets it (pause_writing stops it)
and yields to the loop every few chunks."""

from __future__ import annotations

import asyncio

# A producer writes at most this many chunks per loop iteration, then yields to the loop
# (via call_soon) so a fast peer cannot starve other connections.
_MAX_CHUNKS_PER_CALL = 16

# --------------------------------------------------------------------------- echo / discard


class EchoProtocol(asyncio.Protocol):
    """RFC 862: send back every byte; close after the peer's FIN once flushed."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self._transport is not None:
            self._transport.close()  # flushes buffered echo data first
        return False

    # Backpressure: a peer that sends but does not read stops being read from.
    def pause_writing(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing() and not self._eof:
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class DiscardProtocol(asyncio.Protocol):
    """RFC 863: read and drop everything; close after the peer's FIN."""

    def __init__(self) -> None:
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        if self._transport is not None:
            self._transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


# --------------------------------------------------------------------------- producer base


class Producer(asyncio.Protocol):
    """Base for protocols that push data: writes while the transport is not paused.

    ``_produce_step`` is called with writing allowed and must write at most one chunk,
    returning False when there is nothing (more) to write right now.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._write_paused = False
        self._handle: asyncio.Handle | None = None
        self._producing = False  # inside _produce: a nested _kick must not recurse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def _can_write(self) -> bool:
        t = self._transport
        return t is not None and not self._write_paused and not t.is_closing()

    def _produce_step(self) -> bool:  # pragma: no cover - overridden
        return False

    def _produce(self) -> None:
        """Write up to _MAX_CHUNKS_PER_CALL chunks; reschedule only if not paused."""
        self._handle = None
        self._producing = True
        try:
            for _ in range(_MAX_CHUNKS_PER_CALL):
                if not self._can_write() or not self._produce_step():
                    return
        finally:
            self._producing = False
        if self._can_write() and self._loop is not None:
            self._handle = self._loop.call_soon(self._produce)

    def _kick(self) -> None:
        """Start producing now unless already producing or a continuation is scheduled."""
        if self._handle is None and not self._producing:
            self._produce()

    def _stop_producing(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._stop_producing()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._kick()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_producing()
        self._transport = None


# --------------------------------------------------------------------------- chargen

_CHARGEN_LINE_WIDTH = 72
_CHARGEN_PRINTABLE = bytes(range(32, 127))  # 95 characters


def _chargen_period() -> bytes:
    """One full 95-line period of the RFC 864 pattern (line k starts at char 32 + k % 95)."""
    ring = _CHARGEN_PRINTABLE * 2
    n = len(_CHARGEN_PRINTABLE)
    return b"".join(ring[k : k + _CHARGEN_LINE_WIDTH] + b"\r\n" for k in range(n))


CHARGEN_PERIOD = _chargen_period()  # 95 * 74 = 7030 bytes
_CHARGEN_CHUNK = 64 * 1024
# Long enough that a chunk can start at any offset within the period.
_CHARGEN_BUF = CHARGEN_PERIOD * (_CHARGEN_CHUNK // len(CHARGEN_PERIOD) + 2)


class ChargenProtocol(Producer):
    """RFC 864: stream the rotating 72-character lines while the peer keeps reading."""

    def __init__(self) -> None:
        super().__init__()
        self._offset = 0  # position within CHARGEN_PERIOD
        self._stopped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._kick()

    def _produce_step(self) -> bool:
        if self._stopped or self._transport is None:
            return False
        off = self._offset
        self._transport.write(_CHARGEN_BUF[off : off + _CHARGEN_CHUNK])
        self._offset = (off + _CHARGEN_CHUNK) % len(CHARGEN_PERIOD)
        return True

    def data_received(self, data: bytes) -> None:
        pass  # input is ignored

    def eof_received(self) -> bool:
        self._stopped = True
        self._stop_producing()
        if self._transport is not None:
            self._transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stopped = True
        super().connection_lost(exc)


