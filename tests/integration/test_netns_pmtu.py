"""Path MTU discovery on real traffic through real routers: a download from ustack and
the same download from Linux's own TCP cross a link narrower than the servers' own, in
the same topology and the same run.

    client ns  c0 ─1500─ e0  edge ns  e1 ─NARROW─ r0  router ns  r1 ─1500─ s0  server ns
                                                     ustack0 (1500) ── ustack  (kernel HTTP)

The client's own link is 1500 bytes, so its SYN offers a full-size MSS (1460 over IPv4,
1440 over IPv6) and both servers start with segments too big for the narrow link (1000
bytes for IPv4, IPv6's minimum 1280). The router cannot forward them: it drops them and
answers the sender with a Fragmentation Needed (ustack's and Linux's IPv4 packets carry
DF) or a Packet Too Big, over the TUN for ustack and over r1 for the kernel. Each server
must lower its MSS and resend; the downloads complete with the right SHA-256 only if
both did. The two routers forward with the namespaces' own sysctls (never the host's).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from .support import (
    Netns,
    file_sha256,
    kernel_tcp_counters,
    pattern_sha256,
    readline,
    require_tools,
)
from .test_netns_crowd import CROWD, stop_echo
from .test_netns_tcp import stop_for_counters

pytestmark = pytest.mark.netns

SIZE = 5_000_000
MAX_TIME = 30  # curl's bound for one download, seconds
KERNEL_PORT = 8080

# family -> (the narrow link's MTU, ustack's address, the kernel server's address, the
# client's address)
FAMILIES = {
    "ipv4": (1000, "10.77.0.2", "10.0.3.2", "10.0.1.2"),
    "ipv6": (1280, "fd77::2", "fd03::2", "fd01::2"),
}


def sysctl(ns: Netns, *settings: str) -> None:
    """``sysctl -w`` inside ``ns`` (a test namespace's own settings)."""
    done = ns.run(["sysctl", "-qw", *settings], timeout=10)
    assert done.returncode == 0, done.stderr.decode()


def veth(a: Netns, a_name: str, b: Netns, b_name: str, mtu: int,
         a_addrs: tuple[str, ...], b_addrs: tuple[str, ...]) -> None:
    """A veth pair made inside ``a`` with its peer moved straight to ``b`` (it never
    exists in the namespace the tests run in); ``mtu`` on both ends."""
    a.ip("link", "add", a_name, "mtu", str(mtu), "type", "veth", "peer", "name", b_name,
         "mtu", str(mtu), "netns", b.name)
    for ns, dev, addrs in ((a, a_name, a_addrs), (b, b_name, b_addrs)):
        for addr in addrs:
            ns.ip("addr", "add", addr, "dev", dev)
        ns.ip("link", "set", dev, "up")


class NarrowPath:
    """Four namespaces: a client, an edge router, the router that holds ustack's TUN
    (ustack's own ``serve`` creates it there, with 10.77.0.1/24 and fd77::1/64), and a
    kernel server behind the router on a 1500-byte link; the edge-router link is
    ``narrow`` bytes on both ends."""

    def __init__(self, make_netns, narrow: int) -> None:
        self.client, self.edge = make_netns(), make_netns()
        self.router, self.server = make_netns(), make_netns()
        for ns in (self.client, self.edge, self.router, self.server):
            # No duplicate address detection on the links to come (link-local addresses
            # included): every IPv6 address is usable at once, not tentative for a
            # second or two.
            sysctl(ns, "net.ipv6.conf.default.accept_dad=0")
        # Below 1280 bytes a link carries no IPv6 (Linux disables it on the device):
        # the IPv4 case's narrow link gets IPv4 addresses only.
        ipv6 = narrow >= 1280
        veth(self.client, "c0", self.edge, "e0", 1500,
             ("10.0.1.2/24", "fd01::2/64"), ("10.0.1.1/24", "fd01::1/64"))
        veth(self.edge, "e1", self.router, "r0", narrow,
             ("10.0.2.1/24", *(("fd02::1/64",) if ipv6 else ())),
             ("10.0.2.2/24", *(("fd02::2/64",) if ipv6 else ())))
        veth(self.router, "r1", self.server, "s0", 1500,
             ("10.0.3.1/24", "fd03::1/64"), ("10.0.3.2/24", "fd03::2/64"))
        for ns, v4, v6 in ((self.client, "10.0.1.1", "fd01::1"),
                           (self.edge, "10.0.2.2", "fd02::2" if ipv6 else None),
                           (self.server, "10.0.3.1", "fd03::1")):
            ns.ip("route", "add", "default", "via", v4)
            if v6 is not None:
                ns.ip("-6", "route", "add", "default", "via", v6)
        self.router.ip("route", "add", "10.0.1.0/24", "via", "10.0.2.1")
        if ipv6:
            self.router.ip("-6", "route", "add", "fd01::/64", "via", "fd02::1")
        for ns in (self.edge, self.router):
            # Before ustack makes its TUN: a device made later inherits the defaults
            # these set too.
            sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

    def warm_up(self, addr: str) -> None:
        """Ping ``addr`` from the client until it answers (at most 10 tries of 1 s):
        every neighbour on the way is then resolved. Without this the first IPv6
        download's SYN sometimes waited a second in namespaces this fresh (the client
        sent two neighbour solicitations for one answer and counted an RTO,
        TcpExtTCPTimeouts), which has nothing to do with the path's MTU."""
        for _ in range(10):
            done = self.client.run(["ping", "-c", "1", "-W", "1", addr], timeout=10)
            if done.returncode == 0:
                return
        raise AssertionError(f"{addr} never answered a ping: {done.stdout.decode()}")


def url(addr: str, port: int) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/bytes/{SIZE}"


def download(path: NarrowPath, addr: str, port: int, dst) -> float:
    """curl in the client fetches /bytes/SIZE; checks status, size and SHA-256; the
    seconds it took."""
    start = time.monotonic()
    done = path.client.run(
        ["curl", "-sS", "--fail", "--max-time", str(MAX_TIME), "-o", str(dst),
         "-w", "%{http_code} %{size_download}", url(addr, port)],
        timeout=MAX_TIME + 20)
    took = time.monotonic() - start
    assert done.returncode == 0, f"{url(addr, port)}: {done.stderr.decode()}"
    assert done.stdout.decode() == f"200 {SIZE}", done.stdout
    assert file_sha256(dst) == pattern_sha256(SIZE)
    return took


def kernel_download(path: NarrowPath, addr: str, dst) -> tuple[float, int]:
    """The same download from ustack's HTTP service on the kernel's sockets in the
    server namespace (tests/integration/crowd.py): seconds, and the server's
    TcpRetransSegs during it."""
    proc = path.server.popen(
        [sys.executable, CROWD, "serve", "--stack", "kernel", "--service", "http",
         "--addr", addr, "--port", str(KERNEL_PORT), "--backlog", "128"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = readline(proc, 20)
    assert line.strip() == b'"ready"', proc.stderr.read1().decode()
    before = kernel_tcp_counters(path.server)
    try:
        took = download(path, addr, KERNEL_PORT, dst)
    finally:
        after = kernel_tcp_counters(path.server)
        stop_echo(proc)
    return took, after["TcpRetransSegs"] - before["TcpRetransSegs"]


@pytest.mark.parametrize("offload", ["offload", "no-offload"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_download_across_a_narrow_link_shrinks_its_segments_like_the_kernel(
        make_netns, start_ustack, tmp_path, family, offload):
    require_tools("curl", "ping")
    narrow, ustack_addr, kernel_addr, client_addr = FAMILIES[family]
    path = NarrowPath(make_netns, narrow)
    path.warm_up(kernel_addr)

    # Linux first: its server must need the router's message as much as ustack does.
    kernel_took, kernel_rtx = kernel_download(path, kernel_addr, tmp_path / "kernel.bin")
    # Its route to the client now holds the path's MTU (a cached exception).
    kernel_route = path.server.ip("route", "get", client_addr).stdout.strip()

    server = start_ustack(path.router, "http:80", args=[f"--{offload}"])
    ustack_took = download(path, ustack_addr, 80, tmp_path / "ustack.bin")
    stats = stop_for_counters(server)
    ustack_rtx = stats.get("tcp_retransmitted_segments", 0)

    print(f"\n[pmtu {family} {offload}] narrow MTU {narrow}, {SIZE} bytes: "
          f"ustack {ustack_took:.2f} s, {ustack_rtx} segments resent, "
          f"icmp_too_big_in={stats.get('icmp_too_big_in', 0)}, "
          f"tcp_path_mtu_lowered={stats.get('tcp_path_mtu_lowered', 0)}, "
          f"drop_icmp_out_of_window={stats.get('drop_icmp_out_of_window', 0)}, "
          f"drop_icmp_no_connection={stats.get('drop_icmp_no_connection', 0)}; "
          f"kernel {kernel_took:.2f} s, TcpRetransSegs {kernel_rtx} "
          f"(route: {kernel_route})")
    # The kernel's server learned the path's MTU from the router too.
    assert f"mtu {narrow}" in kernel_route, kernel_route
    assert stats.get("icmp_too_big_in", 0) >= 1, stats
    assert stats.get("tcp_path_mtu_lowered", 0) >= 1, stats
    assert ustack_rtx <= 2 * kernel_rtx + 40, (ustack_rtx, kernel_rtx)
