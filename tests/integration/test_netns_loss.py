"""Loss recovery against the kernel: 20 MB each way through a lossy TUN.

Loss comes either from ustack's own fault injector (both directions, with reordering,
duplication and corruption) or from the kernel side, where nftables drops 3% of the
packets crossing the TUN in each direction.
"""

from __future__ import annotations

import re

import pytest

from .support import USTACK_ADDR, file_sha256, pattern_sha256, random_file, require_tools

pytestmark = pytest.mark.netns

SIZE = 20_000_000
FAULTS = ("--loss", "5%", "--reorder", "2%", "--dup", "1%", "--corrupt", "0.5%", "--seed", "7")


def echo_and_download(server, tmp_path) -> None:
    ns = server.ns
    src = tmp_path / "in.bin"
    want = random_file(src, SIZE)
    echoed = tmp_path / "echoed.bin"
    with src.open("rb") as stdin, echoed.open("wb") as stdout:
        done = ns.run(["nc", "-N", USTACK_ADDR, "7"], stdin=stdin, stdout=stdout, timeout=240)
    assert done.returncode == 0, done.stderr.decode()
    assert echoed.stat().st_size == SIZE
    assert file_sha256(echoed) == want
    dst = tmp_path / "bytes.bin"
    done = ns.run(
        ["curl", "-sS", "--fail", "--max-time", "200", "-o", str(dst),
         f"http://{USTACK_ADDR}/bytes/{SIZE}"],
        timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert file_sha256(dst) == pattern_sha256(SIZE)


def final_counters(server) -> dict[str, int]:
    status, _ = server.stop()
    assert status == 0, server.stderr()
    line = [ln for ln in server.stderr().splitlines() if "stopped;" in ln][-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
def test_fault_injector_both_directions(start_ustack, netns, tmp_path, congestion):
    require_tools("nc", "curl")
    server = start_ustack(netns, "echo:7", "http:80",
                          args=(*FAULTS, "--congestion", congestion))
    echo_and_download(server, tmp_path)
    counters = final_counters(server)
    assert counters["fault_dropped"] > 0 and counters["fault_reordered"] > 0
    assert counters["fault_duplicated"] > 0 and counters["fault_corrupted"] > 0
    assert counters.get("tcp_fast_retransmits", 0) > 0  # recovery, not just timeouts


def test_kernel_side_loss_with_nftables(start_ustack, netns, tmp_path):
    require_tools("nc", "curl", "nft")
    server = start_ustack(netns, "echo:7", "http:80")
    drop = "numgen random mod 100 < 3 drop"
    ruleset = (
        "table inet lossy {\n"
        f'  chain input {{ type filter hook input priority 0; iifname "ustack0" {drop}; }}\n'
        f'  chain output {{ type filter hook output priority 0; oifname "ustack0" {drop}; }}\n'
        "}\n"
    )
    done = netns.run(["nft", "-f", "-"], input=ruleset.encode(), timeout=10)
    assert done.returncode == 0, done.stderr.decode()
    echo_and_download(server, tmp_path)
    listed = netns.run(["nft", "list", "ruleset"], timeout=10).stdout.decode()
    assert "numgen random mod 100 < 3" in listed
    counters = final_counters(server)
    assert counters.get("tcp_fast_retransmits", 0) + counters.get("tcp_rto", 0) > 0
