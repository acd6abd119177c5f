"""IP-level behaviour: ICMP echo, RST for closed ports, a client routed from another subnet."""

from __future__ import annotations

import re
import time

import pytest

from .support import (
    USTACK_ADDR,
    nc_echo,
    pattern_sha256,
    random_file,
    require_tools,
    sha256,
)

pytestmark = pytest.mark.netns


def test_ping_answered(ustack_server):
    require_tools("ping")
    done = ustack_server.ns.run(
        ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", USTACK_ADDR], timeout=15
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert re.search(r"\b3 packets transmitted, 3 received\b", out), out
    assert out.count(f"from {USTACK_ADDR}") == 3, out


def test_ping_large_payload(ustack_server):
    require_tools("ping")
    done = ustack_server.ns.run(
        ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", "1400", USTACK_ADDR], timeout=15
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "1408 bytes from" in done.stdout.decode()


def test_closed_port_refused_python(ustack_server):
    result = ustack_server.ns.client_json(
        "probe", "--port", "12345", "--timeout", "5", timeout=15
    )
    assert result["result"] == "refused", result
    assert result["seconds"] < 1.0, result


def test_closed_port_refused_nc_and_curl(ustack_server):
    require_tools("nc", "curl")
    start = time.monotonic()
    done = ustack_server.ns.run(["nc", "-z", "-w", "5", USTACK_ADDR, "12345"], timeout=10)
    assert done.returncode != 0
    assert time.monotonic() - start < 2.0, "a RST refuses at once; no timeout"
    start = time.monotonic()
    done = ustack_server.ns.run(
        ["curl", "-sS", "--max-time", "5", f"http://{USTACK_ADDR}:12345/"], timeout=10
    )
    assert done.returncode == 7, done.stderr.decode()  # 7: failed to connect
    assert time.monotonic() - start < 2.0
    assert "refused" in done.stderr.decode().lower() or "couldn't connect" in (
        done.stderr.decode().lower()
    )


def test_client_on_another_subnet_via_kernel_routing(ustack_server, make_netns, tmp_path):
    """client ns 10.99.0.2 ── veth ── 10.99.0.1 ustack ns (forwarding) ── ustack0 ── 10.77.0.2"""
    require_tools("nc", "curl", "ping")
    server_ns = ustack_server.ns
    client = make_netns()
    client.ip("link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", server_ns.name)
    client.ip("addr", "add", "10.99.0.2/24", "dev", "vc")
    client.ip("link", "set", "vc", "up")
    client.ip("route", "add", "default", "via", "10.99.0.1")
    server_ns.ip("addr", "add", "10.99.0.1/24", "dev", "vs")
    server_ns.ip("link", "set", "vs", "up")
    # What `sysctl -w net.ipv4.ip_forward=1` does, for this namespace only (and without
    # needing procps installed).
    fwd = server_ns.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], timeout=10)
    assert fwd.returncode == 0, fwd.stderr.decode()
    assert server_ns.run(["cat", "/proc/sys/net/ipv4/ip_forward"], timeout=10).stdout == b"1\n"

    ping = client.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", USTACK_ADDR], timeout=15)
    assert ping.returncode == 0, ping.stdout.decode() + ping.stderr.decode()

    nc_echo(client, tmp_path / "in.bin", 200_000, timeout=30)

    got = client.run(["curl", "-sS", "--fail", "--max-time", "20",
                      f"http://{USTACK_ADDR}/bytes/1000000"], timeout=30)
    assert got.returncode == 0, got.stderr.decode()
    assert sha256(got.stdout) == pattern_sha256(1_000_000)

    refused = client.client_json("probe", "--port", "12345", "--timeout", "5", timeout=15)
    assert refused["result"] == "refused", refused


# --- IPv6 (issue 19, first step: the IP layer and ICMPv6) --------------------------------


@pytest.mark.parametrize("dst", ["fd77::2", "fe80::2%ustack0"])
def test_ping6_answered_on_the_global_and_the_link_local_address(ustack_server, dst):
    require_tools("ping")
    done = ustack_server.ns.run(["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst],
                                timeout=15)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert re.search(r"\b3 packets transmitted, 3 received\b", out), out


def test_ping6_bigger_than_the_mtu_is_reassembled_and_answered_in_fragments(ustack_server):
    require_tools("ping")
    done = ustack_server.ns.run(["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s",
                                 "4000", "fd77::2"], timeout=15)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "4008 bytes from fd77::2" in done.stdout.decode()


def test_without_ipv6_the_kernel_side_gets_no_address(netns, start_ustack):
    server = start_ustack(netns, "echo:7", args=["--addr6", "none"])
    assert " and fd77::2" not in server.stderr()
    shown = netns.ip("-6", "addr", "show", "dev", "ustack0").stdout
    assert "fd77::1" not in shown


@pytest.mark.parametrize("offload", [[], ["--no-offload"]], ids=["offload", "no-offload"])
def test_tcp_over_ipv6_curl_and_nc_sha256(netns, start_ustack, tmp_path, offload):
    """curl -6 and nc -6 to ustack's global address, and to its link-local one."""
    require_tools("curl", "nc")
    start_ustack(netns, "echo:7", "http:80", args=offload)
    n = 5_000_000
    for url in ("http://[fd77::2]", "http://[fe80::2%ustack0]"):
        got = netns.run(["curl", "-6", "-sS", "--fail", "--max-time", "30",
                         f"{url}/bytes/{n}"], timeout=45)
        assert got.returncode == 0, got.stderr.decode()
        assert sha256(got.stdout) == pattern_sha256(n)
    want = random_file(tmp_path / "up.bin", 2_000_000)
    with (tmp_path / "up.bin").open("rb") as stdin:
        echo = netns.run(["nc", "-6", "-N", "fd77::2", "7"], stdin=stdin, timeout=45)
    assert echo.returncode == 0, echo.stderr.decode()
    assert sha256(echo.stdout) == want


def test_tcp_over_ipv6_survives_faults(netns, start_ustack):
    """The fault injector cuts IPv6 super-packets into wire segments too."""
    require_tools("curl")
    start_ustack(netns, "http:80", args=["--loss", "2%", "--reorder", "2%", "--seed", "5"])
    n = 2_000_000
    got = netns.run(["curl", "-6", "-sS", "--fail", "--max-time", "60",
                     f"http://[fd77::2]/bytes/{n}"], timeout=75)
    assert got.returncode == 0, got.stderr.decode()
    assert sha256(got.stdout) == pattern_sha256(n)
