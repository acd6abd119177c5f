#!/usr/bin/env python3
"""Goodput under loss, delay and reordering: ustack beside the kernel's own TCP, on one
impaired path that acts on both alike.

    client ns  lc 10.0.1.2 ══ relay ══ lr 10.0.1.1  router ns (ip_forward=1)
                                                  ustack0 10.77.0.1/24 ── ustack 10.77.0.2

The router holds ustack (`ustack serve http:80 discard:9`) and a kernel server with the
same services on its own address (uvloop, kernel sockets). Between the namespaces a
relay process (this tool, `--relay`) joins two TUN devices, one in each, and impairs
every packet alike in each direction: half the RTT of delay, a share dropped, a share
held back behind the packets that follow (reordered). This kernel has no `netem`; a TUN
carries one segment per packet, so a drop is one segment for the kernel as for ustack.
Both directions are measured:

- ustack sends: a kernel client downloads /bytes/N from each server; the kernel server
  runs ustack's algorithm (CUBIC, or Reno for NewReno).
- ustack receives: a kernel client with the given algorithm (CUBIC, BBR) uploads N bytes
  to each discard service and waits for its close.

A namespace may only choose from the host's `tcp_allowed_congestion_control`; the tool
sets the algorithm per socket (TCP_CONGESTION, which root may set to any available one)
and reports what the kernel used. Retransmissions are the sender's: ustack's counters
(SIGUSR1) or the sending namespace's TcpRetransSegs. Medians of --repeat transfers.

    sudo .venv/bin/python tools/lossbench.py [--mb 2] [--loss 1,2,5] [--reorder 0,5]
        [--rtt-ms 10] [--send newreno,cubic] [--receive cubic,bbr] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ustack.netns import Namespace

CLIENT, ROUTER, US = "10.0.1.2", "10.0.1.1", "10.77.0.2"
HTTP, DISCARD, KERNEL_HTTP, KERNEL_DISCARD = 80, 9, 8080, 8009
KERNEL_CC = {"newreno": "reno", "cubic": "cubic", "bbr": "bbr"}
TIMEOUT = 120.0  # seconds one transfer may take
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
MTU = 1500
RELAY_QUEUE = 50_000  # packets each relay TUN may queue


# --- the relay ------------------------------------------------------------------------------


class Impairment:
    """What the relay does to each packet of one direction (reconfigured on SIGHUP from
    a file: `loss reorder delay_ms`)."""

    def __init__(self) -> None:
        self.loss = 0.0  # fraction dropped
        self.reorder = 0.0  # fraction held back by `hold` more than the rest
        self.delay = 0.0  # seconds, every packet
        self.hold = 0.0  # seconds: how far a reordered packet falls behind


def relay(client_ns: str, router_ns: str, control: str) -> None:
    """Join a TUN `lc` in `client_ns` to a TUN `lr` in `router_ns`, impairing both ways."""
    import fcntl
    import heapq
    import random
    import struct

    sys.path.insert(0, str(ROOT))
    from ustack import netns

    fds = {}
    for ns, dev in ((client_ns, "lc"), (router_ns, "lr")):
        ns_fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        netns.setns(ns_fd)  # TUNSETIFF creates the device in the caller's namespace
        os.close(ns_fd)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
        fds[dev] = fd
    rng = random.Random(1)
    impair = Impairment()

    def reconfigure() -> None:
        with open(control) as f:
            loss, reorder, delay_ms = (float(x) for x in f.read().split())
        impair.loss, impair.reorder = loss / 100, reorder / 100
        impair.delay = delay_ms / 1000
        impair.hold = max(0.001, impair.delay / 2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: list[tuple[float, int, int, bytes]] = []  # (due, order, fd, packet)
        order = 0
        timer: list[asyncio.TimerHandle | None] = [None]

        def release() -> None:
            timer[0] = None
            now = loop.time()
            while queue and queue[0][0] <= now:
                _, _, fd, packet = heapq.heappop(queue)
                with contextlib.suppress(OSError):  # a full queue drops, as a wire would
                    os.write(fd, packet)
            if queue:
                timer[0] = loop.call_at(queue[0][0], release)

        def readable(src: int, dst: int) -> None:
            nonlocal order
            now = loop.time()
            for _ in range(256):
                try:
                    packet = os.read(src, MTU + 64)
                except BlockingIOError:
                    break
                if rng.random() < impair.loss:
                    continue
                due = now + impair.delay
                if rng.random() < impair.reorder:
                    due += impair.hold
                order += 1
                heapq.heappush(queue, (due, order, dst, packet))
            if queue and (timer[0] is None or timer[0].when() > queue[0][0]):
                if timer[0] is not None:
                    timer[0].cancel()
                timer[0] = loop.call_at(queue[0][0], release)

        loop.add_reader(fds["lc"], readable, fds["lc"], fds["lr"])
        loop.add_reader(fds["lr"], readable, fds["lr"], fds["lc"])
        loop.add_signal_handler(signal.SIGHUP, reconfigure)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the helpers that run inside the namespaces ---------------------------------------------


def _set_cc(sock: socket.socket, cc: str) -> str:
    """Ask for `cc` on `sock`; what the kernel uses."""
    with contextlib.suppress(OSError):  # reported as what it is
        sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, cc.encode())
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0").decode()


def kernel_server(cc: str) -> None:
    """ustack's own HTTP and discard services on kernel sockets, with `cc`."""
    sys.path.insert(0, str(ROOT))
    from ustack.services import protocol_factory

    async def main() -> None:
        loop = asyncio.get_running_loop()
        used = set()
        for port, name in ((KERNEL_HTTP, "http"), (KERNEL_DISCARD, "discard")):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            used.add(_set_cc(sock, cc))  # accepted connections inherit it
            sock.bind((ROUTER, port))
            await loop.create_server(protocol_factory(name), sock=sock)
        print(f"ready {','.join(sorted(used))}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def client(direction: str, host: str, port: int, nbytes: int, cc: str) -> None:
    """One transfer from the client namespace; prints JSON: seconds, bytes, algorithm.

    The clock starts once connected: a lost SYN or SYN-ACK costs either stack the
    initial RTO of RFC 6298 (1 s, 3x a 10 MB transfer at 30 MB/s), which is not the
    loss recovery compared here: at 5 % loss a lost SYN-ACK made 2 of 3 of ustack's runs
    of a cell take 4x as long, twice (its tcp_rto and the client's TCPTimeouts rose by
    one in each slow run, no tail loss probe).
    It stops when the server's FIN arrives: the end of a transfer is recovered too."""
    sock = socket.socket()
    used = _set_cc(sock, cc) if cc else ""
    sock.settimeout(TIMEOUT)
    sock.connect((host, port))
    start = time.monotonic()
    got = 0
    if direction == "download":
        sock.sendall(f"GET /bytes/{nbytes} HTTP/1.0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
        got = len(head.partition(b"\r\n\r\n")[2])
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    else:
        block = bytes(1 << 20)
        left = nbytes
        while left:
            left -= sock.send(block[:min(left, len(block))])
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # the discard service closes after our FIN
            pass
        got = nbytes
    seconds = time.monotonic() - start
    sock.close()
    print(json.dumps({"seconds": seconds, "bytes": got, "cc": used}))


# The kernel sender's counters --stats prints after each transfer (nstat's names).
SENDER_COUNTERS = frozenset({
    "RetransSegs", "TCPLossProbes", "TCPLossProbeRecovery", "TCPTimeouts", "TCPSackRecovery",
    "TCPFastRetrans", "TCPLostRetransmit", "TCPSpuriousRTOs", "TCPDSACKRecv",
    "TCPDSACKOfoRecv", "TCPDSACKUndo", "TCPSackFailures", "TCPLossUndo", "TCPFullUndo",
    "TCPPartialUndo", "TCPSACKReorder", "TCPTSReorder", "TCPRenoReorder", "TCPSackMerged",
    "TCPSACKDiscard", "TCPDSACKIgnoredOld", "TCPDSACKIgnoredNoUndo", "TCPSpuriousRtxHostQueues",
    "TCPAckCompressed", "TCPRcvCoalesce", "TCPWinProbe", "TCPZeroWindowDrop", "InSegs",
    "OutSegs", "TCPSackShifted", "TCPSackShiftFallback", "TCPChallengeACK", "PAWSEstab",
})
# The kernel receiver's side, beside ustack's own counters (drop_tcp_paws, tcp_ooo_queued,
# tcp_dsack_sent, tcp_segments_out): PAWS drops of new text, out-of-order queueing, D-SACKs.
RECEIVER_COUNTERS = frozenset({
    "PAWSEstab", "TCPOFOQueue", "TCPOFODrop", "TCPOFOMerge", "TCPDSACKOldSent",
    "TCPDSACKOfoSent", "DelayedACKs", "TCPAckCompressed", "OutSegs", "InSegs",
})


# --- the topology ---------------------------------------------------------------------------


class Netns(Namespace):
    """The package's namespace helper (`ustack.netns.Namespace`) with what this tool
    reads: a command's output, a server's ready line, the kernel's TCP counters."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"ustack-lossbench-{tag}")

    def output(self, cmd: list[str], timeout: float = 20) -> str:
        done = self.run(cmd, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def start(self, cmd: list[str], ready: str) -> tuple[subprocess.Popen, str]:
        proc = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
        line = read_until(proc, ready, 20)
        if line is None:
            raise RuntimeError(f"{' '.join(cmd)} did not start")
        return proc, line

    def retrans(self) -> int:
        """TcpRetransSegs of this namespace's kernel TCP."""
        return self.tcp_counters().get("RetransSegs", 0)

    def tcp_counters(self) -> dict[str, int]:
        """This namespace's kernel TCP counters (Tcp: and TcpExt:, as nstat names them
        without the prefix)."""
        counters: dict[str, int] = {}
        for path in ("/proc/net/snmp", "/proc/net/netstat"):
            lines = self.output(["cat", path]).splitlines()
            for names, values in zip(lines[::2], lines[1::2], strict=False):
                if names.startswith(("Tcp:", "TcpExt:")):
                    pairs = zip(names.split()[1:], values.split()[1:], strict=True)
                    counters.update((k, int(v)) for k, v in pairs)
        return counters



def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str | None:
    """The first line of `proc`'s output that holds `marker` (None at EOF or timeout)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buffered = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read(65536)
        if chunk:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if marker in line.decode(errors="replace"):
                    return line.decode(errors="replace")
        elif proc.poll() is not None:
            return None
        else:
            time.sleep(0.02)
    return None


def _cpu_now(*pids: int) -> list[float]:
    """CPU seconds used so far by each of `pids`, then the machine's idle CPU seconds and
    its CPU seconds in all (/proc/stat: every CPU together)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found.append((int(fields[11]) + int(fields[12])) / tick)
        except (OSError, IndexError):
            found.append(0.0)
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:]]
    return [*found, (jiffies[3] + jiffies[4]) / tick, sum(jiffies[:8]) / tick]


class ImpairedPath:
    """The two namespaces, the relay between them, both servers."""

    def __init__(self, ustack_cc: str, kernel_cc: str, control: str,
                 stats: bool = False, ustack_args: tuple[str, ...] = (),
                 profile: str | None = None) -> None:
        self.client = Netns("c")
        self.router = Netns("r")
        self.control = control
        self.stats = stats  # print ustack's counters after each of its transfers
        self.profile = profile
        try:
            c, r = self.client, self.router
            py = sys.executable
            self.relay = subprocess.Popen(
                [py, str(Path(__file__).resolve()), "--relay", c.name, r.name, control],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if read_until(self.relay, "ready", 20) is None:
                raise RuntimeError("the relay did not start")
            for ns, dev, addr in ((c, "lc", CLIENT), (r, "lr", ROUTER)):
                ns.output(["ip", "addr", "add", f"{addr}/24", "dev", dev])
                # The relay shares the CPUs with ustack: when it falls behind, packets
                # must wait in the device's queue, not be dropped there (a loss the path
                # was not asked for). `relay_drops` in the results says it held.
                ns.output(["ip", "link", "set", dev, "mtu", str(MTU), "txqueuelen",
                        str(RELAY_QUEUE), "up"])
            c.output(["ip", "route", "add", "default", "via", ROUTER])
            r.output(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            cprofile = ["-m", "cProfile", "-o", profile] if profile else []
            self.ustack, _ = r.start([py, *cprofile, "-m", "ustack", "serve",
                                      "--congestion", ustack_cc, "--addr", US, *ustack_args,
                                      f"http:{HTTP}", f"discard:{DISCARD}"],
                                     "ustack: serving")
            _, line = r.start([py, str(Path(__file__).resolve()), "--kernel-server",
                               kernel_cc], "ready")
            self.kernel_cc = line.split()[-1]
        except BaseException:
            self.close()
            raise

    def impair(self, rtt_ms: float, loss: float, reorder: float) -> None:
        """The relay, each way: half the RTT, `loss` % dropped, `reorder` % held back by
        a quarter of the RTT (behind the packets that follow)."""
        with open(self.control, "w") as f:
            f.write(f"{loss} {reorder} {rtt_ms / 2}\n")
        self.relay.send_signal(1)  # SIGHUP
        time.sleep(0.2)

    def relay_drops(self) -> int:
        """Packets the relay's two TUN queues dropped so far (should stay 0)."""
        return sum(int(ns.output(["cat", f"/sys/class/net/{dev}/statistics/tx_dropped"]))
                   for ns, dev in ((self.client, "lc"), (self.router, "lr")))

    def ustack_retrans(self) -> int:
        """ustack's tcp_retransmitted_segments so far (its SIGUSR1 stats line)."""
        self.ustack.send_signal(10)  # SIGUSR1
        line = read_until(self.ustack, "ustack: stats;", 10) or ""
        if self.stats:
            print(line.strip(), file=sys.stderr)
        m = re.search(r"tcp_retransmitted_segments=(\d+)", line)
        return int(m.group(1)) if m else 0

    def transfer(self, direction: str, stack: str, nbytes: int, cc: str) -> dict:
        """One transfer: MB/s, and the segments the sender retransmitted."""
        if direction == "download":
            host, port = (US, HTTP) if stack == "ustack" else (ROUTER, KERNEL_HTTP)
            sender = "ustack" if stack == "ustack" else "router"
        else:
            host, port = (US, DISCARD) if stack == "ustack" else (ROUTER, KERNEL_DISCARD)
            sender = "client"
        before = self._sender_retrans(sender)
        kernel_sender = {"client": self.client, "router": self.router}.get(sender)
        counters = kernel_sender.tcp_counters() if self.stats and kernel_sender else {}
        # ustack's receiver shows its counters in its stats line; the kernel's, here.
        kernel_receiver = self.router if stack == "kernel" and sender == "client" else None
        received = kernel_receiver.tcp_counters() if self.stats and kernel_receiver else {}
        cpu = _cpu_now(self.relay.pid, self.ustack.pid)
        out = self.client.output([sys.executable, str(Path(__file__).resolve()), "--client",
                               direction, host, str(port), str(nbytes), cc],
                              timeout=TIMEOUT + 20)
        cpu = [after - before for before, after in zip(
            cpu, _cpu_now(self.relay.pid, self.ustack.pid), strict=True)]
        result = json.loads(out.strip().splitlines()[-1])
        if self.stats and stack == "ustack" and sender != "ustack":
            self.ustack_retrans()  # (as a sender its line is read for the count below)
        if counters:
            # What the kernel sender's recovery did (e.g. TCPLossProbes, TCPTimeouts,
            # TCPDSACKUndo), to compare the same sender facing each receiver.
            after = kernel_sender.tcp_counters()  # type: ignore[union-attr]
            moved = {k: after[k] - v for k, v in counters.items()
                     if after.get(k, v) != v and k in SENDER_COUNTERS}
            print(f"  kernel sender to {stack}: " + " ".join(
                f"{k}={v}" for k, v in sorted(moved.items())), file=sys.stderr, flush=True)
        if received:
            after = kernel_receiver.tcp_counters()  # type: ignore[union-attr]
            print("  kernel receiver: " + " ".join(
                f"{k}={after[k] - v}" for k, v in sorted(received.items())
                if after.get(k, v) != v and k in RECEIVER_COUNTERS), file=sys.stderr, flush=True)
        if result["bytes"] != nbytes:
            raise RuntimeError(f"{direction} from {stack}: {result['bytes']} of {nbytes} bytes")
        if self.stats:
            # Whether the machine, not the stack, set the pace: the relay and ustack share
            # its CPUs with the kernel's clients and servers.
            print(f"  {stack}: {result['seconds']:.2f} s; CPU s: relay {cpu[0]:.2f}, ustack "
                  f"{cpu[1]:.2f}, machine idle {cpu[2]:.2f} of {cpu[3]:.2f}",
                  file=sys.stderr, flush=True)
        return {"mb_s": nbytes / result["seconds"] / 1e6,
                "retrans": self._sender_retrans(sender) - before, "client_cc": result["cc"]}

    def _sender_retrans(self, sender: str) -> int:
        if sender == "ustack":
            return self.ustack_retrans()
        return (self.router if sender == "router" else self.client).retrans()

    def close(self) -> None:
        ustack = getattr(self, "ustack", None)
        if self.profile and ustack is not None and ustack.poll() is None:
            ustack.send_signal(signal.SIGINT)  # a clean exit writes the profile
            ustack.wait(20)
        if self.relay.poll() is None:
            self.relay.terminate()
            self.relay.wait(5)
        self.router.close()
        self.client.close()


# --- the measurement ------------------------------------------------------------------------


def cells(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(direction, algorithm): ustack's own when it sends, the client's when it receives."""
    return ([("download", cc) for cc in args.send] + [("upload", cc) for cc in args.receive])


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    nbytes = int(args.mb * 1e6)
    for direction, cc in cells(args):
        # The servers run the algorithm of the sender being compared: ustack's when it
        # sends; when the client sends, theirs does not matter (CUBIC for both).
        ustack_cc = cc if direction == "download" else "cubic"
        path = ImpairedPath(ustack_cc, KERNEL_CC[cc] if direction == "download" else "cubic",
                            args.control, args.stats, tuple(args.ustack_arg), args.profile)
        try:
            for reorder in args.reorder:
                for loss in args.loss:
                    path.impair(args.rtt_ms, loss, reorder)
                    runs: dict[str, list[dict]] = {"ustack": [], "kernel": []}
                    for _ in range(args.repeat):
                        for stack in ("ustack", "kernel"):  # alternated
                            client_cc = KERNEL_CC[cc] if direction == "upload" else ""
                            runs[stack].append(path.transfer(direction, stack, nbytes,
                                                             client_cc))
                    row = {"direction": direction, "algorithm": cc, "loss": loss,
                           "reorder": reorder, "rtt_ms": args.rtt_ms,
                           "kernel_algorithm": (path.kernel_cc if direction == "download"
                                                else runs["kernel"][0]["client_cc"])}
                    for stack, got in runs.items():
                        row[f"{stack}_mb_s"] = statistics.median(r["mb_s"] for r in got)
                        row[f"{stack}_retrans"] = statistics.median(r["retrans"] for r in got)
                    row["ratio"] = row["ustack_mb_s"] / row["kernel_mb_s"]
                    row["relay_drops"] = path.relay_drops()
                    rows.append(row)
                    print(f"  {direction} {cc} loss {loss:g}% reorder {reorder:g}%: ustack "
                          f"{row['ustack_mb_s']:.2f} MB/s ({row['ustack_retrans']:g} rexmit),"
                          f" kernel {row['kernel_mb_s']:.2f} MB/s "
                          f"({row['kernel_retrans']:g} rexmit)", file=sys.stderr, flush=True)
        finally:
            path.close()
    return rows


def percents(text: str) -> list[float]:
    values = [float(x) for x in text.split(",")]
    if any(not 0 <= v < 100 for v in values):
        raise argparse.ArgumentTypeError("percentages in [0, 100)")
    return values


def algorithms(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [x for x in text.split(",") if x]
        if any(n not in allowed for n in names):
            raise argparse.ArgumentTypeError(f"one of {', '.join(allowed)}")
        return names
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=2.0, help="transfer size in MB (default 2)")
    p.add_argument("--loss", type=percents, default=[1.0, 2.0, 5.0],
                   help="loss percentages, each direction (default 1,2,5)")
    p.add_argument("--reorder", type=percents, default=[0.0, 5.0],
                   help="reordering percentages (default 0,5)")
    p.add_argument("--rtt-ms", type=float, default=10.0, help="round trip (default 10)")
    p.add_argument("--send", type=algorithms(("newreno", "cubic")), default=["newreno", "cubic"],
                   help="ustack's algorithms as the sender (default newreno,cubic)")
    p.add_argument("--receive", type=algorithms(("cubic", "bbr")), default=["cubic", "bbr"],
                   help="the kernel sender's algorithms when ustack receives (cubic,bbr)")
    p.add_argument("--repeat", type=int, default=3, help="transfers per cell; median")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--ustack-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for `ustack serve` (repeatable), e.g. "
                   "--ustack-arg=--no-offload")
    p.add_argument("--stats", action="store_true",
                   help="print ustack's counters (its SIGUSR1 line) after each of its transfers")
    p.add_argument("--profile", metavar="FILE",
                   help="run ustack serve under cProfile (one cell: the last one's wins), "
                        "write FILE and print its top functions by layer")
    p.add_argument("--kernel-server", metavar="CC", help=argparse.SUPPRESS)
    p.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--relay", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 < args.mb <= 1000 or not 1 <= args.repeat <= 20 or not 0 < args.rtt_ms <= 1000:
        p.error("--mb in (0, 1000], --repeat in 1..20 and --rtt-ms in (0, 1000] please")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kernel_server:
        kernel_server(args.kernel_server)
        return 0
    if args.client:
        direction, host, port, nbytes, cc = args.client
        client(direction, host, int(port), int(nbytes), cc)
        return 0
    if args.relay:
        relay(*args.relay)
        return 0
    missing = [t for t in ("ip",) if shutil.which(t) is None]
    if os.geteuid() != 0 or missing or not os.path.exists("/dev/net/tun"):
        why = f"missing {', '.join(missing)}" if missing else "needs root and /dev/net/tun"
        print(f"lossbench: {why}", file=sys.stderr)
        return 2
    # A stop (SIGTERM, or the bound of whoever runs this) unwinds like Ctrl-C: the
    # namespaces and every process started in them go.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory() as tmp:
        args.control = os.path.join(tmp, "impairment")
        try:
            rows = measure(args)
        except KeyboardInterrupt:
            print("lossbench: stopped", file=sys.stderr)
            return 130
    if args.profile:
        from benchkit.report import print_profile
        print_profile(args.profile)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"goodput of {args.mb:g} MB over {args.rtt_ms:g} ms RTT with loss and reordering "
          f"each way (median of {args.repeat}); rexmit: segments the sender resent; "
          f"packets the relay's queues dropped besides: {sum(r['relay_drops'] for r in rows)}")
    print("| direction | algorithm (kernel) | loss | reorder | ustack MB/s | kernel MB/s "
          "| ustack/kernel | ustack rexmit | kernel rexmit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        who = "ustack sends" if r["direction"] == "download" else "ustack receives"
        print(f"| {who} | {r['algorithm']} ({r['kernel_algorithm']}) | {r['loss']:g}% | "
              f"{r['reorder']:g}% | {r['ustack_mb_s']:.2f} | {r['kernel_mb_s']:.2f} | "
              f"{r['ratio']:.2f} | {r['ustack_retrans']:g} | {r['kernel_retrans']:g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
