"""An aiohttp `web.Application`, unchanged, served by ustack instead of a kernel socket.

    sudo python examples/aiohttp_app.py [--dev ustack0 --addr 10.77.0.2 --port 8080]
    curl http://10.77.0.2:8080/hello/world

`AppRunner.server` is aiohttp's low-level `web.Server`, which is a protocol factory:
`stack.create_server(runner.server, ...)` serves it (no aiohttp "site" is needed).
Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

import ustack


async def hello(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "world")
    return web.Response(text=f"Hello, {name}, from aiohttp on ustack\n")


async def info(request: web.Request) -> web.Response:
    tcp_info = request.transport.get_extra_info("tcp_info") if request.transport else None
    return web.json_response({"peer": request.remote, "tcp_info": tcp_info})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/hello/{name}", hello)
    app.router.add_get("/info", info)
    return app


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app())
    await runner.setup()
    try:
        async with ustack.Stack(dev=args.dev, addr=args.addr) as stack:
            assert runner.server is not None
            async with await stack.create_server(runner.server, args.addr, args.port):
                print(f"ready: aiohttp on {args.addr}:{args.port} ({args.loop})", flush=True)
                await stop.wait()
                await runner.shutdown()
    finally:
        await runner.cleanup()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", default="ustack0")
    parser.add_argument("--addr", default="10.77.0.2")
    parser.add_argument("--port", type=int, default=8080)
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
