"""The proxy with toxics (`ustack.services.proxy`) between two stacks on one in-memory
link: A runs the upstream server and the client, B the proxy, so both legs cross the
link as they cross the TUN. Intact without toxics; each toxic's effect (a delay, a rate,
a cut, a close, a reset, a hold, slices, a late FIN), counted and drawn per connection;
toxics changed while a connection runs; packet faults spared on the upstream leg."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable
from typing import Any

import pytest

from tests.unit.test_devices import A, B, echo
from ustack.api import Stack
from ustack.devices import MemoryLink
from ustack.link.stage import peer_endpoint
from ustack.services.toxics import Toxic, parse_toxic

DATA = bytes(range(256)) * 2000  # 512 kB


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def pair(*toxics: str, **proxy_kwargs: Any) -> tuple[Stack, Stack, Any]:
    link = MemoryLink()
    a = Stack(device=link.a, linger=0, **A)
    b = Stack(device=link.b, linger=0, **B)
    await a.__aenter__()
    await b.__aenter__()
    await a.start_server(echo, port=8000)
    proxy = await b.create_proxy(8080, A["addr"], 8000, toxics=toxics, seed=1,
                                 **proxy_kwargs)
    return a, b, proxy


async def close(*stacks: Stack) -> None:
    for stack in stacks:
        await stack.__aexit__(None, None, None)


async def exchange(a: Stack, data: bytes = DATA) -> tuple[bytes, float]:
    """`data` through the proxy to the echo server and back; what came back, seconds."""
    start = time.monotonic()
    reader, writer = await a.open_connection(B["addr"], 8080)
    writer.write(data)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got, time.monotonic() - start


def test_without_toxics_the_stream_arrives_intact_both_ways() -> None:
    async def main() -> None:
        a, b, _ = await pair()
        got, _ = await exchange(a)
        assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
        assert b.stats()["proxy_connections"] == 1
        await close(a, b)
    run(main())


def test_latency_delays_each_direction_once_not_per_chunk() -> None:
    async def main() -> None:
        a, b, proxy = await pair("latency latency=100")
        got, took = await exchange(a)
        assert got == DATA and 0.1 <= took < 1.0  # 512 kB of chunks, one 100 ms delay
        proxy.add_toxic("latency latency=100 stream=upstream")
        got, took = await exchange(a, b"ping")
        assert got == b"ping" and took >= 0.2
        assert b.stats()["toxic_latency"] == 3  # drawn once per connection and stream
        await close(a, b)
    run(main())


def test_bandwidth_limits_the_rate() -> None:
    async def main() -> None:
        a, b, _ = await pair("bandwidth rate=1000")  # 1000 KB/s
        got, took = await exchange(a)
        assert got == DATA and took >= len(DATA) / 1e6 * 0.95
        await close(a, b)
    run(main())


def test_limit_data_closes_after_n_bytes() -> None:
    async def main() -> None:
        a, b, _ = await pair("limit_data bytes=100000")
        got, _ = await exchange(a)
        assert got == DATA[:100_000]
        await close(a, b)
    run(main())


def test_reset_peer_resets_the_client() -> None:
    async def main() -> None:
        a, b, _ = await pair("reset_peer timeout=50")
        reader, writer = await a.open_connection(B["addr"], 8080)
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)  # no EOF: the server echoes, waits
        assert b.stats()["toxic_reset_peer"] == 1
        await close(a, b)
    run(main())


def test_timeout_drops_data_while_it_is_on_and_closes_after_its_time() -> None:
    async def main() -> None:
        a, b, proxy = await pair("timeout timeout=0")
        reader, writer = await a.open_connection(B["addr"], 8080)
        writer.write(b"lost")  # as toxiproxy: dropped, the connection kept open
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        proxy.clear_toxics()
        writer.write(b"next")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"next"
        # Added to a running connection, a timeout with a time closes it then.
        proxy.add_toxic("timeout timeout=100")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await close(a, b)
    run(main())


def test_a_reset_from_the_server_follows_the_data_it_sent() -> None:
    async def main() -> None:
        link = MemoryLink()
        async with Stack(device=link.a, linger=0, **A) as a, \
                Stack(device=link.b, linger=0, **B) as b:
            async def answer_then_reset(reader: Any, writer: Any) -> None:
                await reader.readexactly(1)
                writer.write(b"reply")
                await writer.drain()
                # The reply reached the proxy, which holds it 100 ms: then a reset.
                await asyncio.sleep(0.05)
                writer.transport.abort()

            await a.start_server(answer_then_reset, port=8000)
            proxy = await b.create_proxy(8080, A["addr"], 8000,
                                         toxics=["latency latency=100"])
            seen: list[object] = []
            lost = asyncio.get_running_loop().create_future()

            class Client(asyncio.Protocol):  # a StreamReader raises before its data
                def connection_made(self, transport: Any) -> None:
                    transport.write(b"?")

                def data_received(self, data: bytes) -> None:
                    seen.append(data)

                def connection_lost(self, exc: Exception | None) -> None:
                    seen.append(type(exc))
                    lost.set_result(None)

            await a.create_connection(Client, B["addr"], 8080)
            await asyncio.wait_for(lost, 5)
            assert seen == [b"reply", ConnectionResetError]
            proxy.close()
            assert not proxy.connections and b.stats()["proxy_connections"] == 1
    run(main())


def test_slicer_and_slow_close() -> None:
    async def main() -> None:
        a, b, _ = await pair("slicer average_size=100 size_variation=50 delay=10",
                             "slow_close delay=300")
        got, took = await exchange(a, DATA[:20000])
        assert got == DATA[:20000] and took >= 0.3
        await close(a, b)
    run(main())


def test_toxicity_draws_per_connection() -> None:
    async def main() -> None:
        a, b, proxy = await pair("latency latency=1 toxicity=0.5")
        for _ in range(20):
            assert (await exchange(a, b"x"))[0] == b"x"
        assert 3 <= proxy.toxics[0].applied <= 17
        await close(a, b)
    run(main())


def test_packet_faults_spare_the_upstream_leg() -> None:
    async def main() -> None:
        a, b, _ = await pair()
        b.faults(loss=0.05, seed=3)
        injector = b.fault_injector
        assert injector is not None
        hit: list[tuple[bytes, int] | None] = []
        injector.probe = lambda kind, d, packet, now: hit.append(peer_endpoint(packet, d))
        got, _ = await exchange(a)
        assert got == DATA
        # Only the clients' leg lost packets, none of the proxy's upstream connection.
        upstream = (bytes(map(int, A["addr"].split("."))), 8000)
        assert len(hit) > 10 and upstream not in hit
        await close(a, b)
    run(main())


@pytest.mark.parametrize(("text", "words"), [
    ("", "an empty toxic"),
    ("poison", "one of latency"),
    ("latency ms=5", "ms is not one of latency, jitter"),
    ("latency latency=x", "is not a number"),
    ("bandwidth", "needs rate= above 0"),
    ("latency stream=sideways", "downstream or upstream"),
    ("latency toxicity=2", "a probability"),
    ("latency latency=-1", ">= 0"),
])
def test_bad_toxics_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_toxic(text)


def test_a_toxic_reads_back_as_written() -> None:
    assert parse_toxic("latency latency=50 stream=upstream toxicity=0.5").describe() == (
        "latency latency=50 stream=upstream toxicity=0.5")
    assert parse_toxic("limit_data bytes=1234567").describe() == "limit_data bytes=1234567"
    assert Toxic("limit_data", attrs={"bytes": 10}).describe() == "limit_data bytes=10"


def test_the_markers_proxies_and_toxics_are_checked() -> None:
    from ustack.marker import options_of

    opts = options_of(pytest.mark.ustack(proxies=["8080=10.77.0.1:8000"],
                                         toxics="latency latency=5").mark)
    assert opts.proxies == ("8080=10.77.0.1:8000",) and opts.toxics == ("latency latency=5",)
    with pytest.raises(pytest.UsageError, match="is not ADDRESS:PORT"):
        options_of(pytest.mark.ustack(proxies=["8080=10.77.0.1"]).mark)
    with pytest.raises(pytest.UsageError, match="one of latency"):
        options_of(pytest.mark.ustack(toxics=["poison"]).mark)


def test_a_proxy_spec_reads_as_the_command_line_writes_it() -> None:
    from ustack.cli.serve import service_text
    from ustack.services.proxy import parse_proxy_spec, proxy_upstream

    name, port = parse_proxy_spec("proxy:8080=[fd77::1]:8000")
    assert (name, port) == ("proxy=[fd77::1]:8000", 8080)
    assert proxy_upstream(name) == ("fd77::1", 8000)
    assert service_text(name, port) == "proxy:8080=[fd77::1]:8000"
    for bad in ("proxy:8080", "proxy=1.2.3.4:5", "proxy:0=1.2.3.4:5", "proxy:80=fd77::1:80",
                "proxy:80=host:80"):
        with pytest.raises(ValueError):
            parse_proxy_spec(bad)
