#!/usr/bin/env python3
"""Bulk throughput of two ustack stacks in two processes joined by a stream link (IP
packets back to back over a kernel TCP connection on 127.0.0.1: `StreamLink`), through
the Python API, each way; beside it the same transfer between the same two processes over
a plain kernel TCP connection (Linux's TCP is the reference: the link's own carrier).

    .venv/bin/python tools/linkbench.py                    # 200 MB each way, MTU 16000
    .venv/bin/python tools/linkbench.py --mb 100 --mtu 16000 --repeat 3 --family 6

No root, no namespace: only 127.0.0.1. Checksums are verified on input unless
`--trust` (the stack's verify_checksums=False). Prints one line per run and direction:
MB/s for ustack and for the kernel, their ratio, and the client process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ustack.api import Stack
from ustack.devices import StreamLink

CHUNK = 1 << 20
PORT = 9000  # the service, on the stacks (or the kernel's listener)
SERVER = {"addr": "10.77.0.2", "addr6": "fd77::2", "link_local6": "fe80::2"}
CLIENT = {"addr": "10.77.0.1", "addr6": "fd77::1", "link_local6": "fe80::1"}
TIMEOUT = 120.0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def serve_transfers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """`u N`: read N bytes, answer `ok`; `d N`: send N bytes."""
    line = await reader.readline()
    kind, size = line.split()
    n = int(size)
    if kind == b"u":
        while n > 0:
            data = await reader.read(min(n, CHUNK))
            if not data:
                break
            n -= len(data)
        writer.write(b"ok\n")
    else:
        block = bytes(CHUNK)
        while n > 0:
            writer.write(block[:min(n, CHUNK)])
            n -= min(n, CHUNK)
            await writer.drain()
    await writer.drain()
    writer.close()


async def transfer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: str,
                   n: int) -> float:
    """One transfer of n bytes ('u' up, 'd' down); seconds from the request to its end."""
    start = time.perf_counter()
    writer.write(f"{kind} {n}\n".encode())
    if kind == "u":
        block = bytes(CHUNK)
        left = n
        while left > 0:
            writer.write(block[:min(left, CHUNK)])
            left -= min(left, CHUNK)
            await writer.drain()
        assert await reader.readline() == b"ok\n"
    else:
        got = 0
        while chunk := await reader.read(CHUNK):
            got += len(chunk)
        assert got == n, (got, n)
    took = time.perf_counter() - start
    writer.close()
    return took


async def server_main(args: argparse.Namespace) -> None:
    """The serving process: a stack over the link's listening end, or the kernel's."""
    if args.kernel:
        server = await asyncio.start_server(serve_transfers, "127.0.0.1", args.port)
        print(json.dumps({"ready": True}), flush=True)
        async with server:
            await asyncio.sleep(TIMEOUT)
        return
    link = StreamLink.listen("127.0.0.1", args.port, mtu=args.mtu)
    async with Stack(device=link, verify_checksums=not args.trust, **SERVER) as stack:
        await stack.start_server(serve_transfers, port=PORT)
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.wait_for(stack.wait_closed(), TIMEOUT)


async def client_main(args: argparse.Namespace) -> None:
    """The measuring process: each direction once; prints seconds and CPU."""
    n = args.mb * 1_000_000
    results = {}
    if args.kernel:
        for kind in ("u", "d"):
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            before = cpu()
            results[kind] = (await transfer(reader, writer, kind, n), cpu() - before)
    else:
        link = StreamLink.connect("127.0.0.1", args.port, mtu=args.mtu)
        async with Stack(device=link, verify_checksums=not args.trust, **CLIENT) as stack:
            await stack.ready()
            host = SERVER["addr6"] if args.family == 6 else SERVER["addr"]
            for kind in ("u", "d"):
                reader, writer = await stack.open_connection(host, PORT)
                before = cpu()
                results[kind] = (await transfer(reader, writer, kind, n), cpu() - before)
    print(json.dumps(results), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_pair(args: argparse.Namespace, kernel: bool) -> dict[str, tuple[float, float]]:
    port = free_port()
    common = [sys.executable, __file__, "--port", str(port), "--mtu", str(args.mtu),
              "--mb", str(args.mb), "--family", str(args.family)]
    common += ["--kernel"] * kernel + ["--trust"] * args.trust
    server = subprocess.Popen([*common, "--role", "server"], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        assert json.loads(server.stdout.readline()) == {"ready": True}
        done = subprocess.run([*common, "--role", "client"], capture_output=True,
                              timeout=TIMEOUT)
        if done.returncode != 0:
            raise SystemExit(f"client failed: {done.stderr.decode()[-2000:]}")
        return {k: tuple(v) for k, v in json.loads(done.stdout).items()}
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="MB each way (default 200)")
    parser.add_argument("--mtu", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--family", type=int, choices=(4, 6), default=6)
    parser.add_argument("--trust", action="store_true",
                        help="skip checksum verification on input (a trusted link)")
    parser.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kernel", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner((server_main if args.role == "server" else client_main)(args))
        return
    print(f"# {args.mb} MB each way, MTU {args.mtu}, IPv{args.family}, checksums "
          f"{'trusted' if args.trust else 'verified'}; {os.cpu_count()} CPUs")
    print("run direction  ustack_MB/s  kernel_MB/s  ratio  ustack_client_cpu_s")
    for run in range(1, args.repeat + 1):
        ours = run_pair(args, kernel=False)
        theirs = run_pair(args, kernel=True)
        for kind, name in (("u", "up"), ("d", "down")):
            mbps = args.mb / ours[kind][0]
            kmbps = args.mb / theirs[kind][0]
            print(f"{run:3d} {name:9s} {mbps:11.1f}  {kmbps:11.1f}  {mbps / kmbps:5.2f}  "
                  f"{ours[kind][1]:8.2f}")


if __name__ == "__main__":
    main()
