"""A tiny HTTP/1.1 server written as an `asyncio.Protocol`, served by ustack.

    sudo python examples/http_protocol.py [--dev ustack0 --addr 10.77.0.2 --port 80]
    curl http://10.77.0.2/

Answers every GET with a short text page (keep-alive supported); runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import ustack

MAX_HEADER = 16 * 1024


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[:end + 4]
            self.respond(head)
            if self.transport.is_closing():
                return
        if len(self.buffer) > MAX_HEADER:
            self.reply("431 Request Header Fields Too Large", b"too large\n", close=True)

    def respond(self, head: str) -> None:
        lines = head.split("\r\n")
        method, path, version = [*lines[0].split(" "), "", ""][:3]
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        close = (headers.get("connection", "").lower() == "close"
                 or version != "HTTP/1.1")
        if method not in ("GET", "HEAD"):
            self.reply("405 Method Not Allowed", b"only GET\n", close=True)
            return
        body = f"Hello from ustack: {method} {path}\n".encode()
        self.reply("200 OK", body, close=close, head_only=method == "HEAD")

    def reply(self, status: str, body: bytes, *, close: bool, head_only: bool = False) -> None:
        header = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
                  f"Content-Length: {len(body)}\r\n"
                  f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
        self.transport.write(header.encode() + (b"" if head_only else body))
        if close:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ustack.Stack(dev=args.dev, addr=args.addr) as stack:
        server = await stack.create_server(HttpProtocol, args.addr, args.port)
        async with server:
            print(f"ready: http on {args.addr}:{args.port} ({args.loop})", flush=True)
            await stop.wait()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default="ustack0")
    parser.add_argument("--addr", default="10.77.0.2")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return parser.parse_args()


def run(coro_main, args: argparse.Namespace) -> None:
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro_main(args))
    else:
        asyncio.run(coro_main(args))


if __name__ == "__main__":
    run(main, parse_args())
