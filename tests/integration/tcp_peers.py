"""Peers for tests/integration/test_netns_tcp.py, run inside a private namespace
(``ip netns exec NS python tcp_peers.py COMMAND ...``).

Each command prints one JSON line with what it observed (the test asserts on it); every
wait is bounded by a timeout and every loop by a count.

- ``echo``: a kernel client sends random data to an echo service while a second thread
  reads the echo back; reports both SHA-256 digests.
- ``stall``: a kernel HTTP client that stops reading for a while in the middle of a body.
- ``listen``: a kernel listener that echoes what it receives (a peer for ``vanish``).
- ``vanish``: ustack's asyncio API connects to ``listen``, then the link goes down while
  ustack has data in flight; reports how and when ustack gave up.
- ``flood``: raw IPv4 garbage and spoofed TCP SYNs to ustack, as fast as the kernel takes.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time


def out(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- echo: N random bytes through an echo service, sent and read concurrently ----------


def cmd_echo(args) -> int:
    rng = random.Random(args.seed)
    block = rng.randbytes(1 << 20)  # 1 MiB of random data, sent with a varying offset
    sent_hash = hashlib.sha256()
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    start = time.monotonic()
    send_error: list[str] = []

    def sender() -> None:
        left = args.size
        i = 0
        try:
            while left > 0:
                off = (i * 7919) % 4096
                chunk = block[off : off + min(left, 256 * 1024)]
                sent_hash.update(chunk)
                sock.sendall(chunk)
                left -= len(chunk)
                i += 1
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_error.append(repr(exc))

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    got_hash = hashlib.sha256()
    got = 0
    recv_error = None
    try:
        while chunk := sock.recv(1 << 18):
            got_hash.update(chunk)
            got += len(chunk)
    except OSError as exc:
        recv_error = repr(exc)
    thread.join(args.timeout)
    seconds = time.monotonic() - start
    sock.close()
    out({
        "sent_len": args.size,
        "sent_sha256": sent_hash.hexdigest(),
        "received_len": got,
        "received_sha256": got_hash.hexdigest(),
        "send_error": send_error[0] if send_error else None,
        "recv_error": recv_error,
        "sender_done": not thread.is_alive(),
        "seconds": seconds,
    })
    return 0


# --- stall: an HTTP client that stops reading in the middle of the body -----------------


def cmd_stall(args) -> int:
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sock.sendall(f"GET /bytes/{args.size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < 65536:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    h = hashlib.sha256(body)
    n = len(body)
    # Read a little, then stop: the kernel's receive buffer fills and its window closes.
    while n < args.before:
        chunk = sock.recv(min(65536, args.before - n))
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    read_before = n
    time.sleep(args.pause)
    resumed = time.monotonic()
    error = None
    try:
        while n < args.size:
            chunk = sock.recv(1 << 18)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    except OSError as exc:
        error = repr(exc)
    seconds_after = time.monotonic() - resumed
    sock.close()
    out({
        "status_line": head.split(b"\r\n", 1)[0].decode("latin-1"),
        "read_before_pause": read_before,
        "body_len": n,
        "body_sha256": h.hexdigest(),
        "error": error,
        "seconds_after_pause": seconds_after,
    })
    return 0


# --- listen: a kernel echo listener that serves one connection ---------------------------


def cmd_listen(args) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", args.port))
    srv.listen(1)
    srv.settimeout(args.timeout)
    print("listening", flush=True)
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        out({"error": "no connection"})
        return 1
    conn.settimeout(args.timeout)
    n = 0
    result = "eof"
    try:
        while chunk := conn.recv(65536):
            n += len(chunk)
            if n <= 65536:
                conn.sendall(chunk)
    except TimeoutError:
        result = "timeout"
    except OSError as exc:
        result = repr(exc)
    conn.close()
    out({"received_len": n, "result": result})
    return 0


# --- vanish: ustack's client loses its link with data in flight -------------------------


async def _vanish(args) -> dict:
    import ustack
    from ustack.tcp.config import TcpConfig

    result: dict = {}
    # Stack(tcp=...) sets the TCP options of every connection: give up after few retries.
    async with ustack.Stack(dev=args.dev, addr="10.77.0.2", kernel_addr="10.77.0.1/24",
                            tcp=TcpConfig(max_retries=args.retries)) as stack:
        reader, writer = await asyncio.wait_for(
            stack.open_connection("10.77.0.1", args.port), 10
        )
        writer.write(b"hello")
        await asyncio.wait_for(writer.drain(), 10)
        result["echo"] = (await asyncio.wait_for(reader.readexactly(5), 10)).decode()
        result["info_before"] = writer.get_extra_info("tcp_info")
        down = await asyncio.to_thread(
            subprocess.run, ["ip", "link", "set", args.dev, "down"],
            capture_output=True, text=True, timeout=10,
        )
        result["link_down_status"] = down.returncode
        start = time.monotonic()
        writer.write(os.urandom(1 << 20))  # data in flight that can never be acknowledged

        async def outcome(aw) -> str | None:
            """None, or the name of the exception ``aw`` raised; "hang" if it did not end
            within the timeout (a timeout of ours is never taken for ustack's)."""
            task = asyncio.ensure_future(aw)
            done, _ = await asyncio.wait([task], timeout=args.timeout)
            if not done:
                task.cancel()
                return "hang"
            exc = task.exception()
            if exc is not None:
                result.setdefault("error_text", str(exc))
            return None if exc is None else type(exc).__name__

        result["drain_error"] = await outcome(writer.drain())
        result["read_error"] = await outcome(reader.read())
        result["seconds"] = time.monotonic() - start
        result["info_after"] = writer.get_extra_info("tcp_info")
        writer.close()
        result["stats"] = stack.stats()
    return result


def cmd_vanish(args) -> int:
    out(asyncio.run(_vanish(args)))
    return 0


# --- flood: raw garbage and spoofed SYNs -------------------------------------------------


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_header(rng: random.Random, src: bytes, dst: bytes, proto: int, payload_len: int,
              ihl: int = 5, frag: int = 0x4000) -> bytes:
    """An IPv4 header; the kernel (IP_HDRINCL) rewrites total length and checksum."""
    options = rng.randbytes((ihl - 5) * 4)
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + payload_len,
        rng.randrange(1, 0x10000), frag, 64, proto, 0, src, dst,
    ) + options
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:]


def tcp_syn(rng: random.Random, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    options = struct.pack("!BBH", 2, 4, 1460)  # MSS 1460
    head = struct.pack(
        "!HHIIBBHHH", sport, dport, rng.getrandbits(32), 0, (5 + len(options) // 4) << 4,
        0x02, 64240, 0, 0,
    ) + options
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, socket.IPPROTO_TCP, len(head))
    csum = checksum(pseudo + head)
    return head[:16] + struct.pack("!H", csum) + head[18:]


def send_bounded(sock: socket.socket, packet: bytes, dst: str, stats: dict) -> None:
    """sendto, retrying briefly (at most 50 times) while the device queue is full."""
    for _ in range(50):
        try:
            sock.sendto(packet, (dst, 0))
            stats["sent"] += 1
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                stats["errors"] += 1
                return
            stats["retries"] += 1
            time.sleep(0.001)
    stats["gave_up"] += 1


def cmd_flood(args) -> int:
    rng = random.Random(args.seed)
    dst = socket.inet_aton(args.host)
    src = socket.inet_aton(args.src)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    garbage = {"sent": 0, "errors": 0, "retries": 0, "gave_up": 0, "fragments": 0}
    syns = {"sent": 0, "errors": 0, "retries": 0, "gave_up": 0}
    start = time.monotonic()
    kinds = ["syn"] * args.syns + ["garbage"] * args.garbage
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "syn":
            spoofed = socket.inet_aton(f"10.77.0.{rng.randrange(50, 251)}")
            seg = tcp_syn(rng, spoofed, dst, rng.randrange(1024, 65536), args.port)
            pkt = ip_header(rng, spoofed, dst, socket.IPPROTO_TCP, len(seg)) + seg
            send_bounded(sock, pkt, args.host, syns)
            continue
        proto = rng.choice((6, 6, 1, 17, rng.randrange(256)))
        ihl = 5 if rng.random() < 0.8 else rng.randrange(6, 16)
        frag = 0x4000  # DF, not a fragment
        if rng.random() < 0.05:  # now and then a fragment (MF and/or an offset)
            frag = rng.choice((0x2000, 0)) | rng.randrange(0, 200)
            garbage["fragments"] += 1
        payload = rng.randbytes(rng.randrange(0, 1400))
        pkt = ip_header(rng, src, dst, proto, len(payload), ihl, frag) + payload
        send_bounded(sock, pkt, args.host, garbage)
    sock.close()
    out({"garbage": garbage, "syns": syns, "seconds": time.monotonic() - start})
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, port):
        sp.add_argument("--host", default="10.77.0.2")
        sp.add_argument("--port", type=int, default=port)
        sp.add_argument("--timeout", type=float, default=30.0)

    sp = sub.add_parser("echo")
    common(sp, 7)
    sp.add_argument("--size", type=int, required=True)
    sp.add_argument("--seed", type=int, default=None)
    sp.set_defaults(fn=cmd_echo)

    sp = sub.add_parser("stall")
    common(sp, 80)
    sp.add_argument("--size", type=int, required=True)
    sp.add_argument("--before", type=int, default=1 << 20, help="bytes read before pausing")
    sp.add_argument("--pause", type=float, default=2.0)
    sp.set_defaults(fn=cmd_stall)

    sp = sub.add_parser("listen")
    common(sp, 5007)
    sp.set_defaults(fn=cmd_listen)

    sp = sub.add_parser("vanish")
    common(sp, 5007)
    sp.add_argument("--dev", default="ustack0")
    sp.add_argument("--retries", type=int, default=4)
    sp.set_defaults(fn=cmd_vanish)

    sp = sub.add_parser("flood")
    common(sp, 7)
    sp.add_argument("--src", default="10.77.0.1")
    sp.add_argument("--garbage", type=int, default=10_000)
    sp.add_argument("--syns", type=int, default=1_000)
    sp.add_argument("--seed", type=int, default=None)
    sp.set_defaults(fn=cmd_flood)

    args = p.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
