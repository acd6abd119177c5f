"""A small HTTP/1.1 server protocol (httptools): /bytes/N, /hello, keep-alive and
pipelining, with flow control."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import httptools

from ustack.services.basic import Producer

# --------------------------------------------------------------------------- http

_HTTP_BLOCK = bytes(range(256)) * 256  # 64 KiB, a multiple of 256: every chunk starts at 0
_HTTP_MAX_BYTES = 10**12
_HTTP_MAX_URL = 8 * 1024
_HTTP_MAX_HEADERS = 64 * 1024
# Pipelining: pause reading when this many requests wait, resume at the low mark.
_HTTP_QUEUE_HIGH = 8
_HTTP_QUEUE_LOW = 2
_HELLO_BODY = b"hello from ustack\n"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


@dataclass(slots=True)
class _Request:
    method: bytes  # b"" for a synthetic error response
    url: bytes
    http10: bool  # the client spoke HTTP/1.0
    keep_alive: bool
    error: int = 0  # non-zero: answer with this status and close


class HttpProtocol(Producer):
    """Minimal HTTP/1.1 server: ``/`` and ``/bytes/N``; keep-alive and pipelining.

    Requests are parsed with httptools and queued; responses are produced strictly in
    order, one at a time. A ``/bytes/N`` body is streamed from a fixed 64 KiB block while
    the transport is not paused. Responses are always HTTP/1.1; a 1.0 client that asked
    for keep-alive gets ``Connection: keep-alive``, every closing response says
    ``Connection: close``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Request] = deque()
        self._url = bytearray()
        self._head_size = 0
        self._head_error = 0  # status set by a size-limit callback before it raises
        self._cur: _Request | None = None  # request whose body is streaming
        self._remaining = 0  # body bytes still to write for _cur
        self._parsing = True  # False after an error / close-request: ignore further input
        self._read_paused = False
        self._pumping = False
        self._eof = False
        self._done = False  # we closed (or lost) the connection

    # -- httptools callbacks (only record; responses are started after feed_data)

    def on_message_begin(self) -> None:
        self._url.clear()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > _HTTP_MAX_URL:
            self._head_error = 414
            raise ValueError("request URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > _HTTP_MAX_HEADERS:
            self._head_error = 431
            raise ValueError("request header section too large")

    def on_message_complete(self) -> None:
        p = self._parser
        req = _Request(
            method=p.get_method(),
            url=bytes(self._url),
            http10=p.get_http_version() == "1.0",
            keep_alive=p.should_keep_alive(),
        )
        self._enqueue(req)

    # -- asyncio protocol

    def data_received(self, data: bytes) -> None:
        if not self._parsing or self._done:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade / CONNECT are not supported: answer the request, then close.
            if self._queue and not self._queue[-1].error:
                self._queue[-1].keep_alive = False
                self._parsing = False
            else:
                self._enqueue_error(400)
        except httptools.HttpParserError:
            # (a callback's exception arrives wrapped as HttpParserCallbackError)
            if self._parsing:  # not after a request that already closes the connection
                self._enqueue_error(self._head_error or 400)
        self._pump()
        if len(self._queue) > _HTTP_QUEUE_HIGH and not self._read_paused and self._alive():
            self._read_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self._eof = True
        self._parsing = False
        if self._cur is None and not self._queue:
            self._close()
            return False
        return True  # keep the write side open until the queued responses are sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._parsing = False
        self._queue.clear()
        self._cur = None
        super().connection_lost(exc)

    # -- request queue

    def _enqueue(self, req: _Request) -> None:
        self._queue.append(req)
        if not req.keep_alive:
            self._parsing = False  # anything after this request is ignored

    def _enqueue_error(self, status: int) -> None:
        self._enqueue(_Request(b"", b"", False, False, error=status))

    def _alive(self) -> bool:
        return not self._done and self._transport is not None and not self._transport.is_closing()

    def _close(self) -> None:
        self._done = True
        self._stop_producing()
        if self._transport is not None:
            self._transport.close()  # flushes the write buffer first

    def _pump(self) -> None:
        """Drive responses in order: stream the current body, then start queued requests.

        Re-entrant calls (a finished stream calling back in) return at once; the outer
        loop picks up where they left off, so the stack never grows with the queue.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._done and self._can_write():
                if self._cur is not None:
                    self._kick()  # streams up to a bounded number of chunks
                    if self._cur is not None:
                        break  # paused, or a continuation is scheduled
                elif self._queue:
                    req = self._queue.popleft()
                    self._respond(req)
                    if self._cur is None and not req.keep_alive:
                        self._close()
                else:
                    break
        finally:
            self._pumping = False
        if self._done:
            return
        if self._read_paused and len(self._queue) <= _HTTP_QUEUE_LOW and self._alive():
            self._read_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]
        if self._eof and self._cur is None and not self._queue:
            self._close()

    def _respond(self, req: _Request) -> None:
        if req.error:
            self._send_simple(req, req.error)
            return
        if req.method not in (b"GET", b"HEAD"):
            self._send_simple(req, 405, extra=b"Allow: GET, HEAD\r\n")
            return
        try:
            path = httptools.parse_url(req.url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            req.keep_alive = False
            self._send_simple(req, 400)
            return
        head = req.method == b"HEAD"
        if path == b"/":
            self._send(req, 200, b"text/plain", _HELLO_BODY, head=head)
        elif path.startswith(b"/bytes/"):
            n = _parse_count(path[len(b"/bytes/") :])
            if n is None:
                req.keep_alive = False
                self._send_simple(req, 400)
                return
            self._write_head(req, 200, b"application/octet-stream", n)
            if not head and n:
                self._cur, self._remaining = req, n  # streamed by _pump / _produce
        else:
            self._send_simple(req, 404)

    def _send_simple(self, req: _Request, status: int, extra: bytes = b"") -> None:
        body = f"{status} {_REASONS[status]}\n".encode()
        self._send(req, status, b"text/plain", body, extra=extra, head=req.method == b"HEAD")

    def _send(
        self,
        req: _Request,
        status: int,
        ctype: bytes,
        body: bytes,
        *,
        extra: bytes = b"",
        head: bool = False,
    ) -> None:
        hdr = self._head_bytes(req, status, ctype, len(body), extra)
        self._transport.write(hdr if head else hdr + body)  # type: ignore[union-attr]

    def _write_head(self, req: _Request, status: int, ctype: bytes, length: int) -> None:
        self._transport.write(self._head_bytes(req, status, ctype, length))  # type: ignore[union-attr]

    @staticmethod
    def _head_bytes(
        req: _Request, status: int, ctype: bytes, length: int, extra: bytes = b""
    ) -> bytes:
        if not req.keep_alive:
            conn = b"Connection: close\r\n"
        elif req.http10:
            conn = b"Connection: keep-alive\r\n"
        else:
            conn = b""
        return b"".join(
            (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode(),
                b"Server: ustack\r\nContent-Type: ",
                ctype,
                f"\r\nContent-Length: {length}\r\n".encode(),
                conn,
                extra,
                b"\r\n",
            )
        )

    # -- body streaming (driven by Producer)

    def _produce_step(self) -> bool:
        req = self._cur
        if req is None or self._transport is None:
            return False
        n = min(self._remaining, len(_HTTP_BLOCK))
        self._transport.write(_HTTP_BLOCK if n == len(_HTTP_BLOCK) else _HTTP_BLOCK[:n])
        self._remaining -= n
        if self._remaining:
            return True
        self._cur = None
        if not req.keep_alive:
            self._close()
            return False
        # Next pipelined requests. Inside _pump this is a no-op (the outer loop continues);
        # otherwise _pump may start a new stream, which this _produce loop then carries on.
        self._pump()
        return self._cur is not None

    def resume_writing(self) -> None:
        self._write_paused = False
        self._pump()


def _parse_count(text: bytes) -> int | None:
    """Decimal N for /bytes/N with 0 <= N <= 10**12, or None if malformed."""
    if not text or len(text) > 13 or not text.isdigit():  # bytes.isdigit(): ASCII only
        return None
    n = int(text)
    return n if n <= _HTTP_MAX_BYTES else None


