"""Run inside a namespace: ustack's errors, flow control and per-connection options
against the kernel's sockets. Prints one JSON line of observations; the test asserts.

    python api_errors_check.py --loop asyncio|uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import struct
import time

import ustack
from ustack.tcp.config import TcpConfig

KERNEL = "10.77.0.1"
USTACK = "10.77.0.2"
SILENT = "10.77.0.99"  # in the TUN's subnet, not local to the kernel: SYNs are dropped
SYN_RETRIES = 2  # 1 + 2 + 4 s
CHUNK = 64 * 1024
TOTAL = 6 * 1024 * 1024


async def expect(coro, timeout: float) -> tuple[str, float]:
    """Await `coro`; return the exception's type name (or "ok") and seconds taken."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(coro, timeout)
    except Exception as exc:
        return type(exc).__name__, time.monotonic() - start
    return "ok", time.monotonic() - start


class Writer(asyncio.Protocol):
    """Writes TOTAL bytes as fast as flow control allows; records pause/resume."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.max_buffer = 0
        self.resumed = asyncio.Event()
        self.lost = loop.create_future()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.events.append("pause")
        self.paused = True
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.paused = False
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def send_all(self) -> None:
        chunk = bytes(CHUNK)
        sent = 0
        while sent < TOTAL:
            while self.paused:
                await self.resumed.wait()
            self.transport.write(chunk)
            sent += len(chunk)
            self.max_buffer = max(self.max_buffer, self.transport.get_write_buffer_size())
        self.transport.write_eof()


async def backpressure(stack: ustack.Stack, port: int) -> dict:
    received = 0
    done = asyncio.get_running_loop().create_future()

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        start = time.monotonic()
        while data := await reader.read(8192):
            received += len(data)
            if time.monotonic() - start < 1.5:
                await asyncio.sleep(0.01)  # slow for a while, then fast
        writer.close()
        done.set_result(None)

    kernel = await asyncio.start_server(slow_reader, KERNEL, port)
    for sock in kernel.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    transport, writer = await stack.create_connection(Writer, KERNEL, port)
    await asyncio.wait_for(writer.send_all(), 60)
    await asyncio.wait_for(done, 60)
    transport.close()
    kernel.close()
    high = transport.get_write_buffer_limits()[1]
    return {"events": writer.events[:4], "pauses": writer.events.count("pause"),
            "resumes": writer.events.count("resume"), "max_buffer": writer.max_buffer,
            "high": high, "received": received, "total": TOTAL}


async def reset_by_peer(stack: ustack.Stack, port: int) -> str:
    async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    kernel = await asyncio.start_server(rst, KERNEL, port)
    reader, writer = await stack.open_connection(KERNEL, port)
    name, _ = await expect(reader.read(), 10)
    writer.close()
    kernel.close()
    return name


async def keepalive(stack: ustack.Stack, port: int) -> dict:
    peers: list[asyncio.StreamWriter] = []
    ended = asyncio.Event()

    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await reader.read()  # never answers; ends when we close it below
        ended.set()

    kernel = await asyncio.start_server(idle, KERNEL, port)
    transport, writer = await stack.create_connection(Writer, KERNEL, port)
    transport.set_nodelay(False)
    nodelay = transport.get_extra_info("tcp_info")["nodelay"]
    transport.set_keepalive(True, idle=1, interval=1, count=2)
    stack.faults(loss=1.0)  # the peer vanishes: nothing crosses the link any more
    start = time.monotonic()
    try:
        exc = await asyncio.wait_for(writer.lost, 15)
    finally:
        stack.faults()
    kernel.close()
    for peer in peers:
        peer.transport.abort()
    await asyncio.wait_for(ended.wait(), 5)
    return {"nodelay_after_set": nodelay, "lost": type(exc).__name__,
            "seconds": time.monotonic() - start}


async def main() -> dict:
    result: dict = {}
    async with ustack.Stack(dev="ustack0", addr=USTACK,
                            tcp=TcpConfig(syn_retries=SYN_RETRIES)) as stack:
        result["refused"] = (await expect(stack.open_connection(KERNEL, 5999), 10))[0]
        name, took = await expect(stack.open_connection(SILENT, 80), 30)
        result["silent"] = {"error": name, "seconds": took}
        # Per-connection settings override the stack's: one retry is 1 + 2 s.
        name, took = await expect(
            stack.open_connection(SILENT, 81, tcp=TcpConfig(syn_retries=1)), 30)
        result["silent_per_connection"] = {"error": name, "seconds": took}
        server = await stack.start_server(lambda r, w: w.close(), USTACK, 7)
        try:
            await stack.start_server(lambda r, w: w.close(), USTACK, 7)
            result["addrinuse"] = "no error"
        except OSError as exc:
            result["addrinuse"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        server.close()
        result["reset"] = await reset_by_peer(stack, 6001)
        result["backpressure"] = await backpressure(stack, 6002)
        result["keepalive"] = await keepalive(stack, 6003)
    return result


def run() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out = runner.run(main())
    else:
        out = asyncio.run(main())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    run()
