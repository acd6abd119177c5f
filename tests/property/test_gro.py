"""Receive coalescing changes nothing a receiver owes its application: the same packets
given to one host one at a time and to another in random batches (where consecutive data
segments of the connection are merged, `ustack.tcp.gro`) leave both with the same bytes
delivered, the same RCV.NXT and the same out-of-order ranges after every batch; and the
rules merge exactly what tcp_gro_receive would."""

import random
import struct

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_host import tcp_packet
from ustack.host import Host
from ustack.tcp.gro import MAX_RUN, Run, starts_run
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.options import Options
from ustack.tcp.segment import ACK, FIN, PSH, Segment
from ustack.tcp.states import State

US, PEER = "10.77.0.2", "10.77.0.1"
IRS = 5000
MSS = 1448


def packet(flags: int, seq: int, ack: int, payload: bytes = b"", opts: bytes = b"") -> bytes:
    return tcp_packet(flags, seq=seq, ack=ack, payload=payload, opts=opts, src=PEER, dst=US)


def ts(val: int) -> bytes:
    return b"\x01\x01\x08\x0a" + struct.pack("!II", val, 0)


def established(sack: bool, timestamps: bool) -> tuple[Host, int]:
    """A host with one connection from PEER accepted; returns it and our ISS + 1."""
    h = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1))
    h.listen(7)
    opts = b"\x02\x04\x05\xb4" + (b"\x04\x02\x01\x01" if sack else b"")
    opts += ts(1) if timestamps else b""
    h.receive(packet(dpkt.tcp.TH_SYN, IRS - 1, 0, opts=opts), 0.0)
    synack = dpkt.ip.IP(h.poll(0.0)[0]).data
    h.receive(packet(dpkt.tcp.TH_ACK, IRS, synack.seq + 1, opts=ts(2) if timestamps else b""),
              0.0)
    h.poll(0.0)
    (tcb,) = h.connections()
    assert tcb.state is State.ESTABLISHED
    return h, synack.seq + 1


def picture(h: Host) -> tuple[int, int, list[tuple[int, int]]]:
    (tcb,) = h.connections()
    ooo = sorted((s, len(d)) for s, d in tcb._ooo._ranges)
    return tcb.rcv_nxt, tcb.readable, ooo


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), sack=st.booleans(), timestamps=st.booleans(),
       size=st.integers(1, 60_000), loss=st.floats(0, 0.3), reorder=st.floats(0, 0.3),
       dup=st.floats(0, 0.2))
def test_batches_deliver_what_single_packets_deliver(seed, sack, timestamps, size, loss,
                                                     reorder, dup) -> None:
    rng = random.Random(seed)
    stream = rng.randbytes(size)
    one, iss = established(sack, timestamps)
    batched, _ = established(sack, timestamps)
    # The peer's segments: mostly full-sized, some short, some with PSH; the timestamp
    # ticks now and then; then every segment again (a retransmission fills the holes).
    wire: list[bytes] = []
    first = 0  # where the second round begins
    for rounds in range(2):
        offset, tick = 0, 10 + 100 * rounds
        while offset < size:
            n = min(rng.choice((MSS, MSS, MSS, rng.randint(1, MSS))), size - offset)
            flags = dpkt.tcp.TH_ACK | (dpkt.tcp.TH_PUSH if rng.random() < 0.1 else 0)
            tick += rng.random() < 0.2
            wire.append(packet(flags, IRS + offset, iss, stream[offset:offset + n],
                               ts(tick) if timestamps else b""))
            offset += n
        first = first if rounds else len(wire)
    # The path: loss in the first round only, duplicates, and reordering.
    path: list[bytes] = []
    for i, p in enumerate(wire):
        if i < first and rng.random() < loss:
            continue
        path.append(p)
        if rng.random() < dup:
            path.append(p)
    for i in range(len(path) - 1):
        if rng.random() < reorder:
            j = min(len(path) - 1, i + rng.randint(1, 8))
            path[i], path[j] = path[j], path[i]
    got_one, got_batched = bytearray(), bytearray()
    i = 0
    while i < len(path):
        batch = path[i:i + rng.randint(1, 40)]
        i += len(batch)
        for p in batch:
            one.receive(p, 1.0)
        assert batched.receive_batch(batch, 1.0) == len(batch)
        one.poll(1.0)
        batched.poll(1.0)
        assert picture(one) == picture(batched)
        for h, got in ((one, got_one), (batched, got_batched)):
            (tcb,) = h.connections()
            got += tcb.read()
    assert bytes(got_one) == bytes(got_batched) == stream
    assert one.stats()["tcp_segments_in"] == batched.stats()["tcp_segments_in"]


def seg(seq: int, n: int = MSS, flags: int = ACK, ack: int = 1, wnd: int = 100,
        ts_val: int | None = 7, sack: tuple = ()) -> Segment:
    return Segment(40000, 7, seq, ack, flags, wnd, bytes(n),
                   Options(ts_val=ts_val, ts_ecr=3, sack=sack))


def test_a_run_takes_consecutive_segments_alike_and_nothing_else() -> None:
    assert starts_run(seg(0)) and not starts_run(seg(0, flags=ACK | PSH))
    assert not starts_run(seg(0, 0)) and not starts_run(seg(0, sack=((5, 9),)))
    run = Run(seg(0))
    for other in (seg(MSS + 1), seg(MSS, ack=2), seg(MSS, wnd=99), seg(MSS, ts_val=8),
                  seg(MSS, flags=ACK | FIN), seg(MSS, MSS + 1), seg(MSS, 0),
                  seg(MSS, sack=((1, 2),))):
        assert not run.extend(other), other
    assert run.segment() is run.first  # nothing joined: the segment itself
    assert run.extend(seg(MSS)) and run.extend(seg(2 * MSS, 100, flags=ACK | PSH))
    assert not run.extend(seg(2 * MSS + 100))  # after a PSH (or a short one) the run ends
    merged = run.segment()
    assert (merged.seq, len(merged.payload), merged.flags) == (0, 2 * MSS + 100, ACK | PSH)
    big = Run(seg(0, 60_000))
    assert not big.extend(seg(60_000, 6000)) and big.size <= MAX_RUN


def test_an_out_of_order_run_is_acknowledged_as_the_segments_it_carries() -> None:
    """RFC 5681 §4.2's immediate duplicate ACK per out-of-order segment, up to DupThresh,
    survives coalescing: one ACK for a run of five left a sender on a lossy return path
    waiting for its retransmission timer."""
    for sack in (True, False):
        h, iss = established(sack, timestamps=True)
        batch = [packet(dpkt.tcp.TH_ACK, IRS + MSS * (i + 1), iss, bytes(MSS), ts(10))
                 for i in range(5)]  # the first segment is missing
        h.receive_batch(batch, 1.0)
        acks = [dpkt.ip.IP(p).data for p in h.poll(1.0)]
        assert len(acks) >= 3 and all(a.ack == IRS for a in acks), (sack, len(acks))
        assert h.stats().get("tcp_gro_merged", 0) == (4 if sack else 0)


def test_an_in_order_run_is_acknowledged_every_second_segment() -> None:
    """A run of seven in-order segments read at once draws the ACKs they would have drawn
    one by one (RFC 5681 §4.2: at least every second full-sized segment), each for RCV.NXT
    as it stood then: a kernel CUBIC sender clocked by one ACK per read lost a quarter of
    its goodput at 1 % loss. The window's right edge never moves left across them."""
    h, iss = established(sack=True, timestamps=True)
    batch = [packet(dpkt.tcp.TH_ACK, IRS + MSS * i, iss, bytes(MSS), ts(10)) for i in range(7)]
    h.receive_batch(batch, 1.0)
    acks = [dpkt.ip.IP(p).data for p in h.poll(1.0)]
    assert [a.ack - IRS for a in acks] == [2 * MSS, 4 * MSS, 6 * MSS]  # the 7th: delayed
    (tcb,) = h.connections()
    assert tcb.timers.delack_at is not None
    # The right edge never moves left, nor beyond what the buffer had room for before
    # the run (each ACK counts the run's text up to it as held).
    edges = [a.ack + a.win for a in acks]  # the SYN offered no window scaling
    assert edges == sorted(edges) and edges[-1] <= IRS + tcb.rcv_buf_size
    assert h.stats()["tcp_gro_merged"] == 6
