"""Run inside a namespace: ustack's asyncio API against the kernel's sockets and nc.

Prints one JSON line with what it observed; the test asserts on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

import ustack


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main(port: int, nc_input: str) -> dict:
    result: dict = {}
    async with ustack.Stack(dev="ustack0", addr="10.77.0.2") as stack:
        server = await stack.start_server(echo, "10.77.0.2", 7)
        # A kernel client (nc) against ustack's server.
        with open(nc_input, "rb") as stdin:
            nc = await asyncio.create_subprocess_exec(
                "nc", "-N", "10.77.0.2", "7", stdin=stdin, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(nc.communicate(), 30)
        result["nc_status"] = nc.returncode
        result["nc_echo_sha256"] = hashlib.sha256(out).hexdigest()
        # ustack's client against a kernel listener.
        reader, writer = await asyncio.wait_for(stack.open_connection("10.77.0.1", port), 10)
        result["stream_types"] = [type(reader).__name__, type(writer).__name__]
        result["are_asyncio_streams"] = isinstance(reader, asyncio.StreamReader) and isinstance(
            writer, asyncio.StreamWriter
        )
        payload = b"".join(i.to_bytes(4, "big") for i in range(100_000))
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        result["sent_sha256"] = hashlib.sha256(payload).hexdigest()
        result["received_len"] = len(got)
        result["received_sha256"] = hashlib.sha256(got).hexdigest()
        server.close()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), sys.argv[2]))), flush=True)
