"""The shaper (`ustack.link.Shaper`): its schedule keeps the rate, its queue is bounded
and drops at the tail (counted apart from random loss), and TCP through it loses nothing
end to end; Gilbert–Elliott loss matches its formulas over 100,000 packets."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.unit.simlink import Faults, Pair, transfer
from ustack.link import GilbertElliott, Shaper
from ustack.link.stage import TX
from ustack.tcp.config import TcpConfig

RATE = 50e6  # 50 mbit/s
WIRE = 1500  # bytes a packet
GAP = WIRE * 8 / RATE  # 240 µs between departures


def test_a_20_mb_schedule_keeps_the_rate() -> None:
    shaper = Shaper(RATE, queue=100)
    packet = bytes([0x45]) + bytes(WIRE - 1)
    sent = 0
    now = 0.0
    departures = []
    # A sender paced just under the rate: nothing is dropped, each leaves a GAP after
    # the one before, and 20 MB take what 50 mbit/s implies.
    while sent < 20_000_000:
        shaper.tx(packet, now)
        departures.append(shaper.departures(TX)[-1])
        sent += WIRE
        now += GAP * 0.999
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(departures)}
    assert gaps == {round(GAP, 9)}
    assert departures[-1] == pytest.approx(sent * 8 / RATE, rel=1e-6)
    assert shaper.counters["shaper_queue_dropped"] == 0


def test_an_over_driving_sender_meets_a_full_queue() -> None:
    shaper = Shaper(RATE, queue=100)
    packet = bytes([0x45]) + bytes(WIRE - 1)
    for _ in range(250):
        shaper.tx(packet, 0.0)  # all at once: 100 queued, the rest dropped at the tail
    assert len(shaper.departures(TX)) == 100
    assert shaper.counters["shaper_queue_dropped"] == 150
    rx, tx = shaper.poll(GAP * 10)
    assert rx == [] and len(tx) == 10  # ten have left by then, in order, room for ten
    assert shaper.next_deadline() == pytest.approx(GAP * 11)
    shaper.tx(packet, GAP * 10)
    assert shaper.counters["shaper_queue_dropped"] == 150


def test_a_byte_limit_counts_bytes() -> None:
    shaper = Shaper(RATE, queue=1000, queue_bytes=4000)
    for size in (1500, 1500, 1500, 900):
        shaper.tx(bytes([0x45]) + bytes(size - 1), 0.0)
    assert len(shaper.departures(TX)) == 3  # 1500 * 2 + 900 fit; the third 1500 did not
    assert shaper.counters["shaper_queue_dropped"] == 1


@pytest.mark.parametrize("paced", [True, False])
def test_tcp_through_a_narrow_queue_loses_nothing_end_to_end(paced: bool) -> None:
    """Paced, the sender fits the queue; unpaced (its window's bursts), it overflows a
    queue of 4 and recovers: either way every byte arrives, no faster than the rate."""
    data = random.Random(1).randbytes(2_000_000)
    shaper = Shaper(RATE, queue=20 if paced else 4, seed=3)
    pair = Pair(Faults(delay=0.005), seed=2, config=TcpConfig(pacing=paced), stage=shaper)
    _, got_up, _, _ = transfer(pair, data, b"")
    assert got_up == data
    assert pair.now >= len(data) * 8 / RATE
    if not paced:
        assert shaper.counters["shaper_queue_dropped"] > 0
        assert pair.a.stats()["tcp_retransmitted_segments"] > 0


@pytest.mark.parametrize(("p", "r", "bad", "good"), [
    (0.01, 0.3, 1.0, 0.0), (0.05, 0.5, 0.8, 0.01), (0.002, 0.1, 1.0, 0.0)])
def test_gilbert_elliott_matches_its_formulas(p: float, r: float, bad: float,
                                              good: float) -> None:
    model = GilbertElliott(p, r, bad, good, rng=random.Random(7))
    losses = [model.lose() for _ in range(100_000)]
    rate = sum(losses) / len(losses)
    assert rate == pytest.approx(model.loss_rate, rel=0.1)
    if bad == 1.0 and good == 0.0:  # every packet of a bad spell lost: bursts of 1/r
        bursts, run = [], 0
        for lost in losses:
            if lost:
                run += 1
            elif run:
                bursts.append(run)
                run = 0
        assert sum(bursts) / len(bursts) == pytest.approx(1 / r, rel=0.1)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        Shaper(0)
    with pytest.raises(ValueError, match="not a probability"):
        GilbertElliott(1.5, 0.1)
    with pytest.raises(ValueError, match="cannot both be 0"):
        GilbertElliott(0, 0)


def test_a_stack_shapes_its_link_and_counts() -> None:
    """`Stack.shape` on a memory link between two stacks: 1 MB at 20 mbit/s takes no
    less than the rate implies, arrives whole, and the shaper's counters are the stack's."""
    import asyncio
    import time

    from tests.unit.test_devices import DATA, B, pair, through_echo
    from ustack.devices import MemoryLink

    async def main() -> tuple[float, dict[str, int]]:
        link = MemoryLink()
        async with pair(link.a, link.b) as (a, _):
            seed = a.shape(20e6, queue=50, gemodel=(0.001, 0.5, 1.0, 0.0), seed=9)
            assert seed == 9
            start = time.monotonic()
            assert await through_echo(a, B["addr"], DATA) == DATA  # 1 MB each way
            took = time.monotonic() - start
            a.shape()  # off again: its counters stay in the stack's
            return took, a.stats()

    took, stats = asyncio.run(asyncio.wait_for(main(), 30))
    assert took >= len(DATA) * 8 / 20e6
    assert stats["shaper_delayed"] > 1000 and "shaper_queue_dropped" in stats
    assert "shaper_ge_dropped" in stats


def test_a_kept_shaper_keeps_its_queue_when_the_faults_change() -> None:
    """Replacing the fault injector rebuilds the pipeline: the shaper in it keeps what it
    queued and its schedule (only replaced stages are emptied)."""
    import asyncio

    from tests.unit.test_devices import A
    from ustack.api import Stack
    from ustack.devices import MemoryLink

    async def main() -> None:
        link = MemoryLink()
        async with Stack(device=link.a, linger=0, **A) as a:
            a.shape(1e6, queue=100)  # 1 mbit/s: a 1500-byte packet takes 12 ms
            shaper = a.shaper
            assert shaper is not None
            for _ in range(5):
                shaper.tx(bytes([0x45]) + bytes(1499), a.loop.time())
            queued = shaper.departures(TX)
            a.faults(loss=0.01, seed=1)
            assert a.shaper is shaper and shaper.departures(TX) == queued

    asyncio.run(asyncio.wait_for(main(), 10))


def test_loss_alone_needs_no_rate_and_each_direction_has_its_own_chain() -> None:
    shaper = Shaper(None, gemodel=(0.5, 0.5, 1.0, 0.0), seed=4)
    packet = bytes([0x45]) + bytes(99)
    passed = sum(len(shaper.tx(packet, 0.0)) for _ in range(2000))
    assert 800 < passed < 1200 and shaper.departures(TX) == []  # nothing waits
    assert "rate" not in shaper.describe() and "gemodel=0.5,0.5,1,0" in shaper.describe()
