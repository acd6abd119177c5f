"""Small kernel-socket clients and servers that the integration tests run inside a
namespace (``ip netns exec NS python nsclient.py COMMAND ...``). Results go to stdout as
JSON (or raw bytes for ``recv``); every wait is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import hashlib
import json
import os
import socket
import sys
import threading
import time


def out(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- echo-many: N concurrent echo connections, each with its own random data -----------


async def _one_echo(host: str, port: int, data: bytes, timeout: float) -> str | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"connect: {exc!r}"
    try:

        async def send() -> None:
            # Write in pieces so that all connections are busy at the same time.
            for i in range(0, len(data), 8192):
                writer.write(data[i : i + 8192])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = await asyncio.wait_for(reader.read(-1), timeout)
        await asyncio.wait_for(sender, timeout)
    except (OSError, TimeoutError) as exc:
        return f"transfer: {exc!r}"
    finally:
        writer.close()
    if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
        return f"echo mismatch: sent {len(data)} bytes, got {len(got)}"
    return None


async def _echo_many(args) -> dict:
    datas = [os.urandom(args.size) for _ in range(args.count)]
    start = time.monotonic()
    results = await asyncio.gather(
        *(_one_echo(args.host, args.port, d, args.timeout) for d in datas)
    )
    errors = [f"conn {i}: {r}" for i, r in enumerate(results) if r is not None]
    return {
        "ok": args.count - len(errors),
        "errors": errors,
        "distinct": len({hashlib.sha256(d).digest() for d in datas}),
        "seconds": time.monotonic() - start,
    }


def cmd_echo_many(args) -> int:
    result = asyncio.run(_echo_many(args))
    out(result)
    return 0


# --- listen: a kernel listener for `ustack connect` ---------------------------------------


def cmd_listen(args) -> int:
    with open(args.send, "rb") as f:
        payload = f.read()
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    srv.settimeout(args.timeout)
    print("listening", flush=True)
    try:
        conn, peer = srv.accept()
    except TimeoutError:
        out({"error": "no connection"})
        return 1
    conn.settimeout(args.timeout)
    sent_error: list[str] = []

    def sender() -> None:
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            sent_error.append(repr(exc))

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    h = hashlib.sha256()
    n = 0
    error = None
    try:
        while chunk := conn.recv(1 << 16):
            h.update(chunk)
            n += len(chunk)
    except OSError as exc:
        error = repr(exc)
    thread.join(args.timeout)
    conn.close()
    out(
        {
            "peer": list(peer),
            "received_len": n,
            "received_sha256": h.hexdigest(),
            "recv_error": error,
            "send_error": sent_error[0] if sent_error else None,
            "sender_done": not thread.is_alive(),
        }
    )
    return 0


# --- http: raw HTTP requests on one connection --------------------------------------------


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536 or not self.fill():
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def read_body(self, length: int | None, keep: int) -> tuple[int, str, bytes]:
        h = hashlib.sha256()
        kept = b""
        n = 0
        while length is None or n < length:
            if not self.buf and not self.fill():
                break
            take = self.buf if length is None else self.buf[: length - n]
            self.buf = self.buf[len(take) :]
            h.update(take)
            if len(kept) < keep:
                kept += take[: keep - len(kept)]
            n += len(take)
        return n, h.hexdigest(), kept


def cmd_http(args) -> int:
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    conn = Conn(sock)
    responses = []
    for raw in args.request:
        request = codecs.decode(raw, "unicode_escape").encode("latin-1")
        try:
            sock.sendall(request)
            head = conn.read_head()
        except OSError as exc:
            responses.append({"error": repr(exc)})
            break
        if head is None:
            responses.append({"error": "connection ended before a response head"})
            break
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest.split(" ", 1)[0]) if rest[:3].isdigit() else None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        resp = {"version": version, "status": status, "status_line": lines[0],
                "headers": headers}
        if not args.headers_only:
            length = headers.get("content-length")
            try:
                n, digest, kept = conn.read_body(
                    int(length) if length is not None else None, args.keep
                )
            except OSError as exc:
                resp["error"] = repr(exc)
                responses.append(resp)
                break
            resp.update(body_len=n, body_sha256=digest, body=kept.decode("latin-1"))
        responses.append(resp)
    after = "open"
    if not args.headers_only:
        sock.settimeout(args.linger)
        try:
            after = "extra-data" if conn.buf or sock.recv(4096) else "eof"
        except TimeoutError:
            after = "open"
        except ConnectionResetError:
            after = "reset"
        except OSError as exc:
            after = repr(exc)
    sock.close()
    out({"responses": responses, "after": after})
    return 0


# --- probe: does a connect succeed, get refused, or time out? ---------------------------


def cmd_probe(args) -> int:
    start = time.monotonic()
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except ConnectionRefusedError:
        result = "refused"
    except TimeoutError:
        result = "timeout"
    except OSError as exc:
        result = repr(exc)
    else:
        sock.close()
        result = "connected"
    out({"result": result, "seconds": time.monotonic() - start})
    return 0


# --- recv: the first N bytes a server sends, raw to stdout ------------------------------


def cmd_recv(args) -> int:
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    got = bytearray()
    while len(got) < args.count:
        chunk = sock.recv(min(1 << 16, args.count - len(got)))
        if not chunk:
            break
        got += chunk
    sock.close()
    sys.stdout.buffer.write(got)
    sys.stdout.flush()
    return 0


# --- hold: an idle open connection; how does it end? ------------------------------------


def cmd_hold(args) -> int:
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sock.sendall(b"ping")
    got = b""
    while len(got) < 4:
        chunk = sock.recv(4 - len(got))
        if not chunk:
            break
        got += chunk
    print("ready" if got == b"ping" else f"bad echo {got!r}", flush=True)
    start = time.monotonic()
    try:
        result = "eof" if not sock.recv(4096) else "data"
    except ConnectionResetError:
        result = "reset"
    except TimeoutError:
        result = "timeout"
    out({"result": result, "seconds": time.monotonic() - start})
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, port=None):
        sp.add_argument("--host", default="10.77.0.2")
        sp.add_argument("--port", type=int, default=port, required=port is None)
        sp.add_argument("--timeout", type=float, default=30.0)

    sp = sub.add_parser("echo-many")
    common(sp, 7)
    sp.add_argument("--count", type=int, default=50)
    sp.add_argument("--size", type=int, default=65536)
    sp.set_defaults(fn=cmd_echo_many)

    sp = sub.add_parser("listen")
    common(sp)
    sp.add_argument("--bind", default="0.0.0.0")
    sp.add_argument("--send", required=True)
    sp.set_defaults(fn=cmd_listen)

    sp = sub.add_parser("http")
    common(sp, 80)
    sp.add_argument("--request", action="append", required=True,
                    help="raw request with backslash escapes (\\r\\n)")
    sp.add_argument("--headers-only", action="store_true")
    sp.add_argument("--keep", type=int, default=4096, help="body bytes to report")
    sp.add_argument("--linger", type=float, default=1.5,
                    help="seconds to wait for the server's close after the last response")
    sp.set_defaults(fn=cmd_http)

    sp = sub.add_parser("probe")
    common(sp)
    sp.set_defaults(fn=cmd_probe)

    sp = sub.add_parser("recv")
    common(sp)
    sp.add_argument("--count", type=int, required=True)
    sp.set_defaults(fn=cmd_recv)

    sp = sub.add_parser("hold")
    common(sp, 7)
    sp.set_defaults(fn=cmd_hold)

    args = p.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
