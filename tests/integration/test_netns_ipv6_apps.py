"""IPv6 end to end through a real TUN (issue 19's acceptance): the kernel's own clients
(curl -6, nc -6, ping -6, openssl s_client) against `ustack serve` at the IPv6 minimum MTU
(1280) and the largest (65535), with and without offloads; `ustack connect` to a kernel
`nc -6 -l`; HTTPS over IPv6; an aiohttp application bound to fd77::2 through the API."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ustack.api import tls

from .support import (
    REPO,
    USTACK,
    file_sha256,
    pattern_sha256,
    random_file,
    readline,
    require_tools,
    sha256,
    stop_process,
)

pytestmark = pytest.mark.netns

ADDR6 = "fd77::2"  # ustack's global IPv6 address (serve's default)
KERNEL_ADDR6 = "fd77::1"  # the kernel's side of the device ustack creates
HTTP_BYTES = 3_000_000
ECHO_BYTES = 1_000_000
CONNECT_BYTES = 1_000_000

MTUS = [1280, 65535]
OFFLOADS = [pytest.param((), id="offload"), pytest.param(("--no-offload",), id="no-offload")]


def _out(done: subprocess.CompletedProcess) -> str:
    return (done.stdout or b"").decode(errors="replace") + (done.stderr or b"").decode(
        errors="replace")


def _curl6(ns, url: str, dst: Path, *extra: str, max_time: float = 10) -> str:
    """`curl -6 -g URL` into `dst`; returns "<status> <size>"; fails on curl's error."""
    done = ns.run(["curl", "-6", "-g", "-sS", "--fail", "--max-time", str(max_time),
                   *extra, "-o", str(dst), "-w", "%{http_code} %{size_download}", url],
                  timeout=max_time + 10)
    assert done.returncode == 0, f"curl {url}: exit {done.returncode}: {_out(done)}"
    return done.stdout.decode()


def _ipv6_packet_sizes(pcap: Path) -> list[int]:
    """The lengths of the IPv6 packets in a capture `ustack --pcap` wrote (LINKTYPE_RAW)."""
    data = pcap.read_bytes()
    sizes, at = [], 24  # past the global header
    while at + 16 <= len(data):
        kept, size = struct.unpack_from("<II", data, at + 8)
        packet = data[at + 16:at + 16 + kept]
        if packet and packet[0] >> 4 == 6:
            sizes.append(size)
        at += 16 + kept
    return sizes


def _wait_listening6(ns, port: int, timeout: float = 5.0) -> None:
    """Wait until a TCP socket of `ns` listens on `port` over IPv6 (/proc/net/tcp6)."""
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = ns.run(["cat", "/proc/net/tcp6"], timeout=5).stdout.decode()
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(want) and fields[3] == "0A":
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on [::]:{port} in {ns.name} after {timeout} s")


# --- serve at the IPv6 minimum and maximum MTU ------------------------------------------


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("mtu", MTUS)
def test_serve_ipv6_curl_nc_ping_at_mtu(netns, start_ustack, tmp_path, mtu, offload):
    """curl -6 /bytes/3MB, nc -6 echo of 1 MB (both SHA-256 checked) and ping -6, with the
    device at MTU 1280 or 65535; link-local curl too at 1280."""
    require_tools("curl", "nc", "ping")
    pcap = tmp_path / "tun.pcap"
    server = start_ustack(netns, "echo:7", "http:80",
                          args=["--mtu", str(mtu), "--pcap", str(pcap), *offload])
    link = netns.ip("link", "show", "dev", "ustack0").stdout
    assert f" mtu {mtu} " in link, link

    got = tmp_path / "bytes.bin"
    assert _curl6(netns, f"http://[{ADDR6}]/bytes/{HTTP_BYTES}", got) == f"200 {HTTP_BYTES}"
    assert file_sha256(got) == pattern_sha256(HTTP_BYTES)

    src = tmp_path / "echo.bin"
    want = random_file(src, ECHO_BYTES)
    with src.open("rb") as stdin:
        echo = netns.run(["timeout", "15", "nc", "-6", "-N", ADDR6, "7"], stdin=stdin,
                         timeout=20)
    assert echo.returncode == 0, echo.stderr.decode()
    assert len(echo.stdout) == ECHO_BYTES and sha256(echo.stdout) == want

    ping = netns.run(["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", ADDR6],
                     timeout=10)
    assert ping.returncode == 0, _out(ping)
    assert "2 packets transmitted, 2 received" in ping.stdout.decode(), _out(ping)
    # A full-sized packet at this MTU (IPv6 40 + ICMPv6 8 bytes of headers), unfragmented.
    size = min(mtu, 9000) - 48
    big = netns.run(["ping", "-6", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", str(size),
                     ADDR6], timeout=10)
    assert big.returncode == 0, _out(big)
    assert f"{size + 8} bytes from {ADDR6}" in big.stdout.decode(), _out(big)

    if mtu == 1280:
        page = tmp_path / "page.txt"
        assert _curl6(netns, "http://[fe80::2%25ustack0]/", page) == "200 18"
        assert page.read_bytes() == b"hello from ustack\n"
    status, _ = server.stop()
    assert status == 0, server.stderr()
    assert "Traceback" not in server.stderr(), server.stderr()
    sizes = _ipv6_packet_sizes(pcap)
    assert len(sizes) > 50, f"{len(sizes)} IPv6 packets captured"
    if "--no-offload" in offload:  # one wire packet per TUN packet: none above the MTU
        assert max(sizes) <= mtu, max(sizes)
        assert sizes.count(mtu) > 10, sizes.count(mtu)


@pytest.mark.parametrize("offload", OFFLOADS)
@pytest.mark.parametrize("mtu", MTUS)
def test_connect_ipv6_to_kernel_nc_at_mtu(netns, tmp_path, mtu, offload):
    """`ustack connect fd77::1 PORT` to a kernel `nc -6 -l PORT`: 1 MB each way."""
    require_tools("nc")
    port = 5601
    ours, theirs, received = tmp_path / "ours.bin", tmp_path / "theirs.bin", tmp_path / "rx"
    pcap = tmp_path / "tun.pcap"
    ours_sha = random_file(ours, CONNECT_BYTES)
    theirs_sha = random_file(theirs, CONNECT_BYTES)
    # nc's output goes to a file: a pipe nobody reads while connect runs would stall it.
    with theirs.open("rb") as stdin, received.open("wb") as stdout:
        listener = netns.popen(["timeout", "15", "nc", "-6", "-N", "-l", str(port)],
                               stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    _wait_listening6(netns, port)
    with ours.open("rb") as stdin:
        done = netns.run([*USTACK, "connect", "--mtu", str(mtu), "--timeout", "5",
                          "--pcap", str(pcap), *offload, KERNEL_ADDR6, str(port)],
                         stdin=stdin, timeout=20)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"exit {done.returncode}; stderr: {err}"
    assert "Traceback" not in err, err
    assert len(done.stdout) == CONNECT_BYTES, len(done.stdout)
    assert sha256(done.stdout) == theirs_sha
    try:
        listener.wait(10)
    except subprocess.TimeoutExpired:
        stop_process(listener)
        raise AssertionError("nc -l did not end after ustack connect exited") from None
    assert listener.returncode == 0, listener.stderr.read().decode()
    assert received.stat().st_size == CONNECT_BYTES
    assert file_sha256(received) == ours_sha
    sizes = _ipv6_packet_sizes(pcap)
    assert len(sizes) > 20, f"{len(sizes)} IPv6 packets captured"
    if "--no-offload" in offload:  # wire packets, full-sized at the device's MTU
        assert max(sizes) <= mtu and sizes.count(mtu) > 10, (max(sizes), sizes.count(mtu))


# --- TLS over IPv6 ------------------------------------------------------------------------


def test_https_over_ipv6_curl_verified(netns, start_ustack, tmp_path):
    """A certificate naming fd77::2, verified by curl -6 with it as CA; /bytes SHA-256."""
    require_tools("curl", "openssl")
    cert, key = tls.self_signed_certificate(tmp_path, addresses=[ADDR6])
    start_ustack(netns, "https:8443", args=["--cert", str(cert), "--key", str(key)])
    page = tmp_path / "page.txt"
    url = f"https://[{ADDR6}]:8443"
    assert _curl6(netns, f"{url}/", page, "--cacert", str(cert)) == "200 18"
    assert page.read_bytes() == b"hello from ustack\n"
    got = tmp_path / "bytes.bin"
    n = 1_000_000
    assert _curl6(netns, f"{url}/bytes/{n}", got, "--cacert", str(cert)) == f"200 {n}"
    assert file_sha256(got) == pattern_sha256(n)


def test_https_over_ipv6_openssl_s_client(netns, start_ustack, tmp_path):
    """openssl s_client -6 against `serve --self-signed https`: a GET over TLS 1.3."""
    require_tools("openssl")
    start_ustack(netns, "https:443", args=["--self-signed"])
    n = 100_000
    request = f"GET /bytes/{n} HTTP/1.1\r\nHost: [{ADDR6}]\r\nConnection: close\r\n\r\n"
    done = netns.run(["timeout", "10", "openssl", "s_client", "-6", "-quiet", "-tls1_3",
                      "-connect", f"[{ADDR6}]:443", "-servername", "ustack"],
                     input=request.encode(), timeout=15)
    head, sep, body = done.stdout.partition(b"\r\n\r\n")
    assert sep, _out(done)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(body) == n and sha256(body) == pattern_sha256(n), (len(body), _out(done)[-500:])


# --- aiohttp through the API, bound to fd77::2 ----------------------------------------------

AIOHTTP_SCRIPT = """
import asyncio, json, signal, sys

from aiohttp import web

import ustack


async def hello(request):
    return web.Response(text=f"Hello, {request.match_info['name']}, from aiohttp over IPv6\\n")


async def peer(request):
    return web.json_response({"remote": request.remote})


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    app.router.add_get("/peer", peer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        async with ustack.Stack(dev="ustack0") as stack:
            server = await stack.create_server(runner.server, "fd77::2", 8080)
            async with server:
                names = [list(s.getsockname()) for s in server.sockets]
                print("ready " + json.dumps(names), flush=True)
                await stop.wait()
                await runner.shutdown()
    finally:
        await runner.cleanup()


asyncio.run(main())
"""


def test_aiohttp_app_on_ipv6_address(netns, tmp_path):
    require_tools("curl")
    pytest.importorskip("aiohttp")
    script = tmp_path / "aiohttp6.py"
    script.write_text(AIOHTTP_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = netns.popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env)
    try:
        line = readline(proc, 20)
    except AssertionError:
        stop_process(proc)
        raise AssertionError(f"no ready line; stderr: {proc.stderr.read()!r}") from None
    if not line.startswith(b"ready "):
        stop_process(proc)
        raise AssertionError(f"did not start: {line!r} {proc.stderr.read()!r}")
    names = json.loads(line[len(b"ready "):])
    assert [tuple(name) for name in names] == [(ADDR6, 8080, 0, 0)], names

    page = tmp_path / "hello.txt"
    assert _curl6(netns, f"http://[{ADDR6}]:8080/hello/curl", page).startswith("200 ")
    assert page.read_bytes() == b"Hello, curl, from aiohttp over IPv6\n"
    remote = tmp_path / "peer.json"
    assert _curl6(netns, f"http://[{ADDR6}]:8080/peer", remote).startswith("200 ")
    assert json.loads(remote.read_bytes()) == {"remote": KERNEL_ADDR6}
    # Bound to fd77::2 only: the IPv4 address has no listener on 8080.
    refused = netns.run(["curl", "-sS", "--max-time", "5", "http://10.77.0.2:8080/hello/x"],
                        timeout=10)
    assert refused.returncode == 7, _out(refused)

    status = stop_process(proc, grace=5)
    assert status == 0, f"exit status {status} after SIGTERM: {proc.stderr.read()!r}"
