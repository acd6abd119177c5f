"""The HTTP service against curl and a raw-socket client, inside a namespace."""

from __future__ import annotations

import pytest

from .support import USTACK_ADDR, pattern_sha256, require_tools

pytestmark = pytest.mark.netns

HELLO = "hello from ustack\n"
BASE = f"http://{USTACK_ADDR}"


def http(server, *requests: str, headers_only=False, linger=1.5) -> dict:
    args = ["http"]
    for r in requests:
        args += ["--request", r]
    if headers_only:
        args.append("--headers-only")
    args += ["--linger", str(linger), "--timeout", "10"]
    return server.ns.client_json(*args, timeout=30)


def curl(server, *args: str) -> str:
    require_tools("curl")
    done = server.ns.run(["curl", "-sS", "--max-time", "10", *args], timeout=20)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode("latin-1")


def test_get_root(ustack_server):
    assert curl(ustack_server, f"{BASE}/") == HELLO


def test_keep_alive_two_requests_one_connection_curl(ustack_server):
    out = curl(ustack_server, "-o", "/dev/null", "-o", "/dev/null",
               "-w", "%{http_code} %{num_connects}\n", f"{BASE}/", f"{BASE}/bytes/10")
    # The second transfer reused the first connection: 0 new connects.
    assert out == "200 1\n200 0\n"


def test_keep_alive_raw_client(ustack_server):
    r = http(ustack_server,
             r"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
             r"GET /bytes/10 HTTP/1.1\r\nHost: t\r\n\r\n",
             r"GET /bytes/300 HTTP/1.1\r\nHost: t\r\n\r\n")
    first, second, third = r["responses"]
    assert first["version"] == "HTTP/1.1" and first["status"] == 200, first
    assert first["headers"]["content-length"] == str(len(HELLO))
    assert first["body"] == HELLO
    assert second["status"] == 200, second
    assert second["headers"]["content-length"] == "10"
    assert second["body"].encode("latin-1") == bytes(range(10))
    assert third["status"] == 200, third
    assert third["body_len"] == 300
    assert third["body_sha256"] == pattern_sha256(300)
    assert r["after"] == "open", "HTTP/1.1 keeps the connection open by default"


def test_connection_close_honoured(ustack_server):
    r = http(ustack_server, r"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    (resp,) = r["responses"]
    assert resp["status"] == 200, resp
    assert resp["body"] == HELLO
    assert r["after"] == "eof", "the server must close after a Connection: close response"


def test_connection_close_curl(ustack_server):
    out = curl(ustack_server, "-H", "Connection: close", "-o", "/dev/null", "-o", "/dev/null",
               "-w", "%{http_code} %{num_connects}\n", f"{BASE}/", f"{BASE}/bytes/10")
    assert out == "200 1\n200 1\n"


def test_http10_closes(ustack_server):
    r = http(ustack_server, r"GET / HTTP/1.0\r\n\r\n")
    (resp,) = r["responses"]
    assert resp["status"] == 200, resp
    assert resp["body"] == HELLO
    assert r["after"] == "eof", "HTTP/1.0 without keep-alive closes after the response"


def test_http10_curl(ustack_server):
    assert curl(ustack_server, "-0", f"{BASE}/") == HELLO
    out = curl(ustack_server, "-0", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
               f"{BASE}/bytes/1000")
    assert out == "200 1000"


def test_http10_keep_alive_asked(ustack_server):
    r = http(ustack_server,
             r"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
             r"GET /bytes/5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    first, second = r["responses"]
    assert first["status"] == 200 and first["body"] == HELLO, first
    assert second["status"] == 200, second
    assert second["body"].encode("latin-1") == bytes(range(5))
    assert r["after"] == "open"


def test_not_found(ustack_server):
    out = curl(ustack_server, "-o", "/dev/null", "-w", "%{http_code}", f"{BASE}/nosuch")
    assert out == "404"


@pytest.mark.parametrize("path", ["/bytes/abc", "/bytes/-1", "/bytes/1000000000001",
                                  "/bytes/1e3"])
def test_bad_n_is_400(ustack_server, path):
    out = curl(ustack_server, "-o", "/dev/null", "-w", "%{http_code}", f"{BASE}{path}")
    assert out == "400", path


def test_malformed_request_is_400(ustack_server):
    r = http(ustack_server, r"THIS IS NOT HTTP\r\n\r\n", headers_only=True)
    (resp,) = r["responses"]
    assert "error" not in resp, resp
    assert resp["version"].startswith("HTTP/1."), resp
    assert resp["status"] == 400, resp


def test_largest_n_is_accepted(ustack_server):
    r = http(ustack_server, r"GET /bytes/1000000000000 HTTP/1.1\r\nHost: t\r\n\r\n",
             headers_only=True)
    (resp,) = r["responses"]
    assert resp["status"] == 200, resp
    assert resp["headers"]["content-length"] == "1000000000000"


def test_bytes_zero(ustack_server):
    r = http(ustack_server, r"GET /bytes/0 HTTP/1.1\r\nHost: t\r\n\r\n",
             r"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    first, second = r["responses"]
    assert first["status"] == 200 and first["headers"]["content-length"] == "0", first
    assert first["body_len"] == 0
    assert second["body"] == HELLO
