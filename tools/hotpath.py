#!/usr/bin/env python3
"""The per-packet cost of the sans-IO core, without a device: two hosts back to back.

A sender host streams `--mb` MB to a receiver host over an in-memory link, in batches as
the asyncio driver runs them (deliver every packet that is ready, then poll once). No
TUN, no event loop, no kernel: what is left is exactly ustack's own work per segment
and per ACK, the part the fast path can change. Prints µs per data segment for the
whole exchange (sender + receiver), the receiver's share on its own, and with
`--profile` the functions that cost most (`--profile-receiver`: the receiver's only).
`--batch N` hands the receiver the sender's packets N at a time through
`Host.receive_batch`, as the driver hands it a read's packets (coalesced, `tcp.gro`).

    python tools/hotpath.py --mb 50 [--mtu 1500] [--offload] [--batch 64] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.host import Host
from ustack.packet import Offloaded, Packet
from ustack.tcp.states import State

A, B = "10.9.0.1", "10.9.0.2"
CHUNK = 256 * 1024  # what the application hands over per send()


def through_the_kernel(packets: list[Packet]) -> list[Packet]:
    """What the other side's device hands up: a segment whose checksum was left to the
    device is vouched for (the kernel passes a super-packet between two offloading
    devices whole, as here)."""
    return [Offloaded(p.ip, csum_ok=True) if type(p) is Offloaded else p for p in packets]


def run(nbytes: int, mtu: int, offload: bool, batch: int = 1,
        receiver_profile: cProfile.Profile | None = None) -> tuple[float, float, int, int]:
    """Seconds in all and in the receiver's calls, data segments sent, packets the
    receiver sent back."""
    sender = Host(A, mtu=mtu, rng=random.Random(1), offload=offload)
    receiver = Host(B, mtu=mtu, rng=random.Random(2), offload=offload)
    receiver.listen(9)
    now = 0.0
    tcb = sender.connect(B, 9, now)
    wire_ab: list[Packet] = []
    wire_ba: list[Packet] = []
    peer = None
    sent = received = segments = acks = 0
    payload = bytes(CHUNK)
    clock = time.perf_counter
    in_receiver = 0.0
    start = clock()
    while received < nbytes:
        now += 0.0001
        if tcb.state is State.ESTABLISHED and sent < nbytes and tcb.send_buffered < 4 * CHUNK:
            n = min(CHUNK, nbytes - sent)
            tcb.send(payload[:n])
            sent += n
        for packet in wire_ba:
            sender.receive(packet, now)
        wire_ba = []
        wire_ab = sender.poll(now)
        if offload:
            wire_ab = through_the_kernel(wire_ab)
        segments += len(wire_ab)
        began = clock()
        if receiver_profile is not None:
            receiver_profile.enable()
        if batch > 1:
            for i in range(0, len(wire_ab), batch):
                receiver.receive_batch(wire_ab[i:i + batch], now)
        else:
            for packet in wire_ab:
                receiver.receive(packet, now)
        if peer is None:
            conns = receiver.connections()
            peer = conns[0] if conns else None
        if peer is not None and peer.readable:
            received += len(peer.read())
        wire_ba = receiver.poll(now)
        if receiver_profile is not None:
            receiver_profile.disable()
        in_receiver += clock() - began
        if offload:
            wire_ba = through_the_kernel(wire_ba)
        acks += len(wire_ba)
        deadline = min((d for d in (sender.next_deadline(), receiver.next_deadline())
                        if d is not None), default=None)
        if not wire_ab and not wire_ba and deadline is not None and deadline > now:
            now = deadline  # idle: jump to the next timer (a delayed ACK)
    return clock() - start, in_receiver, segments, acks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=50.0, help="megabytes to move (default 50)")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--offload", action="store_true", help="TSO super-segments, partial csums")
    p.add_argument("--batch", type=int, default=1,
                   help="packets per receive_batch call (default 1: receive() each)")
    p.add_argument("--profile", action="store_true", help="print the top functions")
    p.add_argument("--profile-receiver", action="store_true",
                   help="print the receiver's top functions only")
    args = p.parse_args()
    if (not 0 < args.mb <= 10_000 or not 576 <= args.mtu <= 65535
            or not 1 <= args.batch <= 1024):
        p.error("--mb must be in (0, 10000], --mtu in 576..65535 and --batch in 1..1024")
    nbytes = int(args.mb * 1_000_000)
    profiler = cProfile.Profile() if args.profile or args.profile_receiver else None
    if profiler is not None and not args.profile_receiver:
        profiler.enable()
    took, in_receiver, segments, acks = run(
        nbytes, args.mtu, args.offload, args.batch,
        profiler if args.profile_receiver else None)
    if profiler is not None:
        profiler.disable()
    per = 1e6 / max(segments, 1)
    print(f"{args.mb:g} MB, mtu {args.mtu}{', offload' if args.offload else ''}, batch "
          f"{args.batch}: {took:.2f} s, {nbytes / took / 1e6:.1f} MB/s, {segments} packets "
          f"out ({took * per:.1f} µs each, both sides; the receiver "
          f"{in_receiver * per:.1f}), {acks} back")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
