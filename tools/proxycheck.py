#!/usr/bin/env python3
"""How exactly ustack's proxy toxics act: a kernel HTTP server on the kernel's side of
the TUN (`python -m http.server` at 10.77.0.1:8000), fetched by the kernel's curl
through `ustack serve proxy:8080=10.77.0.1:8000`, in a private namespace this tool makes
and deletes:

- latency: the time to the first byte with `--toxic 'latency latency=MS'` less the same
  without toxics, medians of `--repeat` fetches each (the issue asks MS ± 10 ms);
- bandwidth: a body of `--mb` MB with `--toxic 'bandwidth rate=KBPS'` against the time
  the rate implies (± 15 %); and the same body through the proxy without the toxic.

    sudo .venv/bin/python tools/proxycheck.py            # latency 50 ms; 5 MB at 1000 KB/s
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ustack.netns import Namespace, stop_process


def serve(ns: Namespace, tmp: str, *toxics: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """ustack's proxy with `toxics`, and the kernel's HTTP server behind it."""
    flags = [f for t in toxics for f in ("--toxic", t)]
    proxy = ns.popen([sys.executable, "-m", "ustack", "serve", *flags,
                      "proxy:8080=10.77.0.1:8000"], stderr=subprocess.PIPE)
    assert proxy.stderr is not None
    for _ in range(100):
        if b"serving" in proxy.stderr.readline():
            break
    web = ns.popen([sys.executable, "-m", "http.server", "8000", "--bind", "10.77.0.1",
                    "--directory", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if ns.run(["curl", "-s", "-o", "/dev/null", "http://10.77.0.1:8000/"],
                  timeout=5).returncode == 0:
            break
        time.sleep(0.1)
    return proxy, web


def fetch(ns: Namespace, url: str) -> tuple[float, float]:
    """(seconds to the first byte, seconds in all) of one curl fetch."""
    done = ns.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w",
                   "%{time_starttransfer} %{time_total}", url], timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"curl {url}: {done.stderr.decode().strip()}")
    first, total = done.stdout.decode().split()
    return float(first), float(total)


def measure(tmp: str, repeat: int, *toxics: str, url: str = "small") -> list[tuple[float, float]]:
    with Namespace("ustack-proxycheck") as ns:
        proxy, web = serve(ns, tmp, *toxics)
        try:
            return [fetch(ns, f"http://10.77.0.2:8080/{url}") for _ in range(repeat)]
        finally:
            stop_process(web)
            stop_process(proxy)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=50.0, help="ms (default 50)")
    p.add_argument("--rate", type=float, default=1000.0, help="KB/s (default 1000)")
    p.add_argument("--mb", type=float, default=5.0, help="body size (default 5)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    if not (0 < args.latency <= 10_000 and args.rate > 0 and 0 < args.mb <= 100
            and 1 <= args.repeat <= 20):
        p.error("--latency in (0, 10000], --rate > 0, --mb in (0, 100], --repeat 1..20")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "small").write_bytes(bytes(1000))
        (Path(tmp) / "big").write_bytes(bytes(int(args.mb * 1e6)))
        plain = statistics.median(f for f, _ in measure(tmp, args.repeat))
        slow = statistics.median(f for f, _ in measure(
            tmp, args.repeat, f"latency latency={args.latency:g}"))
        added = (slow - plain) * 1000
        print(f"latency {args.latency:g} ms: first byte {plain * 1000:.1f} ms without, "
              f"{slow * 1000:.1f} ms with; added {added:.1f} ms "
              f"({added - args.latency:+.1f} ms)")
        want = args.mb * 1e6 / (args.rate * 1000)
        took = statistics.median(t for _, t in measure(
            tmp, min(args.repeat, 3), f"bandwidth rate={args.rate:g}", url="big"))
        free = statistics.median(t for _, t in measure(tmp, min(args.repeat, 3), url="big"))
        print(f"bandwidth {args.rate:g} KB/s, {args.mb:g} MB: implied {want:.2f} s, "
              f"through the proxy {took:.2f} s ({took / want:.3f}); without the toxic "
              f"{free:.2f} s")


if __name__ == "__main__":
    main()
