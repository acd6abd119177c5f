"""The Transport's asyncio contract, without a TUN: two Stacks joined by a socketpair.

Each stack's device is one end of an AF_UNIX datagram socketpair (one datagram = one IP
packet), so the real Driver runs with `loop.add_reader` on both asyncio's loop and uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ustack.api import Stack
from ustack.tcp.config import TcpConfig

SERVER_ADDR = "10.0.0.1"
CLIENT_ADDR = "10.0.0.2"
PORT = 7000


class PairDevice:
    """One end of a socketpair, with the interface Stack needs of a TunDevice."""

    mtu = 1500

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.counters: Counter[str] = Counter()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batch(self) -> list[bytes]:
        packets = []
        for _ in range(256):
            try:
                packets.append(self.sock.recv(65536))
            except (BlockingIOError, InterruptedError):
                break
        return packets

    def write(self, packet: bytes) -> bool:
        try:
            self.sock.send(packet)
        except (BlockingIOError, ConnectionRefusedError):
            return False  # a full link drops, as a TUN queue does
        return True

    def close(self) -> None:
        self.sock.close()


class PairStack(Stack):
    def __init__(self, device: PairDevice, addr: str, **kw: Any) -> None:
        super().__init__(addr=addr, linger=0.5, **kw)
        self._pair_device = device

    def _open_device(self) -> PairDevice:  # type: ignore[override]
        return self._pair_device


def stacks() -> tuple[PairStack, PairStack]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return PairStack(PairDevice(a), SERVER_ADDR), PairStack(PairDevice(b), CLIENT_ADDR)


def loop_factories() -> list[Any]:
    params = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        params.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("no uvloop")))
    else:
        params.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return params


@pytest.fixture(params=loop_factories())
def run(request) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=request.param) as r:
            return r.run(asyncio.wait_for(coro, 20))
    return runner


class Recorder(asyncio.Protocol):
    """Records every protocol callback in order; closes on EOF unless told not to."""

    def __init__(self, keep_open: bool = False) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.lost_exc: list[BaseException | None] = []
        self.transport: asyncio.Transport | None = None
        self.keep_open = keep_open
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost_exc.append(exc)
        if not self.done.done():
            self.done.set_result(None)


def recording_factory() -> tuple[list[Recorder], Callable[[], Recorder]]:
    """A protocol factory for a server, and the Recorders it made (one per connection)."""
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    return made, factory


def test_call_order_clean_close(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            servers, factory = recording_factory()

            await server_stack.create_server(factory, SERVER_ADDR, PORT)
            transport, client = await client_stack.create_connection(
                Recorder, SERVER_ADDR, PORT)
            assert client.events == ["made"]  # connection_made ran before we got it back
            payload = bytes(range(256)) * 1000
            transport.write(payload)
            transport.write_eof()
            await asyncio.wait_for(servers[0].done, 10)
            server = servers[0]
            assert server.events == ["made", "data", "eof", "lost"]
            assert bytes(server.data) == payload
            assert server.lost_exc == [None]
            await asyncio.wait_for(client.done, 10)
            assert client.events == ["made", "eof", "lost"]
            assert client.lost_exc == [None]

    run(main())


def test_write_after_close_is_ignored(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            servers, factory = recording_factory()

            await server_stack.create_server(factory, SERVER_ADDR, PORT)
            transport, client = await client_stack.create_connection(
                Recorder, SERVER_ADDR, PORT)
            transport.write(b"before")
            transport.close()
            assert transport.is_closing()
            transport.write(b"after")  # asyncio: ignored, no exception
            transport.writelines([b"more"])
            await asyncio.wait_for(servers[0].done, 10)
            assert bytes(servers[0].data) == b"before"
            assert servers[0].events == ["made", "data", "eof", "lost"]
            await asyncio.wait_for(client.done, 10)
            assert client.events == ["made", "lost"]
            assert client.lost_exc == [None]

    run(main())


def test_abort_loses_once_and_resets_peer(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            servers, factory = recording_factory()

            await server_stack.create_server(factory, SERVER_ADDR, PORT)
            transport, client = await client_stack.create_connection(
                Recorder, SERVER_ADDR, PORT)
            transport.write(b"x")
            for _ in range(200):
                if servers and servers[0].data:
                    break
                await asyncio.sleep(0.01)
            transport.abort()
            transport.abort()
            transport.close()
            await asyncio.wait_for(client.done, 10)
            await asyncio.sleep(0.05)
            assert client.events == ["made", "lost"]
            assert client.lost_exc == [None]
            await asyncio.wait_for(servers[0].done, 10)
            assert isinstance(servers[0].lost_exc[0], ConnectionResetError)

    run(main())


def test_linger_zero_close_sends_rst(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            servers, factory = recording_factory()

            await server_stack.create_server(factory, SERVER_ADDR, PORT)
            transport, client = await client_stack.create_connection(
                Recorder, SERVER_ADDR, PORT)
            for _ in range(200):
                if servers:
                    break
                await asyncio.sleep(0.01)
            transport.set_linger_zero()
            transport.close()
            await asyncio.wait_for(client.done, 10)
            assert client.lost_exc == [None]
            await asyncio.wait_for(servers[0].done, 10)
            assert isinstance(servers[0].lost_exc[0], ConnectionResetError)

    run(main())


def test_refused_and_addr_in_use(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            with pytest.raises(ConnectionRefusedError):
                await client_stack.create_connection(Recorder, SERVER_ADDR, PORT)
            await server_stack.create_server(Recorder, SERVER_ADDR, PORT)
            with pytest.raises(OSError) as info:
                await server_stack.create_server(Recorder, SERVER_ADDR, PORT)
            assert info.value.errno == errno.EADDRINUSE

    run(main())


def test_per_connection_options(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            await server_stack.create_server(Recorder, SERVER_ADDR, PORT,
                                             tcp=TcpConfig(rcv_buf=100_000))
            transport, _ = await client_stack.create_connection(
                Recorder, SERVER_ADDR, PORT, tcp=TcpConfig(rcv_buf=50_000))
            info = transport.get_extra_info("tcp_info")
            assert info["rcv_buf"] == 50_000
            assert info["nodelay"] is True  # asyncio's default for TCP transports
            transport.set_nodelay(False)
            transport.set_keepalive(True, idle=5, interval=2, count=3)
            transport.set_receive_buffer(80_000)
            info = transport.get_extra_info("tcp_info")
            assert info["nodelay"] is False
            assert (info["keepalive"], info["keepalive_idle"], info["keepalive_interval"],
                    info["keepalive_count"]) == (True, 5, 2, 3)
            assert info["rcv_buf"] == 80_000
            with pytest.raises(ValueError):
                transport.set_keepalive(True, count=0)
            transport.close()

    run(main())


def test_paused_reader_gets_every_byte_after_the_connection_closes(run):
    """Reading paused, the peer sends and closes, we close our side (LAST-ACK -> CLOSED):
    the buffered bytes and the EOF still reach the protocol, before `connection_lost`,
    once reading resumes. (As a kernel socket stays readable after its TCB is done; the
    cause of `ustack connect` ending its output early when stdout was slow.)"""
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            payload = bytes(range(256)) * 80

            class Sender(Recorder):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    super().connection_made(transport)
                    transport.write(payload)  # type: ignore[attr-defined]
                    transport.write_eof()  # type: ignore[attr-defined]

            servers: list[Recorder] = []

            def factory() -> Recorder:
                servers.append(Sender())
                return servers[-1]

            await server_stack.create_server(factory, SERVER_ADDR, PORT)
            transport, client = await client_stack.create_connection(
                lambda: Recorder(keep_open=True), SERVER_ADDR, PORT)
            transport.pause_reading()
            tcb = transport._tcb  # type: ignore[attr-defined]
            for _ in range(500):
                if tcb.fin_received:
                    break
                await asyncio.sleep(0.01)
            assert tcb.fin_received and tcb.readable == len(payload)
            transport.write_eof()  # CLOSE-WAIT -> LAST-ACK -> CLOSED once acknowledged
            await asyncio.wait_for(servers[0].done, 10)
            for _ in range(500):
                if tcb.state.name == "CLOSED":
                    break
                await asyncio.sleep(0.01)
            assert tcb.state.name == "CLOSED"
            await asyncio.sleep(0.05)
            assert client.events == ["made"]  # nothing delivered, nothing lost while paused
            transport.resume_reading()
            await asyncio.wait_for(client.done, 10)
            assert client.events == ["made", "data", "eof", "lost"]
            assert bytes(client.data) == payload
            assert client.lost_exc == [None]

    run(main())


def test_ladder_times_have_microseconds_under_either_loop(run):
    """The core's clock is the monotonic clock, not the loop's (uvloop caches its time in
    whole milliseconds): a handshake's rows, < 1 ms apart here, show distinct times."""
    import io
    import re

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        trace = io.StringIO()
        server_stack = PairStack(PairDevice(a), SERVER_ADDR, trace=trace)
        client_stack = PairStack(PairDevice(b), CLIENT_ADDR)
        async with server_stack, client_stack:
            await server_stack.create_server(Recorder, SERVER_ADDR, PORT)
            transport, _ = await client_stack.create_connection(Recorder, SERVER_ADDR, PORT)
            transport.close()
            await asyncio.sleep(0.05)
        times = [float(t) for t in re.findall(r"^#\d+\s+(\d+\.\d{6})", trace.getvalue(), re.M)]
        assert len(times) >= 3, trace.getvalue()
        assert any(t % 0.001 > 1e-7 for t in times[1:]), times  # not all whole milliseconds

    run(main())


def test_closed_or_unstarted_stack_says_so(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        with pytest.raises(RuntimeError, match="not started"):
            await client_stack.open_connection(SERVER_ADDR, PORT)
        async with server_stack, client_stack:
            pass
        for call in (lambda: server_stack.start_server(lambda r, w: None, port=PORT),
                     lambda: client_stack.open_connection(SERVER_ADDR, PORT),
                     lambda: client_stack.create_connection(Recorder, SERVER_ADDR, PORT)):
            with pytest.raises(RuntimeError, match="closed"):
                await asyncio.wait_for(call(), 2)
        with pytest.raises(RuntimeError, match="already run"):
            async with server_stack:
                pass

    run(main())


@pytest.mark.parametrize(("port", "error", "words"), [
    (7.5, TypeError, "port must be an int"), (None, ValueError, "a port is required"),
    ([7], TypeError, "port must be an int"), (70000, ValueError, "out of range"),
    (-1, ValueError, "out of range"), (True, TypeError, "port must be an int"),
])
def test_bad_server_ports_fail_at_the_call(run, port, error, words):
    async def main() -> None:
        server_stack, _ = stacks()
        async with server_stack:
            with pytest.raises(error, match=words):
                await server_stack.create_server(Recorder, None, port)

    run(main())


@pytest.mark.parametrize(("host", "port", "error", "words"), [
    ("localhost", PORT, ValueError, "does not resolve host names"),
    ("10.0.0.300", PORT, ValueError, "not an IP address"),
    (None, PORT, TypeError, "host must be a str"), (SERVER_ADDR, 0, ValueError, "out of range"),
    (SERVER_ADDR, 7.5, TypeError, "port must be an int"),
])
def test_bad_peers_fail_at_the_call(run, host, port, error, words):
    async def main() -> None:
        _, client_stack = stacks()
        async with client_stack:
            with pytest.raises(error, match=words):
                await client_stack.open_connection(host, port)

    run(main())


def test_string_port_and_port_zero_as_asyncio_takes_them(run):
    async def main() -> None:
        server_stack, client_stack = stacks()
        async with server_stack, client_stack:
            server = await server_stack.create_server(Recorder, None, 0)
            # As asyncio's for host=None: a socket per family, each its wildcard.
            (addr, port), (addr6, port6, _, _) = [s.getsockname() for s in server.sockets]
            assert (addr, addr6) == ("0.0.0.0", "::") and port == port6
            assert 49152 <= port <= 65535
            transport, _ = await client_stack.create_connection(Recorder, SERVER_ADDR, str(port))
            assert transport.get_extra_info("peername") == (SERVER_ADDR, port)
            transport.close()
            server.close()
            assert server.sockets == ()

    run(main())


@pytest.mark.parametrize("addr", ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1"])
def test_a_stack_needs_a_unicast_address_of_its_own(addr):
    with pytest.raises(ValueError, match="unicast address of its own"):
        Stack(addr=addr)


def test_faults_appear_in_the_ladder_and_beside_the_capture(run, tmp_path):
    import io

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        trace = io.StringIO()
        pcap = tmp_path / "c.pcap"
        server_stack = PairStack(PairDevice(a), SERVER_ADDR, trace=trace, pcap=pcap)
        client_stack = PairStack(PairDevice(b), CLIENT_ADDR)
        server_stack.faults(loss=0.1, seed=5)
        async with server_stack, client_stack:
            servers, factory = recording_factory()

            await server_stack.create_server(factory, SERVER_ADDR, PORT)
            transport, _ = await client_stack.create_connection(Recorder, SERVER_ADDR, PORT)
            transport.write(bytes(30_000))
            transport.write_eof()
            await asyncio.wait_for(servers[0].done, 15)
            dropped = server_stack.stats()["fault_dropped"]
        assert dropped > 0
        assert trace.getvalue().count("fault: dropped") == dropped
        lines = (tmp_path / "c.pcap.faults").read_text().splitlines()
        assert len(lines) == dropped
        assert all(" dropped " in line and f"{SERVER_ADDR}:{PORT}" in line for line in lines)

    run(main())
