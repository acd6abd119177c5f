"""TLS on ustack inside a namespace: `ustack serve https` fetched by curl, and the
`ssl=`/`start_tls` API against the kernel's own TLS (asyncio over kernel sockets).

Run as `python -m tests.integration.test_netns_tls CERT KEY PORT LOOP` (inside a
namespace, from the repository root) this module is the API check script itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import subprocess
import sys

import pytest

from ustack.api import tls

from .support import (
    KERNEL_ADDR,
    REPO,
    USTACK,
    USTACK_ADDR,
    pattern_sha256,
    require_tools,
)

pytestmark = pytest.mark.netns

CURL_TIMEOUT = 30


def _curl(netns, url: str, *extra: str) -> subprocess.CompletedProcess:
    return netns.run(["curl", "-sS", "--max-time", str(CURL_TIMEOUT), *extra, url],
                     timeout=CURL_TIMEOUT + 10)


def _check_https(netns) -> None:
    page = _curl(netns, f"https://{USTACK_ADDR}/", "-k")
    assert page.returncode == 0, page.stderr.decode()
    assert page.stdout == b"hello from ustack\n"
    big = _curl(netns, f"https://{USTACK_ADDR}/bytes/1000000", "-k")
    assert big.returncode == 0, big.stderr.decode()
    assert len(big.stdout) == 1_000_000
    assert hashlib.sha256(big.stdout).hexdigest() == pattern_sha256(1_000_000)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_https_self_signed(netns, start_ustack, loop):
    require_tools("curl", "openssl")
    server = start_ustack(netns, "https:443", "http:80", args=["--self-signed", "--loop", loop])
    # Unverifiable without -k: curl rejects the handshake; the server carries on.
    rejected = _curl(netns, f"https://{USTACK_ADDR}/")
    assert rejected.returncode == 60, rejected.stderr.decode()
    _check_https(netns)
    plain = _curl(netns, f"http://{USTACK_ADDR}/")
    assert plain.returncode == 0 and plain.stdout == b"hello from ustack\n"
    assert "Traceback" not in server.stderr(), server.stderr()


def test_serve_https_cert_and_key(netns, start_ustack, tmp_path):
    require_tools("curl", "openssl")
    cert, key = tls.self_signed_certificate(tmp_path, addresses=[USTACK_ADDR])
    start_ustack(netns, "https:8443", args=["--cert", str(cert), "--key", str(key)])
    # Verified this time: the certificate is its own CA and names 10.77.0.2.
    page = _curl(netns, f"https://{USTACK_ADDR}:8443/", "--cacert", str(cert))
    assert page.returncode == 0, page.stderr.decode()
    assert page.stdout == b"hello from ustack\n"


@pytest.mark.parametrize("args", [
    ["https"],
    ["--key", "/nonexistent.pem", "https"],
    ["--cert", "/nonexistent.pem", "https"],
])
def test_serve_https_bad_arguments_exit_2(netns, args):
    done = netns.run([*USTACK, "serve", *args], timeout=30)
    assert done.returncode == 2, done.stderr.decode()
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ustack: "), lines


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stack_tls_api(netns, tmp_path, loop):
    require_tools("openssl")
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    cert, key = tls.self_signed_certificate(
        tmp_path, addresses=[USTACK_ADDR, KERNEL_ADDR])
    done = netns.run([sys.executable, "-m", "tests.integration.test_netns_tls",
                      str(cert), str(key), "6443", loop], timeout=90, cwd=REPO)
    assert done.returncode == 0, done.stderr.decode()
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["server_echo_ok"], got
    assert got["server_peer_is_kernel"], got
    assert got["client_ok"], got
    assert got["client_tls_version"].startswith("TLS"), got
    assert got["client_peername"] == [KERNEL_ADDR, 6443], got
    assert got["starttls_ok"], got
    assert got["bad_ca_error"] == "SSLCertVerificationError", got


# ----------------------------------------------------- the script run in the namespace

PAYLOAD = b"".join(i.to_bytes(4, "big") for i in range(50_000))  # 200 kB each way


def _contexts(cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)  # verified, hostname checked
    return server_ctx, client_ctx


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send PAYLOAD while reading its echo (a TLS transport cannot write_eof: the
    echo's length tells the end), then close."""
    async def send() -> None:
        writer.write(PAYLOAD)
        await writer.drain()

    sender = asyncio.ensure_future(send())
    got = await asyncio.wait_for(reader.readexactly(len(PAYLOAD)), 30)
    await sender
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 10)
    return got


class _Collect(asyncio.Protocol):
    """A protocol that queues what it receives (for the STARTTLS client)."""

    def __init__(self) -> None:
        self.data: asyncio.Queue[bytes] = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data.put_nowait(data)

    def eof_received(self) -> None:
        self.data.put_nowait(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def read_until(self, end: bytes = b"", size: int = 0) -> bytes:
        buf = b""
        while len(buf) < size or not buf.endswith(end):
            chunk = await asyncio.wait_for(self.data.get(), 10)
            if not chunk:
                break
            buf += chunk
        return buf


async def _script(cert: str, key: str, port: int) -> dict:
    import ustack

    server_ctx, client_ctx = _contexts(cert, key)
    loop = asyncio.get_running_loop()
    result: dict = {}
    async with ustack.Stack(dev="ustack0", addr=USTACK_ADDR) as stack:
        # 1. ustack's TLS server, a kernel TLS client.
        peers: list = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername"))
            await _echo(reader, writer)

        server = await stack.start_server(echo, USTACK_ADDR, 443, ssl=server_ctx)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            USTACK_ADDR, 443, ssl=client_ctx, server_hostname=USTACK_ADDR), 10)
        result["server_echo_ok"] = await _exchange(reader, writer) == PAYLOAD
        result["server_peer_is_kernel"] = bool(peers) and peers[0][0] == KERNEL_ADDR

        # 2. ustack's TLS client, a kernel TLS server.
        kernel = await asyncio.start_server(_echo, KERNEL_ADDR, port, ssl=server_ctx)
        reader, writer = await asyncio.wait_for(stack.open_connection(
            KERNEL_ADDR, port, ssl=client_ctx, server_hostname=KERNEL_ADDR), 10)
        result["client_tls_version"] = writer.get_extra_info("ssl_object").version()
        result["client_peername"] = list(writer.get_extra_info("peername"))
        result["client_ok"] = await _exchange(reader, writer) == PAYLOAD
        # A CA that did not sign the kernel's certificate: the handshake fails.
        try:
            await asyncio.wait_for(stack.open_connection(
                KERNEL_ADDR, port, ssl=ssl.create_default_context(),
                server_hostname=KERNEL_ADDR), 10)
            result["bad_ca_error"] = None
        except ssl.SSLError as e:
            result["bad_ca_error"] = type(e).__name__
        kernel.close()

        # 3. STARTTLS: a plain line, then both sides upgrade.
        async def starttls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            writer.write(b"OK " + line)
            await writer.drain()
            await writer.start_tls(server_ctx)  # the kernel side: asyncio's own
            await _echo(reader, writer)

        kernel = await asyncio.start_server(starttls, KERNEL_ADDR, port + 1)
        transport, plain = await stack.create_connection(_Collect, KERNEL_ADDR, port + 1)
        transport.write(b"STARTTLS\n")
        answer = await plain.read_until(b"\n")
        secure = _Collect()
        tls_transport = await asyncio.wait_for(stack.start_tls(
            transport, secure, client_ctx, server_hostname=KERNEL_ADDR), 10)
        tls_transport.write(PAYLOAD)
        echoed = await secure.read_until(size=len(PAYLOAD))
        tls_transport.close()
        await asyncio.wait_for(secure.lost, 10)
        result["starttls_ok"] = answer == b"OK STARTTLS\n" and echoed == PAYLOAD
        result["starttls_cipher"] = tls_transport.get_extra_info("cipher")
        kernel.close()
        server.close()
        await loop.shutdown_asyncgens()
    return result


def _main(argv: list[str]) -> None:
    cert, key, port, loop_name = argv
    coro = _script(cert, key, int(port))
    if loop_name == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
