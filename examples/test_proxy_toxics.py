"""Testing a client against a flaky dependency, toxiproxy-style: a small key-value server
runs on the kernel's side of the test's network, the client under test talks to it
through ustack's proxy, and toxics on the proxy make the dependency slow, reset or
silent. Run with

    python -m pytest -p ustack.testing examples/test_proxy_toxics.py

The client is the kind a database driver is: one connection, a timeout per request,
one retry on a fresh connection when the old one broke.
"""

import socket
import socketserver
import threading
import time
from typing import ClassVar

import pytest

SERVER_PORT, PROXY_PORT = 6380, 6379


class KeyValue(socketserver.StreamRequestHandler):
    """`SET k v` answers `OK`, `GET k` the value (or `NIL`), one line each."""

    store: ClassVar[dict[str, str]] = {}

    def handle(self) -> None:
        for line in self.rfile:
            words = line.decode().split()
            if words[:1] == ["SET"] and len(words) == 3:
                self.store[words[1]] = words[2]
                reply = "OK"
            elif words[:1] == ["GET"] and len(words) == 2:
                reply = self.store.get(words[1], "NIL")
            else:
                reply = "ERR"
            self.wfile.write(f"{reply}\n".encode())


class Client:
    """The client under test: a request times out after `timeout` s; a broken connection
    (reset, closed) is opened again and the request retried once."""

    def __init__(self, addr: str, port: int, timeout: float = 1.0) -> None:
        self.addr, self.port, self.timeout = addr, port, timeout
        self.sock: socket.socket | None = None
        self.reconnects = 0

    def request(self, line: str) -> str:
        for attempt in (1, 2):
            if self.sock is None:
                self.sock = socket.create_connection((self.addr, self.port), self.timeout)
                self.reconnects += attempt - 1
            try:
                self.sock.sendall(f"{line}\n".encode())
                reply = self.sock.makefile("rb").readline()
                if reply:
                    return reply.decode().strip()
                raise ConnectionResetError("closed by the server")
            except (ConnectionResetError, BrokenPipeError):
                self.sock.close()
                self.sock = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture
def kv_server(ustack_host):
    """The key-value server on the kernel's side of the test's network."""
    server = socketserver.ThreadingTCPServer((ustack_host.kernel_addr, SERVER_PORT), KeyValue)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def kv(ustack_host, kv_server):
    """The proxy in front of it, its toxics for the test to set."""
    return ustack_host.proxy(PROXY_PORT, upstream_port=SERVER_PORT)


@pytest.mark.ustack(proxies=[f"{PROXY_PORT}=10.77.0.1:{SERVER_PORT}"],
                    toxics=["slicer average_size=1 delay=1000"])
def test_a_dependency_that_answers_a_byte_at_a_time(ustack_host, kv_server):
    # The proxy from the marker; its answers come one byte a millisecond apart.
    client = Client(ustack_host.addr, PROXY_PORT)
    assert client.request("SET d 1234567") == "OK"
    assert client.request("GET d") == "1234567"
    assert ustack_host.stats()["toxic_slicer"] == 1


def test_a_slow_dependency_is_only_slow(ustack_host, kv):
    ustack_host.call(kv.add_toxic, "latency latency=200")
    client = Client(ustack_host.addr, PROXY_PORT)
    start = time.monotonic()
    assert client.request("SET a 1") == "OK"
    assert client.request("GET a") == "1"
    assert time.monotonic() - start >= 0.4  # each answer 200 ms late, none lost


def test_a_reset_connection_is_retried_once(ustack_host, kv):
    # Both ends of each connection reset 300 ms after it opened (RST, as a crashed
    # server or a middlebox's timeout would).
    toxic = ustack_host.call(kv.add_toxic, "reset_peer timeout=300")
    client = Client(ustack_host.addr, PROXY_PORT)
    assert client.request("SET b 2") == "OK"
    time.sleep(0.5)
    ustack_host.call(kv.remove_toxic, toxic)
    assert client.request("GET b") == "2"  # on a fresh connection
    assert client.reconnects == 1


def test_a_silent_dependency_times_out(ustack_host, kv):
    client = Client(ustack_host.addr, PROXY_PORT, timeout=0.5)
    assert client.request("SET c 3") == "OK"
    toxic = ustack_host.call(kv.add_toxic, "timeout timeout=0")
    with pytest.raises(TimeoutError):
        client.request("GET c")
    ustack_host.call(kv.remove_toxic, toxic)  # the request it swallowed is gone
    assert ustack_host.stats()["toxic_timeout"] == 1
