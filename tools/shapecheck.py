#!/usr/bin/env python3
"""How close ustack's shaper keeps to its rate: a download through `ustack serve --rate R
--queue Q` takes what R implies (the transfer's bytes on the wire, IP headers included,
over R), and beside it the same download from Linux's own TCP through Linux's token
bucket (`tc qdisc tbf rate R`) on a veth pair, in the same run. Everything runs in
private network namespaces this tool makes and deletes.

    sudo .venv/bin/python tools/shapecheck.py                 # 10, 50, 100 mbit; 3 s each
    sudo .venv/bin/python tools/shapecheck.py --rates 20mbit --seconds 5 --queue 100

Prints, per rate: the seconds the rate implies for the bytes that crossed, ustack's and
Linux's measured seconds, and each one's ratio to the implied time (1.00 = exact; the
issue asks for ustack within ±10 %).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ustack.link.shaper import parse_rate
from ustack.netns import Namespace, stop_process

MSS_WIRE = 1500  # bytes of a full segment on the wire, headers included
PAYLOAD = 1448  # data of a full segment with timestamps (both stacks use them)


def implied(size: int, rate: float) -> float:
    """Seconds `size` bytes of data take at `rate` on the wire (full segments)."""
    return size / PAYLOAD * MSS_WIRE * 8 / rate


def curl_seconds(ns: Namespace, url: str, timeout: float) -> float:
    start = time.monotonic()
    done = ns.run(["curl", "-sS", "--fail", "-o", "/dev/null", url], timeout=timeout)
    took = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"curl {url}: {done.stderr.decode().strip()}")
    return took


def ustack_run(rate: float, size: int, queue: int) -> float:
    with Namespace("ustack-shape") as ns:
        serve = ns.popen([sys.executable, "-m", "ustack", "serve", "--rate", str(rate),
                          "--queue", str(queue), "--no-offload", "http:80"],
                         stderr=subprocess.PIPE)
        try:
            assert serve.stderr is not None
            for _ in range(100):
                if b"serving" in serve.stderr.readline():
                    break
            return curl_seconds(ns, f"http://10.77.0.2/bytes/{size}", 120)
        finally:
            stop_process(serve)


def linux_run(rate: float, size: int, queue: int) -> float:
    """The kernel's TCP from a server namespace through tbf on its veth."""
    with Namespace("ustack-shape-srv") as server, Namespace("ustack-shape-cli") as client, \
            tempfile.TemporaryDirectory() as tmp:
        server.ip("link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns",
                  client.name)
        server.ip("addr", "add", "10.88.0.1/24", "dev", "s0")
        server.ip("link", "set", "s0", "up")
        client.ip("addr", "add", "10.88.0.2/24", "dev", "c0")
        client.ip("link", "set", "c0", "up")
        # A bucket of two full packets and a queue of `queue` of them, as the shaper's.
        server.run(["tc", "qdisc", "add", "dev", "s0", "root", "tbf", "rate", str(int(rate)),
                    "burst", str(2 * MSS_WIRE), "limit", str(queue * MSS_WIRE)],
                   timeout=10, check=True)
        (Path(tmp) / "blob").write_bytes(bytes(size))
        web = server.popen([sys.executable, "-m", "http.server", "-d", tmp, "-b",
                            "10.88.0.1", "8000"], stderr=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL)
        try:
            for _ in range(50):
                if client.run(["curl", "-s", "-o", "/dev/null", "http://10.88.0.1:8000/"],
                              timeout=5).returncode == 0:
                    break
                time.sleep(0.1)
            return curl_seconds(client, "http://10.88.0.1:8000/blob", 120)
        finally:
            stop_process(web)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10mbit,50mbit,100mbit")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="how long each download should take at its rate")
    parser.add_argument("--queue", type=int, default=100)
    args = parser.parse_args()
    print("rate      implied_s  ustack_s  ratio  linux_tbf_s  ratio")
    for text in args.rates.split(","):
        rate = parse_rate(text)
        size = int(args.seconds * rate / 8 * PAYLOAD / MSS_WIRE)
        want = implied(size, rate)
        ours = ustack_run(rate, size, args.queue)
        theirs = linux_run(rate, size, args.queue)
        print(f"{text:9s} {want:9.2f}  {ours:8.2f}  {ours / want:5.2f}  {theirs:11.2f}  "
              f"{theirs / want:5.2f}")


if __name__ == "__main__":
    main()
