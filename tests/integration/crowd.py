"""Run inside a namespace: a crowd of clients, and the echo server they meet.

    crowd.py serve --stack ustack|kernel --addr A --port P --backlog B --slow S
        an echo server (asyncio streams) whose handler starts with S seconds of blocking
        work; the same handler on ustack's API or on the kernel's sockets. It prints
        "ready" when listening and, on SIGTERM, one JSON line with its counters.
        With --service http: ustack's HTTP service (GET /bytes/N) instead, on either.
    crowd.py clients --host H --port P --clients N --messages M
        N asyncio clients connect at once; each sends M messages, reading each echo
        back. One JSON line: how many completed, how many saw a reset, other errors.
    crowd.py write-then-read --host H --port P --size BYTES --runs R
        a blocking client that sends BYTES, shuts down its write side and only then
        reads the echo, R times in a row. One JSON line per run.
    crowd.py downloads --host H --port P --size BYTES --count N
        N downloads of GET /bytes/BYTES started together; one JSON line: whether each
        was whole and right, and how many bytes each had when the first one finished.

Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import socket
import sys
import time

from ustack.services import HttpProtocol


def out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- serve --------------------------------------------------------------------------------


def make_handler(slow: float):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        time.sleep(slow)  # a handler that starts slowly: synchronous set-up blocks its loop
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


def kernel_listen_overflows() -> int:
    """TcpExt ListenOverflows of this namespace (what `nstat` shows)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"])
    return -1


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    handle = make_handler(args.slow)
    if args.stack == "ustack":
        import ustack

        async with ustack.Stack(dev="ustack0", addr=args.addr) as stack:
            if args.service == "http":
                await stack.create_server(HttpProtocol, port=args.port, backlog=args.backlog)
            else:
                await stack.start_server(handle, port=args.port, backlog=args.backlog)
            out("ready")
            await stop.wait()
            stats = stack.stats()
        out({"listen_overflows": stats.get("drop_tcp_listen_overflow", 0),
             "rst_out": stats.get("rst_out", 0), "stats": stats})
    else:
        before = kernel_listen_overflows()
        if args.service == "http":
            server = await loop.create_server(HttpProtocol, args.addr, args.port,
                                              backlog=args.backlog)
        else:
            server = await asyncio.start_server(handle, args.addr, args.port,
                                                backlog=args.backlog)
        out("ready")
        await stop.wait()
        server.close()
        out({"listen_overflows": kernel_listen_overflows() - before})


# --- clients ------------------------------------------------------------------------------


async def one_client(host: str, port: int, messages: int, size: int,
                     timeout: float) -> str | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionResetError:
        return "reset"
    except (OSError, TimeoutError) as exc:
        return f"connect: {exc!r}"
    try:
        for i in range(messages):
            message = i.to_bytes(4, "big") + os.urandom(size - 4)
            writer.write(message)
            got = await asyncio.wait_for(reader.readexactly(size), timeout)
            if got != message:
                return f"message {i}: echo differs"
        writer.write_eof()
        rest = await asyncio.wait_for(reader.read(), timeout)
        if rest:
            return f"{len(rest)} bytes after the last echo"
    except ConnectionResetError:
        return "reset"
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"transfer: {exc!r}"
    finally:
        writer.close()
    return None


async def clients(args: argparse.Namespace) -> dict:
    start = time.monotonic()
    results = await asyncio.gather(*(
        one_client(args.host, args.port, args.messages, args.size, args.timeout)
        for _ in range(args.clients)))
    errors = [r for r in results if r is not None]
    return {"ok": results.count(None), "resets": results.count("reset"),
            "errors": errors[:20], "seconds": round(time.monotonic() - start, 2)}


# --- write-then-read ----------------------------------------------------------------------


def write_then_read(host: str, port: int, size: int, timeout: float) -> dict:
    data = os.urandom(size)
    start = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    got = bytearray()
    try:
        sock.sendall(data)  # blocks until everything is in the kernel's send buffer
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(1 << 20):
            got += chunk
    except OSError as exc:
        return {"ok": False, "error": repr(exc), "received": len(got),
                "seconds": round(time.monotonic() - start, 2)}
    finally:
        sock.close()
    same = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    return {"ok": same, "received": len(got), "seconds": round(time.monotonic() - start, 2)}


async def _download(host: str, port: int, size: int, got: list[int], i: int,
                    first_done: asyncio.Future, timeout: float) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.write(f"GET /bytes/{size} HTTP/1.0\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    block = bytes(range(256)) * 256  # i % 256, 64 KiB a period
    ok = head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    while chunk := await asyncio.wait_for(reader.read(1 << 16), timeout):
        off = got[i] % len(block)
        want = (block[off:] + block)[:len(chunk)] if len(chunk) <= len(block) else None
        ok = ok and (want is None or chunk == want)
        got[i] += len(chunk)
    writer.close()
    if not first_done.done():
        first_done.set_result(list(got))
    return ok and got[i] == size


async def downloads(args: argparse.Namespace) -> dict:
    got = [0] * args.count
    first_done: asyncio.Future = asyncio.get_running_loop().create_future()
    oks = await asyncio.gather(*(
        _download(args.host, args.port, args.size, got, i, first_done, args.timeout)
        for i in range(args.count)))
    return {"ok": oks, "at_first_done": first_done.result()}


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--stack", choices=("ustack", "kernel"), required=True)
    sp.add_argument("--addr", required=True)
    sp.add_argument("--port", type=int, default=7)
    sp.add_argument("--backlog", type=int, default=16)
    sp.add_argument("--slow", type=float, default=0.0)
    sp.add_argument("--service", choices=("echo", "http"), default="echo")
    sp = sub.add_parser("clients")
    sp.add_argument("--host", required=True)
    sp.add_argument("--port", type=int, default=7)
    sp.add_argument("--clients", type=int, default=1000)
    sp.add_argument("--messages", type=int, default=10)
    sp.add_argument("--size", type=int, default=64)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp = sub.add_parser("write-then-read")
    sp.add_argument("--host", required=True)
    sp.add_argument("--port", type=int, default=7)
    sp.add_argument("--size", type=int, required=True)
    sp.add_argument("--runs", type=int, default=1)
    sp.add_argument("--timeout", type=float, default=20.0)
    sp = sub.add_parser("downloads")
    sp.add_argument("--host", required=True)
    sp.add_argument("--port", type=int, default=80)
    sp.add_argument("--size", type=int, required=True)
    sp.add_argument("--count", type=int, default=2)
    sp.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    raise_fd_limit()
    if args.cmd == "serve":
        asyncio.run(serve(args))
    elif args.cmd == "clients":
        out(asyncio.run(clients(args)))
    elif args.cmd == "downloads":
        out(asyncio.run(downloads(args)))
    else:
        for _ in range(args.runs):
            out(write_then_read(args.host, args.port, args.size, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
