#!/usr/bin/env python3
"""Goodput under packet loss: ustack (NewReno, CUBIC) beside the kernel's own TCP.

In one private network namespace, nftables drops the same fraction of packets for both
servers (on the TUN towards ustack, on loopback towards a uvloop server on kernel
sockets running the very same HTTP service), and the same `curl` downloads /bytes/N
from each. The kernel runs the same algorithm (sysctl tcp_congestion_control in the
namespace: reno or cubic, when the host allows it; the table says which ran). Prints
MB/s and the ustack/kernel ratio per loss rate.

    sudo .venv/bin/python tools/lossbench.py [--mb 10] [--loss 1,5,10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
US, KERNEL, KERNEL_PORT = "10.77.0.2", "10.77.0.1", 8080
KERNEL_CC = {"newreno": "reno", "cubic": "cubic"}
TIMEOUT = 180


def kernel_server(port: int) -> None:
    """The comparison server: ustack's own HTTP service on kernel sockets (uvloop)."""
    sys.path.insert(0, str(ROOT))
    from ustack.services import protocol_factory

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol_factory("http"), KERNEL, port)
        print("ready", flush=True)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Namespace:
    def __init__(self) -> None:
        self.name = f"ustack-lossbench-{os.getpid()}"
        self.procs: list[subprocess.Popen] = []
        self.run(None, ["ip", "netns", "add", self.name])
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: list[str] | None, argv: list[str] | None = None,
            stdin: bytes | None = None, timeout: float = 20) -> str:
        done = subprocess.run(argv or self.argv(cmd or []), input=stdin, capture_output=True,
                              timeout=timeout, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv or cmd or [])}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def start(self, cmd: list[str], ready: str) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.procs.append(proc)
        deadline = time.monotonic() + 15
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if ready in line:
                return proc
            if not line and proc.poll() is not None:
                break
        raise RuntimeError(f"{' '.join(cmd)} did not start")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)


def kernel_congestion_control(ns: Namespace, wanted: str) -> str:
    """Ask for `wanted` in the namespace; a namespace may only pick from the host's
    tcp_allowed_congestion_control, so report what the kernel really uses."""
    with contextlib.suppress(RuntimeError):
        ns.run(["sysctl", "-qw", f"net.ipv4.tcp_congestion_control={wanted}"])
    return ns.run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).strip()


def set_loss(ns: Namespace, per_mille: int) -> None:
    """Drop `per_mille`/1000 of the packets of both connections, each packet once."""
    ns.run(["nft", "flush", "ruleset"])
    if not per_mille:
        return
    drop = f"numgen random mod 1000 < {per_mille} drop"
    ruleset = (
        "table inet lossbench {\n"
        # Loopback packets pass the output hook once; TUN packets leave (towards ustack)
        # by output and come back (from ustack) by input.
        f'  chain out {{ type filter hook output priority 0; oifname {{ "lo", "ustack0" }} '
        f"{drop}; }}\n"
        f'  chain in {{ type filter hook input priority 0; iifname "ustack0" {drop}; }}\n'
        "}\n"
    )
    ns.run(["nft", "-f", "-"], stdin=ruleset.encode())


def download(ns: Namespace, host: str, port: int, nbytes: int) -> float:
    """MB/s of one `curl` download of /bytes/N (size checked)."""
    out = ns.run(["curl", "-sS", "--fail", "--max-time", str(TIMEOUT), "-o", "/dev/null", "-w",
                  "%{size_download} %{time_total}", f"http://{host}:{port}/bytes/{nbytes}"],
                 timeout=TIMEOUT + 10)
    size, seconds = out.split()
    if int(size) != nbytes:
        raise RuntimeError(f"short download: {size} of {nbytes} bytes")
    return nbytes / float(seconds) / 1e6


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    nbytes = int(args.mb * 1e6)
    for cc in args.cc:
        ns = Namespace()
        try:
            kernel_cc = kernel_congestion_control(ns, KERNEL_CC[cc])
            py = sys.executable
            ns.start([py, "-m", "ustack", "serve", "--congestion", cc, "http:80"],
                     "ustack: serving")
            ns.start([py, str(Path(__file__).resolve()), "--kernel-server"], "ready")
            for loss in args.loss:
                set_loss(ns, round(loss * 10))
                ours = [download(ns, US, 80, nbytes) for _ in range(args.repeat)]
                theirs = [download(ns, KERNEL, KERNEL_PORT, nbytes) for _ in range(args.repeat)]
                row = {"loss_percent": loss, "congestion": cc, "kernel_congestion": kernel_cc,
                       "ustack_mb_s": statistics.median(ours),
                       "kernel_mb_s": statistics.median(theirs)}
                row["ratio"] = row["ustack_mb_s"] / row["kernel_mb_s"]
                rows.append(row)
                print(f"  loss {loss}% {cc}: ustack {row['ustack_mb_s']:.1f} MB/s, kernel "
                      f"{row['kernel_mb_s']:.1f} MB/s", file=sys.stderr, flush=True)
        finally:
            ns.close()
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=10.0, help="download size in MB (default 10)")
    p.add_argument("--loss", type=lambda s: [float(x) for x in s.split(",")],
                   default=[1.0, 5.0, 10.0], help="loss percentages (default 1,5,10)")
    p.add_argument("--cc", type=lambda s: s.split(","), default=["newreno", "cubic"],
                   help="congestion controls (default newreno,cubic)")
    p.add_argument("--repeat", type=int, default=3, help="downloads per cell; median")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--kernel-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if any(not 0 <= x < 100 for x in args.loss) or args.mb <= 0 or args.repeat < 1:
        p.error("loss in [0, 100), --mb > 0 and --repeat >= 1 please")
    if any(cc not in KERNEL_CC for cc in args.cc):
        p.error(f"--cc takes {', '.join(KERNEL_CC)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kernel_server:
        kernel_server(KERNEL_PORT)
        return 0
    missing = [t for t in ("ip", "nft", "curl") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing or not os.path.exists("/dev/net/tun"):
        why = f"missing {', '.join(missing)}" if missing else "needs root and /dev/net/tun"
        print(f"lossbench: {why}", file=sys.stderr)
        return 2
    rows = measure(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"goodput of a {args.mb:g} MB download under loss (median of {args.repeat})")
    print("| loss | ustack cc | ustack MB/s | kernel cc | kernel MB/s | ustack/kernel |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['loss_percent']:g}% | {r['congestion']} | {r['ustack_mb_s']:.2f} | "
              f"{r['kernel_congestion']} | {r['kernel_mb_s']:.2f} | {r['ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
