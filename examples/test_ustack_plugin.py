"""Example tests for the `ustack_host` pytest plugin (`ustack.testing`).

Each test gets a private network namespace with ustack at `ustack_host.addr`; the
kernel's sockets the test opens live in that namespace. Run them with

    python -m pytest -p ustack.testing examples/test_ustack_plugin.py

(`-p` is not needed once ustack is installed: its `pytest11` entry point loads the plugin).
"""

import asyncio
import socket
import struct
import urllib.request

import pytest


def echo(addr: str, data: bytes) -> bytes:
    """`data` through ustack's echo service at `addr`, with a blocking kernel socket."""
    with socket.create_connection((addr, 7), timeout=5) as s:
        assert s.getpeername()[0] == addr
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(100)
            assert chunk, "echo closed early"
            got += chunk
    return got


def test_blocking_socket_echo(ustack_host):
    assert echo(ustack_host.addr, b"hello, ustack") == b"hello, ustack"


def test_the_same_over_ipv6(ustack_host):
    # ustack_host.addr6 is None where the namespace has IPv6 off: skip, as a test would.
    if ustack_host.addr6 is None:
        pytest.skip("no IPv6 in this namespace")
    assert echo(ustack_host.addr6, b"hello over IPv6") == b"hello over IPv6"
    with urllib.request.urlopen(f"http://[{ustack_host.addr6}]/", timeout=10) as response:
        assert response.read() == b"hello from ustack\n"


def test_urllib_http(ustack_host):
    url = f"http://{ustack_host.addr}/bytes/100000"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body = response.read()
    assert len(body) == 100000
    assert body == bytes(i % 256 for i in range(100000))


@pytest.mark.ustack(loss=0.05, reorder=0.02, seed=3)
def test_asyncio_client_under_loss(ustack_host):
    payload = bytes((i * 7) % 251 for i in range(200_000))

    async def client() -> bytes:
        reader, writer = await asyncio.open_connection(ustack_host.addr, 7)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = await reader.read(-1)  # until the echo server's FIN
        await sender
        writer.close()
        await writer.wait_closed()
        return received

    received = asyncio.run(asyncio.wait_for(client(), 60))
    assert received == payload
    assert ustack_host.stats()["fault_dropped"] > 0  # the faults really were on


def test_abort_counts_reset(ustack_host):
    s = socket.create_connection((ustack_host.addr, 7), timeout=5)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # SO_LINGER 0: the kernel sends a RST instead of a FIN
    for _ in range(200):  # bounded: up to 2 s
        if ustack_host.stats().get("tcp_rst_in", 0) > 0:
            break
        ustack_host.run(asyncio.sleep(0.01))
    assert ustack_host.stats()["tcp_rst_in"] > 0


@pytest.mark.ustack(services=["discard:9"])
def test_own_handler_on_the_stack(ustack_host):
    """A test may serve its own handler on the stack with `run(coro)`."""

    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()

    ustack_host.run(ustack_host.stack.start_server(handle, port=8000))
    with socket.create_connection((ustack_host.addr, 8000), timeout=5) as s:
        s.sendall(b"shout\n")
        assert s.makefile("rb").readline() == b"SHOUT\n"


@pytest.mark.ustack(rules=["drop flags=SA count=1 port=7"], rate_bps=20e6, queue=100)
def test_a_dropped_syn_ack_and_a_bottleneck(ustack_host):
    # The first SYN-ACK is lost: the kernel's SYN is retransmitted (after 1 s), then the
    # connection works as before, through a 20 mbit/s link with a 100-packet queue.
    assert echo(ustack_host.addr, b"x" * 100_000) == b"x" * 100_000
    assert ustack_host.stats()["rule_fired"] == 1
    assert ustack_host.stats()["shaper_delayed"] > 0
