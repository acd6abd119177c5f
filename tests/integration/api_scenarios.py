"""API scenarios run inside a private namespace
(`unshare -n python -m tests.integration.api_scenarios`).

One process, one event loop: ustack's `Stack` on a TUN it creates, and the kernel's
own sockets on the kernel side of that TUN. Prints one JSON line of results.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import ustack

KERNEL = "10.77.0.1"
US = "10.77.0.2"
SIZE = 1_000_000


async def ustack_client_to_kernel_server(stack: ustack.Stack) -> dict[str, object]:
    """open_connection from ustack to a kernel asyncio server; data both ways, both FINs."""
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    got_by_kernel = hashlib.sha256()
    kernel_done = asyncio.Event()

    async def kernel_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(down)
        await writer.drain()
        writer.write_eof()
        while chunk := await reader.read(65536):
            got_by_kernel.update(chunk)
        kernel_done.set()
        writer.close()

    server = await asyncio.start_server(kernel_handler, KERNEL, 9100)
    reader, writer = await stack.open_connection(KERNEL, 9100)
    writer.write(up)
    await writer.drain()
    writer.write_eof()
    received = await reader.read()  # until the kernel's FIN
    # The two directions run at once: the download may end while the upload is still in
    # flight (then the kernel's FIN finds us in FIN-WAIT-1 and we pass through CLOSING).
    # Judge the upload when the kernel has read to our FIN, and the state once that FIN
    # is acknowledged.
    await kernel_done.wait()
    for _ in range(200):  # bounded: 2 s
        info = writer.get_extra_info("tcp_info")
        if info["state"] not in ("FIN_WAIT_1", "CLOSING"):
            break
        await asyncio.sleep(0.01)
    peer = writer.get_extra_info("peername")
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return {
        "up_ok": got_by_kernel.hexdigest() == hashlib.sha256(up).hexdigest(),
        "down_ok": received == down,
        "peername": list(peer),
        "state_after_eof": info["state"],
    }


async def kernel_client_to_ustack_server(stack: ustack.Stack) -> dict[str, object]:
    """start_server on ustack; a kernel asyncio client echoes through it."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    server = await stack.start_server(echo, US, 7007)
    data = os.urandom(SIZE)
    reader, writer = await asyncio.open_connection(US, 7007)

    async def send() -> None:
        writer.write(data)
        await writer.drain()
        writer.write_eof()

    _, echoed = await asyncio.gather(send(), reader.read())
    writer.close()
    server.close()
    await server.wait_closed()
    return {"echo_ok": echoed == data}


async def refused(stack: ustack.Stack) -> dict[str, object]:
    try:
        await stack.open_connection(KERNEL, 9)  # nothing listens there
    except ConnectionRefusedError:
        return {"refused": True}
    return {"refused": False}


async def slow_reader_backpressure(stack: ustack.Stack) -> dict[str, object]:
    """A ustack writer facing a kernel reader that does not read: drain() must block."""
    ready = asyncio.Event()
    release = asyncio.Event()
    total = hashlib.sha256()

    async def kernel_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ready.set()
        await release.wait()
        while chunk := await reader.read(65536):
            total.update(chunk)
        writer.close()

    server = await asyncio.start_server(kernel_handler, KERNEL, 9101)
    reader, writer = await stack.open_connection(KERNEL, 9101)
    await ready.wait()
    blob = os.urandom(64 * 1024)
    sent = hashlib.sha256()
    blocked = False
    for _ in range(200):  # 12.8 MB if nothing ever blocked
        writer.write(blob)
        sent.update(blob)
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            blocked = True
            break
    buffered = writer.transport.get_write_buffer_size()
    release.set()
    await writer.drain()
    writer.write_eof()
    await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return {"blocked": blocked, "buffer_bounded": buffered < 1_000_000,
            "intact": total.hexdigest() == sent.hexdigest()}


async def main() -> None:
    results: dict[str, object] = {}
    async with ustack.Stack(dev="ustack0", addr=US, kernel_addr=f"{KERNEL}/24") as stack:
        for scenario in (ustack_client_to_kernel_server, kernel_client_to_ustack_server,
                         refused, slow_reader_backpressure):
            results.update(await asyncio.wait_for(scenario(stack), 30))
        results["stats_ok"] = stack.stats()["tcp_segments_in"] > 0
    print(json.dumps(results))


if __name__ == "__main__":
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
