"""An echo server written with asyncio streams (`stack.start_server`), served by ustack.

    sudo python examples/echo_streams.py [--dev ustack0 --addr 10.77.0.2 --port 7]
    nc 10.77.0.2 7

Prints a ready line, then echoes every connection until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import ustack


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ustack.Stack(dev=args.dev, addr=args.addr) as stack:
        server = await stack.start_server(echo, args.addr, args.port)
        async with server:
            print(f"ready: echo on {args.addr}:{args.port} ({args.loop})", flush=True)
            await stop.wait()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default="ustack0")
    parser.add_argument("--addr", default="10.77.0.2")
    parser.add_argument("--port", type=int, default=7)
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
