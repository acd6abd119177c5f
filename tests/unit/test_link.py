"""ustack.link, sans-IO: the fault injector on a virtual clock, the pcap writer, the pipeline."""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import struct

import dpkt
import pytest

from ustack.aio import Driver
from ustack.host import Host
from ustack.link import (
    FAULT_COUNTERS,
    LINKTYPE_RAW,
    FaultInjector,
    PcapWriter,
    Pipeline,
    Stage,
    Tap,
    parse_delay,
    parse_probability,
    pipeline_of,
)

N = 20_000


def packets(n: int, size: int = 40) -> list[bytes]:
    """`n` distinct packets: the index in the first 4 bytes."""
    return [i.to_bytes(4, "big") + bytes(size - 4) for i in range(n)]


def index(packet: bytes) -> int:
    return int.from_bytes(packet[:4], "big")


def run(inj: FaultInjector, pkts: list[bytes], step: float = 0.001, direction: str = "rx",
        settle: float = 10.0) -> list[tuple[float, bytes]]:
    """Feed packet i at i * `step` seconds, polling at every deadline in between (as the
    driver's timer does); return (time out, packet) for every packet that came out."""
    out: list[tuple[float, bytes]] = []
    feed = inj.rx if direction == "rx" else inj.tx
    pick = 0 if direction == "rx" else 1

    def release_until(t: float) -> None:
        for _ in range(100_000):  # bounded
            deadline = inj.next_deadline()
            if deadline is None or deadline > t:
                return
            out.extend((deadline, q) for q in inj.poll(deadline)[pick])
        raise AssertionError("poll released nothing at its own deadline")

    for i, p in enumerate(pkts):
        now = i * step
        release_until(now)
        out.extend((now, q) for q in feed(p, now))
    release_until(len(pkts) * step + settle)
    assert inj.next_deadline() is None, "packets still held after settling"
    return out


# --------------------------------------------------------------------------- injector


def test_no_faults_is_a_pass_through():
    inj = FaultInjector(seed=1)
    assert not inj.active
    pkts = packets(100)
    assert [p for _, p in run(inj, pkts)] == pkts
    assert all(v == 0 for v in inj.counters.values())


@pytest.mark.parametrize("p", [0.01, 0.05, 0.2])
def test_loss_rate_close_to_configured(p):
    inj = FaultInjector(loss=p, seed=11)
    out = run(inj, packets(N))
    dropped = inj.counters["fault_dropped"]
    assert dropped + len(out) == N
    assert abs(dropped / N - p) < 4 * (p * (1 - p) / N) ** 0.5 + 1e-3
    # What survives keeps its order when nothing else is configured.
    idx = [index(q) for _, q in out]
    assert idx == sorted(idx)


def test_dup_rate_and_copies_adjacent():
    inj = FaultInjector(dup=0.05, seed=12)
    out = [q for _, q in run(inj, packets(N))]
    dups = inj.counters["fault_duplicated"]
    assert len(out) == N + dups
    assert abs(dups / N - 0.05) < 0.01
    idx = [index(q) for q in out]
    assert sorted(set(idx)) == list(range(N))
    assert sum(1 for a, b in itertools.pairwise(idx) if a == b) == dups


def test_corruption_flips_exactly_one_bit():
    inj = FaultInjector(corrupt=0.1, seed=13)
    pkts = packets(N, size=60)
    out = [q for _, q in run(inj, pkts)]
    assert len(out) == N
    changed = 0
    for orig, got in zip(pkts, out, strict=True):
        assert len(got) == len(orig)
        bits = sum(bin(a ^ b).count("1") for a, b in zip(orig, got, strict=True))
        assert bits in (0, 1)
        changed += bits
    assert changed == inj.counters["fault_corrupted"]
    assert abs(changed / N - 0.1) < 0.015


def test_corrupting_an_empty_packet_is_a_no_op():
    inj = FaultInjector(corrupt=1.0, seed=1)
    assert inj.rx(b"", 0.0) == [b""]


def test_same_seed_same_decisions():
    def trace(seed: int) -> tuple[list[tuple[float, bytes]], dict[str, int]]:
        inj = FaultInjector(loss=0.05, dup=0.02, reorder=0.03, corrupt=0.01,
                            delay_ms=3, jitter_ms=2, seed=seed)
        return run(inj, packets(3000)), dict(inj.counters)

    assert trace(99) == trace(99)
    assert trace(99) != trace(100)


def test_seed_drawn_when_none_and_exposed():
    a, b = FaultInjector(loss=0.5), FaultInjector(loss=0.5)
    assert isinstance(a.seed, int) and isinstance(b.seed, int)
    # The exposed seed replays the run.
    replay = FaultInjector(loss=0.5, seed=a.seed)
    pkts = packets(500)
    assert run(a, pkts) == run(replay, pkts)
    assert f"seed={a.seed}" in a.describe()


def test_delay_releases_at_the_right_time():
    inj = FaultInjector(delay_ms=10, seed=1)
    assert inj.rx(b"a", 1.0) == []
    assert inj.next_deadline() == pytest.approx(1.010)
    assert inj.poll(1.0099) == ([], [])
    assert inj.poll(1.010) == ([b"a"], [])
    assert inj.next_deadline() is None
    assert inj.counters["fault_delayed"] == 1


def test_jitter_stays_within_bounds_and_reorders():
    inj = FaultInjector(delay_ms=20, jitter_ms=5, seed=3)
    sent_at = {}
    out = []
    now = 0.0
    for p in packets(2000):
        sent_at[index(p)] = now
        assert inj.rx(p, now) == []
        now += 0.001
        out += [(now, q) for q in inj.poll(now)[0]]
    for _ in range(10_000):
        deadline = inj.next_deadline()
        if deadline is None:
            break
        out += [(deadline, q) for q in inj.poll(deadline)[0]]
    assert len(out) == 2000
    for t, q in out:
        # released no earlier than 15 ms and no later than 25 ms (+ one polling step)
        assert 0.015 - 1e-9 <= t - sent_at[index(q)] <= 0.025 + 0.001 + 1e-9
    idx = [index(q) for _, q in out]
    assert idx != sorted(idx), "10 ms of jitter over 1 ms spacing must reorder"


def test_jitter_larger_than_delay_is_clamped_at_zero():
    inj = FaultInjector(delay_ms=1, jitter_ms=10, seed=4)
    out = run(inj, packets(2000), step=0.1)  # far apart: each comes out before the next
    assert [index(q) for _, q in out] == list(range(2000))
    waits = [t - index(q) * 0.1 for t, q in out]
    assert min(waits) == 0.0 and max(waits) <= 0.011 + 1e-9
    immediate = sum(1 for w in waits if w == 0.0)
    assert immediate + inj.counters["fault_delayed"] == 2000
    assert 0.4 < immediate / 2000 < 0.5  # P(1 + U(-10, 10) <= 0) = 0.45


def test_reorder_next_packet_overtakes():
    inj = FaultInjector(reorder=1.0, seed=5)
    a, b = b"a", b"b"
    assert inj.rx(a, 0.0) == []  # held back
    assert inj.next_deadline() == pytest.approx(0.005)
    inj.reorder = 0.0
    assert inj.rx(b, 0.001) == [b, a]  # b overtakes a, a follows right after
    assert inj.next_deadline() is None
    assert inj.counters["fault_reordered"] == 1


def test_reordered_packet_released_by_timeout_when_nothing_follows():
    inj = FaultInjector(reorder=1.0, seed=5, reorder_ms=7)
    assert inj.rx(b"a", 0.0) == []
    assert inj.poll(0.0069) == ([], [])
    assert inj.next_deadline() == pytest.approx(0.007)
    assert inj.poll(0.007) == ([b"a"], [])


def test_reorder_rate_and_every_packet_arrives():
    inj = FaultInjector(reorder=0.05, seed=6)
    out = [q for _, q in run(inj, packets(N))]
    assert sorted(index(q) for q in out) == list(range(N))
    r = inj.counters["fault_reordered"]
    assert abs(r / N - 0.05) < 0.01
    idx = [index(q) for q in out]
    inversions = sum(1 for x, y in itertools.pairwise(idx) if x > y)
    assert inversions > r // 2


def test_reorder_is_per_direction():
    inj = FaultInjector(reorder=1.0, seed=8)
    assert inj.rx(b"in", 0.0) == []
    inj.reorder = 0.0
    assert inj.tx(b"out", 0.001) == [b"out"]  # the other direction does not overtake
    assert inj.rx(b"in2", 0.002) == [b"in2", b"in"]


@pytest.mark.parametrize("directions", ["rx", "tx", "both"])
def test_directions(directions):
    inj = FaultInjector(loss=1.0, seed=1, directions=directions)
    assert (inj.rx(b"x", 0.0) == []) == (directions in ("rx", "both"))
    assert (inj.tx(b"x", 0.0) == []) == (directions in ("tx", "both"))


def test_poll_separates_directions():
    inj = FaultInjector(delay_ms=5, seed=1)
    inj.rx(b"in", 0.0)
    inj.tx(b"out", 0.001)
    assert inj.poll(0.0055) == ([b"in"], [])
    assert inj.poll(0.0065) == ([], [b"out"])


def test_drain_releases_everything_in_order():
    inj = FaultInjector(delay_ms=50, reorder=0.3, seed=2)
    for i, p in enumerate(packets(100)):
        assert inj.rx(p, i * 0.0001) == []
    rx, tx = inj.drain(0.01)
    assert tx == []
    assert sorted(index(p) for p in rx) == list(range(100))
    assert inj.held() == 0 and inj.next_deadline() is None


@pytest.mark.parametrize("kwargs", [
    {"loss": -0.1}, {"loss": 1.5}, {"dup": float("nan")}, {"corrupt": "5%"},
    {"delay_ms": -1}, {"jitter_ms": float("inf")}, {"directions": "up"}, {"seed": "x"},
])
def test_bad_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        FaultInjector(**kwargs)


def test_counters_have_every_name_from_the_start():
    assert set(FaultInjector().counters) == set(FAULT_COUNTERS)


# ----------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text,value", [
    ("0.05", 0.05), ("5%", 0.05), ("0", 0.0), ("1", 1.0), ("100%", 1.0), ("0%", 0.0),
    ("0.5 %", 0.005), (" 2.5% ", 0.025), ("1e-3", 0.001),
])
def test_parse_probability_accepts(text, value):
    assert parse_probability(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1", "150%", "abc", "", "%", "1.01", "nan", "inf%", "-5%"])
def test_parse_probability_rejects(text):
    with pytest.raises(ValueError, match="not a probability"):
        parse_probability(text)


@pytest.mark.parametrize("text,value", [("10", (10.0, 0.0, 0.0)), ("10:3", (10.0, 3.0, 0.0)),
                                        ("0.5:0", (0.5, 0.0, 0.0)),
                                        ("100:10:25%", (100.0, 10.0, 0.25)),
                                        ("100:10:0.5", (100.0, 10.0, 0.5))])
def test_parse_delay_accepts(text, value):
    assert parse_delay(text) == value


@pytest.mark.parametrize("text", ["", "x", "-1", "10:-2", "1:2:3", "1:2:3:4", "10:",
                                  "inf", "nan:1", "1:2:x"])
def test_parse_delay_rejects(text):
    with pytest.raises(ValueError, match="not a delay"):
        parse_delay(text)


# ------------------------------------------------------------------------------- pcap

WALL = 1_700_000_000.0


def ipv4(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))),
                    p=dpkt.ip.IP_PROTO_TCP, data=payload)
    return bytes(ip)


def test_pcap_global_header():
    buf = io.BytesIO()
    PcapWriter(buf).close()
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack(
        "<IHHiIII", buf.getvalue())
    assert (magic, major, minor, zone, sigfigs, snaplen) == (0xA1B2C3D4, 2, 4, 0, 0, 65535)
    assert linktype == LINKTYPE_RAW == 101


def test_pcap_reads_back_with_dpkt_both_directions_monotonic_stamps():
    buf = io.BytesIO()
    writer = PcapWriter(buf, wall_offset=WALL)
    inbound = ipv4("10.77.0.1", "10.77.0.2")
    outbound = ipv4("10.77.0.2", "10.77.0.1", b"y" * 1400)
    sent = []
    t = 5.0
    for i in range(50):
        p = inbound if i % 2 == 0 else outbound
        got = writer.rx(p, t) if i % 2 == 0 else writer.tx(p, t)
        assert got == [p]
        sent.append((t, p))
        t += 0.000_7 * (i % 3)  # equal stamps too
    writer.close()
    assert writer.counters["pcap_packets"] == 50
    reader = dpkt.pcap.Reader(io.BytesIO(buf.getvalue()))
    assert reader.datalink() == 101
    records = list(reader)
    assert [p for _, p in records] == [p for _, p in sent]
    stamps = [ts for ts, _ in records]
    assert stamps == sorted(stamps)
    for (ts, _), (t, _) in zip(records, sent, strict=True):
        assert ts == pytest.approx(WALL + t, abs=1e-6)
    dsts = {bytes(dpkt.ip.IP(p).dst) for _, p in records}
    assert dsts == {bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2])}


def test_pcap_to_a_path_is_complete_after_close(tmp_path):
    path = tmp_path / "x.pcap"
    writer = PcapWriter(path, wall_offset=WALL)
    for i in range(1000):
        writer.rx(ipv4("10.77.0.1", "10.77.0.2"), i * 0.001)
    writer.close()
    writer.close()  # idempotent
    writer.rx(b"after close", 2.0)  # ignored, not an error
    with path.open("rb") as f:
        assert len(list(dpkt.pcap.Reader(f))) == 1000


def test_pcap_microsecond_rounding_carries_into_seconds():
    buf = io.BytesIO()
    writer = PcapWriter(buf, wall_offset=0.0)
    writer.rx(b"\x45" + bytes(19), 9.9999996)
    writer.close()
    sec, usec, incl, orig = struct.unpack("<IIII", buf.getvalue()[24:40])
    assert (sec, usec, incl, orig) == (10, 0, 20, 20)


def test_pcap_truncates_to_snaplen():
    buf = io.BytesIO()
    writer = PcapWriter(buf, snaplen=100)
    writer.tx(bytes(300), 0.0)
    writer.close()
    _, _, incl, orig = struct.unpack("<IIII", buf.getvalue()[24:40])
    assert (incl, orig) == (100, 300)
    assert len(buf.getvalue()) == 24 + 16 + 100


# --------------------------------------------------------------------------- pipeline


class Recorder(Stage):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def rx(self, packet, now):
        self.log.append(f"{self.name}.rx")
        return [packet]

    def tx(self, packet, now):
        self.log.append(f"{self.name}.tx")
        return [packet]


def test_pipeline_order_rx_forward_tx_reverse():
    log: list[str] = []
    pipe = Pipeline([Recorder("dev", log), Recorder("mid", log), Recorder("host", log)])
    assert pipe.rx(b"p", 0.0) == [b"p"]
    assert pipe.tx(b"q", 0.0) == [b"q"]
    assert log == ["dev.rx", "mid.rx", "host.rx", "host.tx", "mid.tx", "dev.tx"]


def test_pipeline_pcap_at_device_records_inbound_before_faults_outbound_after():
    buf = io.BytesIO()
    pcap = PcapWriter(buf)
    faults = FaultInjector(loss=1.0, seed=1)
    pipe = Pipeline([pcap, faults])
    assert pipe.rx(b"\x45in", 0.0) == []  # the kernel sent it; the host never saw it
    assert pipe.tx(b"\x45out", 0.0) == []  # dropped before the wire: not captured
    assert pcap.counters["pcap_packets"] == 1
    assert pipe.counters_dict()["fault_dropped"] == 2


def test_pipeline_releases_held_packets_through_the_later_stages():
    buf = io.BytesIO()
    pcap = PcapWriter(buf)
    faults = FaultInjector(delay_ms=10, seed=1)
    pipe = Pipeline([pcap, faults])
    assert pipe.tx(b"\x45out", 0.0) == []
    assert pcap.counters["pcap_packets"] == 0
    assert pipe.next_deadline() == pytest.approx(0.010)
    assert pipe.poll(0.010) == ([], [b"\x45out"])
    assert pcap.counters["pcap_packets"] == 1  # captured when it reached the device
    assert pipe.rx(b"\x45in", 0.02) == []
    assert pcap.counters["pcap_packets"] == 2  # captured on arrival
    assert pipe.poll(0.03) == ([b"\x45in"], [])
    # What is left is the capture's flush, 0.1 s after its first unflushed record.
    assert pipe.next_deadline() == pytest.approx(0.110)
    assert pipe.poll(0.110) == ([], []) and pipe.next_deadline() is None


def test_pipeline_of_two_delays_adds_up():
    pipe = Pipeline([FaultInjector(delay_ms=5, seed=1), FaultInjector(delay_ms=7, seed=2)])
    assert pipe.rx(b"p", 0.0) == []
    assert pipe.next_deadline() == pytest.approx(0.005)
    assert pipe.poll(0.005) == ([], [])
    assert pipe.next_deadline() == pytest.approx(0.012)
    assert pipe.poll(0.012) == ([b"p"], [])


def test_pipeline_drain_passes_through_every_stage():
    pipe = Pipeline([FaultInjector(delay_ms=5, seed=1), FaultInjector(delay_ms=7, seed=2)])
    pipe.rx(b"in", 0.0)
    pipe.tx(b"out", 0.0)
    assert pipe.drain(0.001) == ([b"in"], [b"out"])
    assert pipe.next_deadline() is None


def test_tap_sees_both_directions():
    seen = []
    pipe = Pipeline([Tap(lambda d, p, t: seen.append((d, p, t)))])
    pipe.rx(b"a", 1.0)
    pipe.tx(b"b", 2.0)
    assert seen == [("rx", b"a", 1.0), ("tx", b"b", 2.0)]


def test_pipeline_of_skips_none():
    assert pipeline_of([None, None]) is None
    s = Stage()
    pipe = pipeline_of([None, s])
    assert pipe is not None and pipe.stages == (s,)
    assert pipe.rx(b"x", 0.0) == [b"x"] and pipe.poll(0.0) == ([], [])


def test_reorder_with_delay_waits_for_its_own_time_then_for_an_overtaker():
    inj = FaultInjector(delay_ms=10, reorder=1.0, seed=9)
    assert inj.rx(b"a", 0.0) == []
    inj.reorder = 0.0
    assert inj.rx(b"b", 0.001) == []
    assert inj.next_deadline() == pytest.approx(0.011)  # b's time; a gives up at 0.015
    assert inj.poll(0.0105) == ([], [])
    assert inj.poll(0.011) == ([b"b", b"a"], [])
    assert inj.next_deadline() is None


def test_pcap_stamps_never_go_backwards():
    buf = io.BytesIO()
    writer = PcapWriter(buf, wall_offset=WALL)
    for t in (1.0, 1.0005, 1.0004, 1.002):  # a timer served a deadline a hair early
        writer.tx(b"\x45" + bytes(19), t)
    writer.close()
    stamps = [ts for ts, _ in dpkt.pcap.Reader(io.BytesIO(buf.getvalue()))]
    assert stamps == sorted(stamps)
    assert stamps[2] == pytest.approx(WALL + 1.0005, abs=1e-6)


# ------------------------------------------------------------------- with the driver


class FakeDevice:
    def __init__(self) -> None:
        self.written: list[tuple[float, bytes]] = []
        self.loop = None

    def fileno(self) -> int:
        return -1

    def read_batch(self) -> list[bytes]:
        return []

    def write(self, packet: bytes) -> bool:
        self.written.append((self.loop.time(), packet))
        return True


def test_driver_arms_its_timer_for_packets_the_pipeline_holds():
    """A SYN delayed 30 ms by the injector leaves the device ~30 ms after connect, from
    the driver's timer (nothing else wakes it); a pass-through tap saw it at once."""

    async def main() -> tuple[float, list[tuple[float, bytes]], list]:
        loop = asyncio.get_running_loop()
        host = Host("10.9.0.2", rng=random.Random(1))
        device = FakeDevice()
        device.loop = loop
        seen: list = []
        pipe = Pipeline([FaultInjector(delay_ms=30, seed=1),
                         Tap(lambda d, p, t: seen.append(d))])
        driver = Driver(host, device, loop, lambda events, accepting: None, pipe)
        start = loop.time()
        host.connect("10.9.0.1", 5000, start)  # wakes the driver by itself
        for _ in range(200):  # bounded: at most 2 s
            if device.written:
                break
            await asyncio.sleep(0.01)
        # Replacing the pipeline sends on what the old one held (a retransmission or
        # nothing), and the driver goes on without middleware.
        driver.set_pipeline(None)
        await asyncio.sleep(0)
        assert driver.pipeline is None
        return start, device.written, seen

    start, written, seen = asyncio.run(asyncio.wait_for(main(), 5))
    assert written, "the held SYN never left"
    t, syn = written[0]
    assert 0.025 <= t - start < 0.5
    assert dpkt.ip.IP(syn).data.flags & dpkt.tcp.TH_SYN
    assert seen == ["tx"]
