"""Link middleware against the kernel: a capture (`--pcap`) and seeded faults (`--loss`...).

Transfers stay intact (SHA-256) while ustack's fault injector drops, duplicates,
reorders and corrupts packets in both directions; the capture opens in tcpdump and
dpkt; SIGUSR1 prints the counters; bad values exit 2. Sizes are modest and timeouts
generous: ustack's own sends recover only by retransmission timeout today (no fast
retransmit yet), so under 5% loss a 5 MB download from ustack takes some 40-55 s here
(each lost segment costs an RTO); the timeouts leave room for a slow machine.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import dpkt
import pytest

from .support import (
    KERNEL_ADDR,
    NSCLIENT,
    USTACK,
    USTACK_ADDR,
    curl_bytes,
    random_file,
    readline,
    require_tools,
    sha256,
)

pytestmark = pytest.mark.netns

FAULTS = ["--loss", "5%", "--reorder", "2%", "--dup", "1%", "--corrupt", "0.5%", "--seed", "7"]
STATS_LINE = re.compile(r"^ustack: (stats|stopped); (.*)$", re.M)


def stats_lines(text: str, kind: str) -> list[dict[str, int]]:
    found = []
    for m in STATS_LINE.finditer(text):
        if m.group(1) == kind:
            pairs = (item.split("=", 1) for item in m.group(2).split(", "))
            found.append({k: int(v) for k, v in pairs})
    return found


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s")


def test_transfers_intact_under_faults_with_capture(netns, start_ustack, tmp_path):
    require_tools("nc", "curl", "tcpdump")
    pcap = tmp_path / "link.pcap"
    server = start_ustack(netns, "echo:7", "http:80", args=["--pcap", str(pcap), *FAULTS])
    assert ("ustack: faults loss=0.05 dup=0.01 reorder=0.02 corrupt=0.005 delay=0ms "
            "jitter=0ms seed=7") in server.stderr()

    # 2 MB echoed through nc.
    src = tmp_path / "in.bin"
    want = random_file(src, 2_000_000)
    with src.open("rb") as stdin:
        done = netns.run(["nc", "-N", USTACK_ADDR, "7"], stdin=stdin, timeout=150)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == 2_000_000
    assert sha256(done.stdout) == want

    # SIGUSR1: a stats line, and the server keeps running.
    server.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: stats_lines(server.stderr(), "stats"), 5, "no stats line after SIGUSR1")
    live = stats_lines(server.stderr(), "stats")[0]
    assert live["fault_dropped"] > 0, live
    assert live["pcap_packets"] > 0, live
    assert server.proc.poll() is None, "SIGUSR1 must not stop the server"

    # 5 MB through curl.
    curl_bytes(netns, tmp_path / "bytes.bin", 5_000_000, max_time=180)

    status, _ = server.stop(signal.SIGTERM, timeout=5)
    assert status == 0, server.stderr()
    assert "Traceback" not in server.stderr()
    final = stats_lines(server.stderr(), "stopped")
    assert len(final) == 1, server.stderr()
    counters = final[0]
    for name in ("fault_dropped", "fault_duplicated", "fault_reordered"):
        assert counters[name] > 0, (name, counters)
    assert counters["fault_corrupted"] >= 0 and counters["fault_delayed"] == 0
    assert counters["fault_dropped"] >= live["fault_dropped"]
    # Roughly 5% of what crossed the link (both directions), not wildly off.
    crossed = counters["pcap_packets"]
    assert 0.02 < counters["fault_dropped"] / crossed < 0.10, counters

    # The capture is complete and readable: tcpdump, and dpkt record by record.
    shown = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "truncated" not in shown.stderr, shown.stderr
    assert "link-type RAW" in shown.stderr, shown.stderr
    assert re.search(rf"IP {re.escape(KERNEL_ADDR)}\.\d+ > {re.escape(USTACK_ADDR)}\.7: ",
                     shown.stdout)
    assert re.search(rf"IP {re.escape(USTACK_ADDR)}\.7 > {re.escape(KERNEL_ADDR)}\.\d+: ",
                     shown.stdout)
    assert re.search(rf"IP {re.escape(USTACK_ADDR)}\.80 > {re.escape(KERNEL_ADDR)}\.\d+: ",
                     shown.stdout)
    ours = theirs = 0
    last = 0.0
    now = time.time()
    with pcap.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == 101
        for ts, raw in reader:
            assert ts >= last, "time stamps go backwards"
            last = ts
            if raw[:1] and raw[0] >> 4 == 4 and len(raw) >= 20:
                src_addr = ".".join(map(str, raw[12:16]))
                ours += src_addr == USTACK_ADDR
                theirs += src_addr == KERNEL_ADDR
    assert ours > 1000 and theirs > 1000, (ours, theirs)
    assert now - 600 < last <= now + 1, "time stamps must be wall-clock"
    assert ours + theirs <= counters["pcap_packets"]


def test_random_seed_is_logged_and_faults_apply_to_connect(netns, tmp_path):
    """`ustack connect` with faults (no --seed): the seed is logged; data arrives intact."""
    theirs = tmp_path / "theirs.bin"
    theirs_sha = random_file(theirs, 300_000)
    listener = netns.popen(
        [sys.executable, str(NSCLIENT), "listen", "--port", "5011", "--send", str(theirs),
         "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert readline(listener, 10) == b"listening\n"
    done = netns.run([*USTACK, "connect", "--loss", "0.03", "--delay", "2:1", KERNEL_ADDR,
                      "5011"], input=b"hello", timeout=90)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, err
    m = re.search(r"^ustack: faults loss=0.03 .*delay=2ms jitter=1ms seed=(\d+)$", err, re.M)
    assert m, err
    assert sha256(done.stdout) == theirs_sha
    listener.communicate(timeout=60)


def test_no_fault_options_log_no_faults(netns, start_ustack, tmp_path):
    server = start_ustack(netns, "echo:7", args=["--seed", "5"])
    done = netns.run(["nc", "-N", USTACK_ADDR, "7"], input=b"hi\n", timeout=10)
    assert done.stdout == b"hi\n"
    server.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: stats_lines(server.stderr(), "stats"), 5, "no stats line after SIGUSR1")
    assert "ustack: faults" not in server.stderr()
    assert not any(k.startswith("fault_") for k in stats_lines(server.stderr(), "stats")[0])


API_SCRIPT = textwrap.dedent("""
    import asyncio, hashlib, json, sys
    import ustack

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main(src, pcap):
        async with ustack.Stack(pcap=pcap) as stack:
            await stack.start_server(echo, None, 7)
            seeds = [stack.faults(loss=0.05, delay_ms=5, jitter_ms=2, seed=42)]
            with open(src, "rb") as stdin:
                nc = await asyncio.create_subprocess_exec(
                    "nc", "-N", "10.77.0.2", "7", stdin=stdin,
                    stdout=asyncio.subprocess.PIPE)
                reading = asyncio.ensure_future(nc.communicate())
                await asyncio.sleep(0.5)
                seeds.append(stack.faults(reorder=0.1, dup=0.05, seed=43))  # replaced
                await asyncio.sleep(0.5)
                seeds.append(stack.faults())  # removed: held packets still go out
                out, _ = await asyncio.wait_for(reading, 60)
            stats = stack.stats()
        return {"seeds": seeds, "status": nc.returncode,
                "sha256": hashlib.sha256(out).hexdigest(), "stats": stats}

    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
""")


def test_api_faults_installed_replaced_and_removed_while_running(netns, tmp_path):
    require_tools("nc")
    src = tmp_path / "in.bin"
    want = random_file(src, 1_000_000)
    pcap = tmp_path / "api.pcap"
    script = tmp_path / "api_faults.py"
    script.write_text(API_SCRIPT)
    done = netns.run([sys.executable, str(script), str(src), str(pcap)], timeout=90)
    assert done.returncode == 0, done.stderr.decode()
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["seeds"] == [42, 43, None]
    assert got["status"] == 0
    assert got["sha256"] == want
    stats = got["stats"]
    assert stats["fault_dropped"] > 0 and stats["fault_delayed"] > 0, stats
    with pcap.open("rb") as f:
        assert len(list(dpkt.pcap.Reader(f))) == stats["pcap_packets"]


@pytest.mark.parametrize("args", [
    ["--loss", "150%"], ["--loss", "-1"], ["--loss", "abc"], ["--dup", "1.5"],
    ["--reorder", "nan"], ["--corrupt", ""], ["--delay", "x"], ["--delay", "5:-1"],
    ["--delay", "1:2:3"], ["--seed", "-4"], ["--seed", "abc"],
    ["--pcap", "/nonexistent-dir/x.pcap"],
], ids=" ".join)
@pytest.mark.parametrize("command", ["serve", "connect"])
def test_bad_link_values_exit_2(netns, command, args):
    cmd = [*USTACK, command, *args, *(["echo:7"] if command == "serve" else
                                      [KERNEL_ADDR, "5000"])]
    done = netns.run(cmd, timeout=15)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("ustack")]
    assert len(errors) == 1 and ": error: argument " in errors[0], err
    assert netns.ip("link", "show", "dev", "ustack0", check=False).returncode != 0
