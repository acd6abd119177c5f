"""Tests for ustack.services over the kernel's loopback (127.0.0.1) and a fake transport."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ustack.services import (
    DEFAULT_PORTS,
    ChargenProtocol,
    DiscardProtocol,
    EchoProtocol,
    HttpProtocol,
    basic,
    parse_service_spec,
    protocol_factory,
)

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None

HOST = "127.0.0.1"
TIMEOUT = 10.0

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(uvloop is None, reason="-"))]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion on the selected event loop, bounded by TIMEOUT."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def _run(coro: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(coro, timeout))

    return _run


@asynccontextmanager
async def serve(name: str, instances: list[asyncio.Protocol] | None = None) -> AsyncIterator[int]:
    """Serve a service on 127.0.0.1:<ephemeral>; optionally record protocol instances."""
    factory = protocol_factory(name)

    def make() -> asyncio.Protocol:
        proto = factory()
        if instances is not None:
            instances.append(proto)
        return proto

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def chargen_line(k: int) -> bytes:
    chars = bytes(range(32, 127))
    return bytes(chars[(k + i) % 95] for i in range(72)) + b"\r\n"


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("echo", ("echo", 7)),
        ("discard", ("discard", 9)),
        ("chargen", ("chargen", 19)),
        ("http", ("http", 80)),
        ("http:8080", ("http", 8080)),
        ("echo:1", ("echo", 1)),
        ("chargen:65535", ("chargen", 65535)),
        ("HTTP:08080", ("http", 8080)),
    ],
)
def test_parse_service_spec_ok(spec: str, expected: tuple[str, int]) -> None:
    assert parse_service_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ftp", "unknown service"),
        ("", "unknown service"),
        (":80", "unknown service"),
        ("http:", "invalid port"),
        ("http:abc", "invalid port"),
        ("http:-1", "invalid port"),
        ("http:+80", "invalid port"),
        ("http:8 0", "invalid port"),
        ("http:1.5", "invalid port"),
        ("http:٨٠", "invalid port"),  # non-ASCII digits
        ("http:123456", "invalid port"),
        ("http:0", "out of range"),
        ("http:65536", "out of range"),
        ("echo:7:7", "invalid port"),
    ],
)
def test_parse_service_spec_errors(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_service_spec(spec)


def test_protocol_factory() -> None:
    assert DEFAULT_PORTS == {"echo": 7, "discard": 9, "chargen": 19, "http": 80}
    assert isinstance(protocol_factory("echo")(), EchoProtocol)
    assert isinstance(protocol_factory("discard")(), DiscardProtocol)
    assert isinstance(protocol_factory("chargen")(), ChargenProtocol)
    assert isinstance(protocol_factory("http")(), HttpProtocol)
    with pytest.raises(ValueError, match="unknown service"):
        protocol_factory("gopher")


def test_chargen_period_pattern() -> None:
    period = basic.CHARGEN_PERIOD
    assert period == b"".join(chargen_line(k) for k in range(95))
    # RFC 864 sample: line 0 runs from ' ' to 'g', line 1 from '!' to 'h', line 94 from '~'
    line0 = b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n"
    assert len(line0) == 74
    assert period.startswith(line0 + b"!\"#$%&'()")
    assert period[74:148].endswith(b"fgh\r\n")
    assert period[-74:].startswith(b'~ !"#') and period[-74:].endswith(b"def\r\n")
    assert len(period) == 95 * 74


# --------------------------------------------------------------------------- echo / discard


def test_echo_1mb_sha256_half_close(run: Callable[..., Any]) -> None:
    data = os.urandom(1_000_000)

    async def main() -> None:
        async with serve("echo") as port:
            reader, writer = await asyncio.open_connection(HOST, port)

            async def send() -> None:
                for i in range(0, len(data), 100_000):
                    writer.write(data[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await reader.read()  # until the server's FIN
            await sender
            writer.close()
            assert len(got) == len(data)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

    run(main())


def test_echo_closes_after_fin(run: Callable[..., Any]) -> None:
    async def main() -> None:
        instances: list[asyncio.Protocol] = []
        async with serve("echo", instances) as port:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"ping\n")
            assert await reader.readexactly(5) == b"ping\n"
            writer.write_eof()
            assert await reader.read() == b""  # server closed
            writer.close()
            await wait_until(lambda: instances[0]._transport is None)  # connection_lost

    run(main())


def test_discard_swallows_5mb_and_closes(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with serve("discard") as port:
            reader, writer = await asyncio.open_connection(HOST, port)
            block = os.urandom(1 << 20)
            for _ in range(5):
                writer.write(block)
                await writer.drain()
            writer.write_eof()
            assert await reader.read() == b""  # nothing echoed, then the server's FIN
            writer.close()

    run(main())


# --------------------------------------------------------------------------- chargen


def test_chargen_lines(run: Callable[..., Any]) -> None:
    async def main() -> None:
        instances: list[asyncio.Protocol] = []
        async with serve("chargen", instances) as port:
            reader, writer = await asyncio.open_connection(HOST, port)
            nlines = 300  # > 3 periods of 95 lines
            for k in range(nlines):
                line = await reader.readuntil(b"\r\n")
                assert len(line) == 74
                assert all(32 <= c <= 126 for c in line[:72])
                assert line == chargen_line(k)
            writer.close()  # abrupt close with unread data: server must stop
            await writer.wait_closed()
            proto = instances[0]
            await wait_until(lambda: proto._transport is None)
            assert proto._handle is None

    run(main())


def test_chargen_stops_after_fin(run: Callable[..., Any]) -> None:
    async def main() -> None:
        instances: list[asyncio.Protocol] = []
        async with serve("chargen", instances) as port:
            reader, writer = await asyncio.open_connection(HOST, port)
            first = await reader.readexactly(74)
            assert first == chargen_line(0)
            writer.write_eof()
            rest = await reader.read()  # drains what was in flight, then EOF
            writer.close()
            assert len(rest) < 64 << 20
            await wait_until(lambda: instances[0]._transport is None)

    run(main())


# --------------------------------------------------------------------------- http helpers


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False, digest: bool = False
) -> Response:
    """Read one response; with digest=True the body is replaced by its SHA-256."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    assert headers["server"] == "ustack"
    length = int(headers["content-length"])
    if head:
        return Response(int(status), headers, b"")
    if not digest:
        return Response(int(status), headers, await reader.readexactly(length))
    h = hashlib.sha256()
    while length:
        chunk = await reader.read(min(length, 1 << 16))
        assert chunk, "premature EOF"
        h.update(chunk)
        length -= len(chunk)
    return Response(int(status), headers, h.digest())


@asynccontextmanager
async def http_conn() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with serve("http") as port:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            yield reader, writer
        finally:
            writer.close()


async def request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes, **kw: Any
) -> Response:
    writer.write(raw)
    return await read_response(reader, **kw)


def get(path: str, version: str = "1.1", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


# --------------------------------------------------------------------------- http


def test_http_root_and_keep_alive(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            for _ in range(2):  # two requests on one connection
                r = await request(reader, writer, get("/"))
                assert r.status == 200
                assert r.body == b"hello from ustack\n"
                assert r.headers["content-type"] == "text/plain"
                assert r.headers["content-length"] == "18"
                assert "connection" not in r.headers

    run(main())


def test_http_bytes(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, get("/bytes/0"))
            assert (r.status, r.body, r.headers["content-length"]) == (200, b"", "0")
            r = await request(reader, writer, get("/bytes/1000"))
            assert r.body == pattern(1000)
            assert r.headers["content-type"] == "application/octet-stream"
            r = await request(reader, writer, get("/bytes/1000000"), digest=True)
            assert r.headers["content-length"] == "1000000"
            assert r.body == hashlib.sha256(pattern(1_000_000)).digest()
            r = await request(reader, writer, get("/bytes/300?x=1&y"))  # query ignored
            assert r.body == pattern(300)
            r = await request(reader, writer, get("/"))  # connection still usable
            assert r.status == 200

    run(main())


@pytest.mark.parametrize(
    "path",
    ["/bytes/1000000000001", "/bytes/abc", "/bytes/-1", "/bytes/+5", "/bytes/", "/bytes/1" * 20],
)
def test_http_bad_count_400_closes(run: Callable[..., Any], path: str) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, get(path))
            assert r.status == 400
            assert r.headers["connection"] == "close"
            assert await reader.read() == b""

    run(main())


def test_http_max_count_head(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, get("/bytes/1000000000000", method="HEAD"), head=True)
            assert (r.status, r.headers["content-length"]) == (200, "1000000000000")
            r = await request(reader, writer, get("/", method="HEAD"), head=True)
            assert (r.status, r.headers["content-length"]) == (200, "18")
            # no body was sent for either HEAD: the next response parses cleanly
            r = await request(reader, writer, get("/bytes/5"))
            assert r.body == bytes(range(5))

    run(main())


def test_http_404_keeps_connection(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, get("/nope"))
            assert r.status == 404
            r = await request(reader, writer, get("/"))
            assert r.status == 200

    run(main())


def test_http_garbage_400(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, b"\x00\x01 garbage garbage\r\n\r\n")
            assert r.status == 400
            assert r.headers["connection"] == "close"
            assert await reader.read() == b""

    run(main())


def test_http_post_405(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            r = await request(reader, writer, raw)
            assert r.status == 405
            assert r.headers["allow"] == "GET, HEAD"
            r = await request(reader, writer, get("/"))  # the POST body was consumed
            assert r.status == 200

    run(main())


def test_http_connection_close(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, get("/bytes/200000", extra="Connection: close\r\n"))
            assert r.headers["connection"] == "close"
            assert r.body == pattern(200_000)
            assert await reader.read() == b""

    run(main())


def test_http10_closes(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            r = await request(reader, writer, get("/", version="1.0"))
            assert r.status == 200
            assert r.headers["connection"] == "close"
            assert await reader.read() == b""

    run(main())


def test_http10_keep_alive(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            for _ in range(2):
                raw = get("/bytes/10", version="1.0", extra="Connection: keep-alive\r\n")
                r = await request(reader, writer, raw)
                assert r.headers["connection"].lower() == "keep-alive"
                assert r.body == pattern(10)

    run(main())


def test_http_pipelining(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            writer.write(get("/bytes/300000") + get("/"))  # two requests in one write
            r1 = await read_response(reader)
            r2 = await read_response(reader)
            assert r1.body == pattern(300_000)
            assert r2.body == b"hello from ustack\n"
            # many pipelined requests (exercises the queue's pause/resume of reading)
            paths = [f"/bytes/{i * 1000}" if i % 3 else "/nope" for i in range(60)]
            writer.write(b"".join(get(p) for p in paths) + get("/", extra="Connection: close\r\n"))
            for i, _p in enumerate(paths):
                r = await read_response(reader)
                if i % 3:
                    assert r.body == pattern(i * 1000)
                else:
                    assert r.status == 404
            r = await read_response(reader)
            assert r.headers["connection"] == "close"
            assert await reader.read() == b""

    run(main())


def test_http_eof_finishes_response(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            writer.write(get("/bytes/3000000") + get("/bytes/7"))
            writer.write_eof()  # half-close: both responses still arrive, then EOF
            r = await read_response(reader, digest=True)
            assert r.body == hashlib.sha256(pattern(3_000_000)).digest()
            r = await read_response(reader)
            assert r.body == pattern(7)
            assert await reader.read() == b""

    run(main())


def test_http_idle_eof_closes(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            writer.write_eof()
            assert await reader.read() == b""

    run(main())


def test_http_valid_then_garbage(run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with http_conn() as (reader, writer):
            writer.write(get("/bytes/70000") + b"BLAH\x01\r\n\r\n" + get("/"))
            r = await read_response(reader)
            assert r.body == pattern(70_000)
            r = await read_response(reader)
            assert r.status == 400
            assert await reader.read() == b""  # the request after the garbage is ignored

    run(main())


# --------------------------------------------------------------------------- flow control


class FakeTransport(asyncio.Transport):
    """In-memory transport that applies high/low water marks like asyncio's."""

    def __init__(self, proto: asyncio.Protocol, high: int = 256 << 10, low: int = 64 << 10) -> None:
        super().__init__()
        self.proto = proto
        self.high, self.low = high, low
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False  # protocol's writing paused
        self.reading = True
        self.closing = False
        self.total = 0
        self.sizes: list[tuple[int, int]] = []  # (length, first byte) of every write

    def write(self, data: Any) -> None:
        assert not self.closing, "write after close"
        data = bytes(data)
        self.chunks.append(data)
        self.sizes.append((len(data), data[0] if data else -1))
        self.buffered += len(data)
        self.total += len(data)
        if not self.paused and self.buffered > self.high:
            self.paused = True
            self.proto.pause_writing()

    def drain(self) -> bytes:
        """Consumer reads everything; may resume the protocol."""
        out = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.proto.resume_writing()
        return out

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_echo_backpressure_pauses_reading() -> None:
    proto = EchoProtocol()
    t = FakeTransport(proto, high=1000)
    proto.connection_made(t)
    proto.data_received(b"x" * 2000)
    assert t.paused and not t.reading
    t.drain()
    assert t.reading
    proto.eof_received()
    assert t.closing
    proto.connection_lost(None)
    proto.data_received(b"late")  # ignored after connection_lost


def test_chargen_respects_pause(run: Callable[..., Any]) -> None:
    async def main() -> None:
        proto = ChargenProtocol()
        t = FakeTransport(proto)
        proto.connection_made(t)
        assert t.paused  # wrote until paused
        before = t.total
        await spin()
        assert t.total == before  # nothing written while paused, no busy loop
        out = t.drain()
        assert t.total > before  # resume_writing continued
        out += t.drain()
        await spin()
        out += t.drain()
        n = len(out) // 74
        assert out[: n * 74] == b"".join(chargen_line(k) for k in range(n))
        proto.connection_lost(None)
        total = t.total
        await spin()
        assert t.total == total
        assert proto._handle is None

    run(main())


def test_http_stream_respects_pause_and_queues(run: Callable[..., Any]) -> None:
    async def main() -> None:
        proto = HttpProtocol()
        t = FakeTransport(proto)
        proto.connection_made(t)
        n = 5 << 20
        proto.data_received(get(f"/bytes/{n}"))
        assert t.paused
        before = t.total
        await spin()
        assert t.total == before  # paused: no writes
        # pipelined requests while streaming: queued, then reading is paused
        proto.data_received(b"".join(get("/bytes/1") for _ in range(20)))
        assert not t.reading
        out = bytearray()
        for _ in range(1000):
            out += t.drain()
            await spin(1)
            if not t.buffered and not proto._queue and proto._cur is None:
                break
        assert t.reading  # resumed once the queue drained
        head, _, rest = bytes(out).partition(b"\r\n\r\n")
        assert f"Content-Length: {n}".encode() in head
        assert rest[:n] == pattern(n)
        assert rest[n:].count(b"HTTP/1.1 200 OK") == 20
        # every body chunk of the big stream starts at pattern byte 0
        body_chunks = [first for size, first in t.sizes if size == 1 << 16]
        assert len(body_chunks) == n >> 16
        assert set(body_chunks) == {0}
        proto.data_received(get(f"/bytes/{n}"))
        proto.connection_lost(None)  # mid-stream: stops
        total = t.total
        out = t.drain()
        await spin()
        assert t.total == total

    run(main())


def test_http_many_pipelined_small_streams(run: Callable[..., Any]) -> None:
    """Thousands of pipelined tiny /bytes/N requests: answered in order, no recursion blowup."""

    async def main() -> None:
        async with http_conn() as (reader, writer):
            count = 3000
            writer.write(b"".join(get(f"/bytes/{i % 7}") for i in range(count)))
            for i in range(count):
                r = await read_response(reader)
                assert r.body == pattern(i % 7)

    run(main())
