"""`ustack serve --offload`: checksum and TSO offloads with the real kernel, SHA-256 checked.

The capture (taken between the device and the host) proves the offload path really ran:
super-packets bigger than the MTU in both directions at MTU 1500, partial TCP checksums
from the kernel that ustack accepted without verifying, and partial checksums from
ustack that the kernel completed; the kernel counts no checksum errors.
"""

from __future__ import annotations

import struct

import dpkt
import pytest

from ustack.checksum import ones_sum

from .support import (
    KERNEL_ADDR,
    USTACK_ADDR,
    curl_bytes,
    random_file,
    require_tools,
    sha256,
)

pytestmark = pytest.mark.netns


def _final_stats(stderr: str) -> dict[str, int]:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("ustack: stopped; ")]
    pairs = line.removeprefix("ustack: stopped; ").split(", ")
    return {k: int(v) for k, v in (p.split("=") for p in pairs)}


def _kernel_csum_errors(ns) -> int:
    done = ns.run(["nstat", "-az", "TcpInCsumErrors"], timeout=10)
    for line in done.stdout.decode().splitlines():
        if line.startswith("TcpInCsumErrors"):
            return int(line.split()[1])
    raise AssertionError(f"nstat printed no TcpInCsumErrors: {done.stdout!r}")


def _tcp_checksum_ok(ip: dpkt.ip.IP, raw: bytes) -> bool:
    pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 6, ip.len - 20)
    return (ones_sum(pseudo) + ones_sum(raw[20:ip.len])) % 0xFFFF == 0


def _echo(ns, tmp_path, size: int, name: str = "in.bin") -> None:
    src = tmp_path / name
    want = random_file(src, size)
    with src.open("rb") as stdin:
        done = ns.run(["nc", "-N", USTACK_ADDR, "7"], stdin=stdin, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == size
    assert sha256(done.stdout) == want


def _download(ns, tmp_path, n: int) -> None:
    curl_bytes(ns, tmp_path / "bytes.bin", n)


@pytest.mark.parametrize("mtu", [1500, 65535])
def test_offload_transfers_are_intact_and_use_super_packets(netns, start_ustack, tmp_path,
                                                            mtu):
    require_tools("nc", "curl", "nstat")
    pcap = tmp_path / "offload.pcap"
    server = start_ustack(netns, "echo:7", "http:80",
                          args=("--mtu", str(mtu), "--pcap", str(pcap)))
    # On by default: the start-up line says so.
    assert f"mtu {mtu}, offloads checksum, TSO" in server.stderr()
    before = _kernel_csum_errors(netns)

    _download(netns, tmp_path, 20_000_000)  # ustack -> kernel: TSO, partial checksums
    _echo(netns, tmp_path, 5_000_000)  # both ways

    status, _ = server.stop()
    assert status == 0, server.stderr()
    stats = _final_stats(server.stderr())
    assert stats.get("drop_tcp_bad_checksum", 0) == 0, stats
    assert _kernel_csum_errors(netns) == before, "the kernel saw bad TCP checksums"

    big = {"in": 0, "out": 0}
    partial = {"in": 0, "out": 0}
    with pcap.open("rb") as f:
        for _, raw in dpkt.pcap.Reader(f):
            if raw[0] >> 4 != 4:
                continue  # the kernel's IPv6 chatter
            ip = dpkt.ip.IP(raw)
            assert ip.len == len(raw), "the capture keeps whole super-packets"
            if ip.p != 6:
                continue
            way = "out" if ip.src == bytes(map(int, USTACK_ADDR.split("."))) else "in"
            assert way == "out" or ip.src == bytes(map(int, KERNEL_ADDR.split(".")))
            big[way] += len(raw) > 1500
            partial[way] += not _tcp_checksum_ok(ip, raw)
    assert partial["out"] > 0 and partial["in"] > 0, partial
    assert big["out"] > 0 and big["in"] > 0, big


def test_corruption_is_caught_with_offloads(netns, start_ustack, tmp_path):
    """A corrupted frame loses the kernel's word on its checksum, so it is verified and
    dropped on either side: the data still arrives intact."""
    require_tools("nc")
    server = start_ustack(netns, "echo:7",
                          args=("--corrupt", "0.01", "--seed", "11"))
    _echo(netns, tmp_path, 2_000_000)
    status, _ = server.stop()
    assert status == 0, server.stderr()
    stats = _final_stats(server.stderr())
    assert stats["fault_corrupted"] > 0, stats


def test_a_persistent_device_goes_back_to_no_offload(netns, start_ustack, tmp_path):
    """Offloads set by one run are cleared by the next run with --no-offload: the kernel
    must not keep handing super-packets to a reader that expects plain packets."""
    require_tools("nc", "curl")
    netns.ip("tuntap", "add", "dev", "ustack0", "mode", "tun")
    netns.ip("addr", "add", f"{KERNEL_ADDR}/24", "dev", "ustack0")
    netns.ip("link", "set", "dev", "ustack0", "up")
    first = start_ustack(netns, "echo:7", "http:80")
    _echo(netns, tmp_path, 1_000_000, "a.bin")
    assert first.stop()[0] == 0, first.stderr()
    second = start_ustack(netns, "echo:7", "http:80", args=("--no-offload",))
    assert "mtu 1500, no offloads" in second.stderr()
    _echo(netns, tmp_path, 1_000_000, "b.bin")
    _download(netns, tmp_path, 3_000_000)
    assert second.stop()[0] == 0, second.stderr()
    assert _final_stats(second.stderr()).get("drops", 0) <= 5  # IPv6 chatter only


def test_faults_act_per_wire_segment(netns, start_ustack, tmp_path):
    """With offloads and faults on, the injector cuts every super-packet into its wire
    segments first: ustack's packets reach the capture wire-sized, the kernel's
    super-packets are there as it sent them, and 1 % loss drops about 1 % of the wire
    segments (not of the super-packets). The echo still arrives intact."""
    require_tools("nc")
    pcap = tmp_path / "faults.pcap"
    server = start_ustack(netns, "echo:7",
                          args=("--loss", "0.01", "--seed", "5", "--pcap", str(pcap)))
    _echo(netns, tmp_path, 3_000_000)
    status, _ = server.stop()
    assert status == 0, server.stderr()
    stats = _final_stats(server.stderr())
    wire = {"in": 0, "out": 0}
    big_in = 0
    with pcap.open("rb") as f:
        for _, raw in dpkt.pcap.Reader(f):
            if raw[0] >> 4 != 4:
                continue
            ip = dpkt.ip.IP(raw)
            if ip.p != 6:
                continue
            if ip.src == bytes(map(int, USTACK_ADDR.split("."))):
                assert ip.len <= 1500, "ustack's super-packets were not cut"
                wire["out"] += 1
            else:
                big_in += ip.len > 1500
                wire["in"] += max(1, -(-len(ip.data.data) // 1448))  # its wire segments
    assert big_in > 0, "the kernel sent no super-packets"
    # The capture misses what ustack's side of the injector dropped (about 1 %).
    seen = wire["in"] + wire["out"] * 1.01
    assert 0.004 * seen < stats["fault_dropped"] < 0.02 * seen, (stats, wire)
