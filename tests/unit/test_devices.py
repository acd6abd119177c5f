"""Links without a TUN (`ustack.devices`), no root needed: two stacks in one process over
a memory link (echo over both families, HTTP, TLS, an aiohttp app, under seeded loss),
a packet link the application drives, a stream of framed packets (a bad packet dropped
and counted while the transfer goes on, junk ending the link with a clear error, a
packet split across reads put together), and what closing a stack does to whoever
waits on one of its connections."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ustack.api import Stack, tls
from ustack.devices import Framer, FramingError, LinkLost, MemoryLink, PacketLink, StreamLink
from ustack.services import protocol_factory

A = {"addr": "10.9.0.1", "addr6": "fd09::1", "link_local6": "fe80::1"}
B = {"addr": "10.9.0.2", "addr6": "fd09::2", "link_local6": "fe80::2"}
DATA = bytes(range(256)) * 4000  # 1 MB


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def through_echo(client: Stack, host: str, data: bytes = DATA, port: int = 7,
                       eof: bool = True, **kwargs: Any) -> bytes:
    """`data` sent (then our FIN, with `eof`) and what comes back until the peer's."""
    reader, writer = await client.open_connection(host, port, **kwargs)

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        if eof and writer.can_write_eof():
            writer.write_eof()

    sending = asyncio.create_task(send())
    # TLS has no half-close: its echo is read by length.
    got = await (reader.readexactly(len(data)) if "ssl" in kwargs else reader.read(-1))
    await sending
    writer.close()
    return got


@asynccontextmanager
async def pair(a_device: Any, b_device: Any, **kw: Any) -> AsyncIterator[tuple[Stack, Stack]]:
    async with Stack(device=a_device, linger=0.2, **A, **kw) as a, \
            Stack(device=b_device, linger=0.2, **B, **kw) as b:
        await b.start_server(echo, port=7)
        yield a, b


# ------------------------------------------------------------------------- framing


def ipv4(payload: bytes = b"x" * 30) -> bytes:
    return struct.pack("!BBH", 0x45, 0, 20 + len(payload)) + bytes(16) + payload


def ipv6(payload: bytes = b"y" * 50) -> bytes:
    return struct.pack("!IHBB", 0x6000_0000, len(payload), 6, 64) + bytes(32) + payload


def test_packets_are_cut_by_their_length_fields_however_the_stream_splits() -> None:
    packets = [ipv4(), ipv6(), ipv4(b""), ipv6(b"z" * 1500)]
    stream = b"".join(packets)
    assert Framer().feed(stream) == packets
    framer, got = Framer(), []
    for i in range(len(stream)):  # one byte a read: every split point
        got += framer.feed(stream[i:i + 1])
    assert got == packets and framer.pending == 0


@pytest.mark.parametrize(("junk", "words"), [
    (b"\x50" + bytes(30), "version 5 is neither IPv4 nor IPv6"),
    (b"\x45\x00\x00\x10" + bytes(20), "an IPv4 packet of 16 bytes with a 20-byte header"),
    (b"\x43\x00\x00\x30" + bytes(50), "with a 12-byte header"),
    (b"\x60" + bytes(39), "payload length 0"),
])
def test_a_stream_that_cannot_be_framed_says_where_and_why(junk: bytes, words: str) -> None:
    framer = Framer()
    assert framer.feed(ipv4()) == [ipv4()]
    with pytest.raises(FramingError, match=words) as caught:
        framer.feed(junk)
    assert "at byte 50" in str(caught.value)


# --------------------------------------------------------------------- memory link


@pytest.mark.parametrize("offload", [False, True], ids=["packets", "super-packets"])
def test_two_stacks_in_one_process_over_both_families(offload: bool) -> None:
    async def main() -> None:
        link = MemoryLink(offload=offload)
        async with pair(link.a, link.b) as (a, _):
            for host in (B["addr"], B["addr6"], B["link_local6"]):
                assert await through_echo(a, host) == DATA
            if offload:
                assert max(a.stats().get("tcp_segments_out", 0), 1) < len(DATA) // 1460

    run(main())


@pytest.mark.parametrize("loss", [0.0, 0.05], ids=["clean", "5%-loss"])
def test_http_tls_and_aiohttp_between_two_stacks(tmp_path: Path, loss: float) -> None:
    web = pytest.importorskip("aiohttp.web")
    cert, key = tls.self_signed_certificate(tmp_path, addresses=[B["addr"]])
    server_tls = tls.server_context(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def hello(request: Any) -> Any:
        return web.Response(text=f"hello {request.match_info['name']} from aiohttp")

    async def main() -> None:
        link = MemoryLink()
        async with pair(link.a, link.b) as (a, b):
            if loss:
                a.faults(loss=loss, seed=5)
                b.faults(loss=loss, seed=6)
            await b.create_server(protocol_factory("http"), port=80)
            reply = await through_echo(a, B["addr"], b"GET /bytes/5000 HTTP/1.1\r\nHost: b\r\n"
                                       b"Connection: close\r\n\r\n", port=80)
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and body == bytes(range(256)) * 19 + bytes(
                range(136))
            await b.start_server(echo, port=443, ssl=server_tls)
            assert await through_echo(a, B["addr"], DATA[:200_000], port=443,
                                      ssl=client_tls) == DATA[:200_000]
            app = web.Application()
            app.router.add_get("/hello/{name}", hello)
            runner = web.AppRunner(app)
            await runner.setup()
            await b.create_server(runner.server, B["addr6"], 8080)
            reply = await through_echo(a, B["addr6"], b"GET /hello/a HTTP/1.1\r\nHost: b\r\n"
                                       b"Connection: close\r\n\r\n", port=8080, eof=False)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello a from aiohttp")
            await runner.cleanup()

    run(main())


def test_a_memory_link_under_seeded_loss_delivers_everything() -> None:
    async def main() -> None:
        link = MemoryLink()
        async with pair(link.a, link.b) as (a, b):
            a.faults(loss=0.05, seed=3)
            b.faults(loss=0.05, seed=4)
            assert await through_echo(a, B["addr"]) == DATA
            assert a.stats()["fault_dropped"] > 0 and b.stats()["fault_dropped"] > 0

    run(main())


# --------------------------------------------------------------------- packet link


def test_a_packet_link_driven_by_the_application() -> None:
    async def main() -> None:
        # The application's "tunnel": a's packets go to b by callback, b's come back
        # through b's queue, which a task drains.
        b_link = PacketLink(mtu=9000)
        a_link = PacketLink(mtu=9000, on_packet=b_link.feed)

        async def carry() -> None:
            async for packet in b_link:
                a_link.feed(packet)

        carrier = asyncio.create_task(carry())
        async with pair(a_link, b_link) as (a, b):
            assert await through_echo(a, B["addr"]) == DATA
            assert b.stats()["tx_packets"] > 100
        await asyncio.wait_for(carrier, 5)  # b's link closed: the iteration ends
        assert b_link.get_nowait() is None

    run(main())


def test_a_full_packet_queue_drops_and_counts() -> None:
    async def main() -> None:
        link = PacketLink(queue=3)  # nobody drains it
        async with Stack(device=link, linger=0, **A) as a:
            for _ in range(6):
                a.loop.create_task(a.open_connection(B["addr"], 7))
            await asyncio.sleep(0.05)
            assert a.stats()["tx_dropped_queue_full"] == 3

    run(main())


# --------------------------------------------------------------------- stream link


async def socket_streams() -> tuple[Any, Any]:
    left, right = socket.socketpair()
    return (await asyncio.open_connection(sock=left)), (await asyncio.open_connection(sock=right))


def tcp_packet(src: str, dst: str, dport: int, bad_checksum: bool) -> bytes:
    import dpkt

    seg = dpkt.tcp.TCP(sport=5555, dport=dport, seq=1, flags=dpkt.tcp.TH_SYN, win=1000)
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=seg)
    packet.len = 40
    raw = bytearray(bytes(packet))
    if bad_checksum:
        raw[36] ^= 0xFF
    return bytes(raw)


def test_a_stream_link_drops_a_bad_packet_and_goes_on() -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await socket_streams()
        a_link, b_link = StreamLink.over(ra, wa), StreamLink.over(rb, wb)
        async with pair(a_link, b_link) as (a, b):
            await a.ready()
            wa.write(tcp_packet(A["addr"], B["addr"], 7, bad_checksum=True))
            assert await through_echo(a, B["addr"]) == DATA
            assert b.stats()["drop_tcp_bad_checksum"] == 1

    run(main())


def test_junk_on_the_stream_ends_the_link_and_wakes_its_connections() -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await socket_streams()
        async with pair(StreamLink.over(ra, wa), StreamLink.over(rb, wb)) as (a, b):
            reader, writer = await a.open_connection(B["addr"], 7)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            served = list(b._host.connections())
            wa.write(b"\x99 this is not an IP packet")
            await asyncio.wait_for(b.wait_closed(), 5)
            assert isinstance(b.link_error, LinkLost)
            assert "not a stream of IP packets" in str(b.link_error)
            assert "neither IPv4 nor IPv6" in str(b.link_error)
            assert all(tcb.state.name == "CLOSED" for tcb in served)

    run(main())


def test_a_packet_split_across_writes_of_the_stream_arrives_whole() -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await socket_streams()
        async with pair(StreamLink.over(ra, wa), StreamLink.over(rb, wb)) as (a, b):
            await a.ready()
            syn = tcp_packet("10.9.0.7", B["addr"], 7, bad_checksum=False)
            wa.write(syn[:13])
            await wa.drain()
            await asyncio.sleep(0.05)  # b has read the first part alone
            wa.write(syn[13:])
            await asyncio.sleep(0.05)
            assert b.stats()["passive_opens"] == 1

    run(main())


def test_unchecked_checksums_on_a_trusted_link() -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await socket_streams()
        async with pair(StreamLink.over(ra, wa), StreamLink.over(rb, wb),
                        verify_checksums=False) as (a, b):
            await a.ready()
            wa.write(tcp_packet(A["addr"], B["addr"], 7, bad_checksum=True))
            await asyncio.sleep(0.05)
            assert "drop_tcp_bad_checksum" not in b.stats()
            assert b.stats()["passive_opens"] == 1  # the SYN was taken as it came

    run(main())


# --------------------------------------------------------------------- closing


@pytest.mark.parametrize("how", ["close", "lost link"])
def test_closing_a_stack_wakes_every_reader_and_writer(how: str) -> None:
    async def main() -> None:
        (ra, wa), (rb, wb) = await socket_streams()
        async with pair(StreamLink.over(ra, wa), StreamLink.over(rb, wb)) as (a, b):
            await b.start_server(lambda r, w: asyncio.sleep(60), port=9)  # never reads
            reader, _writer = await a.open_connection(B["addr"], 7)  # kept: open
            _sink_reader, sink = await a.open_connection(B["addr"], 9)
            sink.write(b"x" * (8 << 20))  # more than any window: drain must wait
            waiting: list[Callable[[], Awaitable[Any]]] = [
                lambda: reader.read(10), sink.drain]
            tasks = [asyncio.create_task(wait()) for wait in waiting]
            await asyncio.sleep(0.05)
            assert not any(task.done() for task in tasks)
            if how == "close":
                a.close()
            else:
                wb.close()  # the other end of a's stream goes away
            done, _ = await asyncio.wait(tasks, timeout=5)
            assert len(done) == 2, "a reader or writer was left waiting"
            # Each hears an error, not an orderly end: why the stack went away.
            errors = [task.exception() for task in tasks]
            assert all(isinstance(e, ConnectionError) for e in errors), errors
            if how == "lost link":
                assert all(isinstance(e, LinkLost) for e in errors), errors
            await a.wait_closed()

    run(main())


def test_capture_and_trace_work_on_a_link_as_on_a_tun(tmp_path: Path) -> None:
    import io

    from ustack.ladder import capture_events

    async def main() -> io.StringIO:
        trace = io.StringIO()
        link = MemoryLink()
        async with Stack(device=link.a, pcap=tmp_path / "a.pcap", trace=trace, linger=0.2,
                         **A) as a, Stack(device=link.b, linger=0.2, **B) as b:
            await b.start_server(echo, port=7)
            assert await through_echo(a, B["addr6"], DATA[:10_000]) == DATA[:10_000]
        return trace

    trace = run(main())
    assert "SYN" in trace.getvalue() and "[fd09::2]:7" in trace.getvalue()
    with open(tmp_path / "a.pcap", "rb") as f:
        events, _ = capture_events(f, A["addr6"])
    assert events


def test_two_readers_of_a_packet_link_both_hear_its_close() -> None:
    async def main() -> None:
        link = PacketLink()
        waiting = [asyncio.create_task(link.get()) for _ in range(2)]
        await asyncio.sleep(0)
        link.close()
        for task in waiting:
            with pytest.raises(Exception, match="closed"):
                await asyncio.wait_for(task, 2)

    run(main())


def test_closing_twice_at_once_is_one_close() -> None:
    async def main() -> None:
        link = MemoryLink()
        async with pair(link.a, link.b) as (a, _):
            _, writer = await a.open_connection(B["addr"], 7)
            writer.close()  # in FIN-WAIT-1: the close lingers a moment
            a.close()
            await a.aclose()  # the second waits for the first; neither fails
            assert a.link_error is None

    run(main())
