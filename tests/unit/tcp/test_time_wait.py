"""TIME-WAIT as a compact record (RFC 9293 §3.10.7.4, RFC 6191, RFC 7323, RFC 5961):
the rules on the record, the host's table (reopen, expiry, the cap) and its memory."""

import gc
import random
import socket
import struct
import tracemalloc

import dpkt
import pytest

from ustack.host import Host
from ustack.stats import Counters, DropReason
from ustack.tcp import timewait
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.options import Options
from ustack.tcp.segment import ACK, FIN, PSH, RST, SYN, Segment
from ustack.tcp.timewait import Outcome, TimeWait, TimeWaitTable

SND_NXT = 1000
RCV_NXT = 5000
TS_RECENT = 700_000


def record(ts_ok: bool = True, now: float = 10.0) -> TimeWait:
    return TimeWait(80, 40000, SND_NXT, RCV_NXT, window=502, wscale=7, ts_ok=ts_ok,
                    ts_recent=TS_RECENT if ts_ok else 0, ts_offset=12345,
                    deadline=now + 60.0, lifetime=60.0)


def seg(flags: int, seq_no: int, ack: int = SND_NXT, payload: bytes = b"",
        ts_val: int | None = None) -> Segment:
    opts = Options(ts_val=ts_val, ts_ecr=0)
    return Segment(40000, 80, seq_no, ack, flags, 1000, payload, opts)


def run(tw: TimeWait, s: Segment, now: float = 20.0, listener_ts: bool | None = True):
    return timewait.on_segment(tw, s, now, Counters(), listener_ts)


# ------------------------------------------------------------------ the record's rules


def test_retransmitted_fin_is_acked_again_and_restarts_the_wait() -> None:
    tw = record()
    outcome, reply, reason = run(tw, seg(FIN | ACK, RCV_NXT - 1, ts_val=TS_RECENT + 5), 20.0)
    assert outcome is Outcome.KEEP and reason is DropReason.TCP_NOT_ACCEPTABLE
    assert reply is not None
    assert (reply.flags, reply.seq, reply.ack, reply.wnd) == (ACK, SND_NXT, RCV_NXT, 502)
    assert reply.opts.ts_ecr == TS_RECENT and reply.opts.ts_val is not None
    assert tw.deadline == 20.0 + 60.0  # RFC 9293 §3.10.7.4 eighth: restart 2 MSL


def test_a_new_syn_with_a_higher_timestamp_reopens_even_with_a_lower_isn() -> None:
    # RFC 6191 §2: with timestamps on both incarnations, the timestamp decides.
    outcome, reply, _ = run(record(), seg(SYN, RCV_NXT - 100_000, 0, ts_val=TS_RECENT + 1))
    assert outcome is Outcome.REOPEN and reply is None


def test_a_new_syn_with_an_older_timestamp_is_refused_even_with_a_higher_isn() -> None:
    tw = record()
    outcome, reply, reason = run(tw, seg(SYN, RCV_NXT + 100_000, 0, ts_val=TS_RECENT - 1))
    assert outcome is Outcome.KEEP and reason is DropReason.TCP_PAWS
    assert reply is not None and reply.flags == ACK  # and the record stays


def test_a_new_syn_with_an_equal_timestamp_needs_a_higher_isn() -> None:
    assert run(record(), seg(SYN, RCV_NXT + 1, 0, ts_val=TS_RECENT))[0] is Outcome.REOPEN
    assert run(record(), seg(SYN, RCV_NXT - 1, 0, ts_val=TS_RECENT))[0] is Outcome.KEEP


def test_without_timestamps_a_new_syn_needs_a_higher_isn() -> None:
    tw = record(ts_ok=False)
    assert run(tw, seg(SYN, RCV_NXT + 1, 0))[0] is Outcome.REOPEN
    outcome, reply, _ = run(tw, seg(SYN, RCV_NXT - 1, 0))
    assert outcome is Outcome.KEEP and reply is not None and reply.flags == ACK
    assert reply.opts.ts_val is None
    # The new connection would use timestamps: honoured whatever its ISN (RFC 6191 §2).
    assert run(tw, seg(SYN, RCV_NXT - 1, 0, ts_val=5))[0] is Outcome.REOPEN
    # The listener does not do timestamps: only the sequence number counts.
    assert run(tw, seg(SYN, RCV_NXT - 1, 0, ts_val=5), listener_ts=False)[0] is Outcome.KEEP


def test_without_a_listener_a_syn_cannot_reopen() -> None:
    outcome, reply, _ = run(record(), seg(SYN, RCV_NXT + 1, 0, ts_val=TS_RECENT + 1),
                            listener_ts=None)
    assert outcome is Outcome.KEEP and reply is not None  # a challenge ACK, RFC 5961 §4.2


def test_a_rst_at_rcv_nxt_ends_time_wait_elsewhere_it_is_challenged() -> None:
    assert run(record(), seg(RST, RCV_NXT))[0] is Outcome.CLOSE
    outcome, reply, reason = run(record(), seg(RST, RCV_NXT + 10))
    assert outcome is Outcome.KEEP and reason is DropReason.TCP_NOT_ACCEPTABLE
    assert reply is not None and reply.flags == ACK  # RFC 5961 §3.2
    outcome, reply, _ = run(record(), seg(RST, RCV_NXT - 10))  # outside: silently dropped
    assert outcome is Outcome.KEEP and reply is None


def test_paws_rejects_an_old_duplicate() -> None:
    _outcome, reply, reason = run(record(), seg(ACK | PSH, RCV_NXT, payload=b"x",
                                               ts_val=TS_RECENT - 10))
    assert reason is DropReason.TCP_PAWS and reply is not None


def test_text_is_ignored_and_answered_with_where_we_stand() -> None:
    tw = record()
    outcome, reply, reason = run(tw, seg(ACK | PSH, RCV_NXT, payload=b"late",
                                         ts_val=TS_RECENT + 1))
    assert outcome is Outcome.KEEP and reason is None
    assert reply is not None and reply.ack == RCV_NXT  # the text is not acknowledged
    assert tw.ts_recent == TS_RECENT + 1  # RFC 7323 §4.3 (R3)
    assert run(tw, seg(ACK, RCV_NXT, ts_val=TS_RECENT + 2)) == (Outcome.KEEP, None, None)


def test_challenge_acks_are_throttled() -> None:
    tw = record()
    counters = Counters()
    replies = [timewait.on_segment(tw, seg(RST, RCV_NXT + 5), 20.0, counters, True)[1]
               for _ in range(15)]
    assert sum(r is not None for r in replies) == 10  # RFC 5961 §7
    assert counters["tcp_challenge_acks_throttled"] == 5


# ----------------------------------------------------------------------- the table


def test_the_table_keeps_records_packed_and_expires_them_by_their_deadline() -> None:
    table = TimeWaitTable()
    addr = socket.inet_aton("10.0.1.2")
    tw = record(now=0.0)
    assert table.add(addr, tw)
    k = timewait.key(addr, 40000, 80)
    assert table.get(k) == tw
    assert table.next_deadline() == pytest.approx(60.0, abs=timewait.TICK)
    tw.restart(30.0)  # a retransmitted FIN at 30 s
    table.put(k, tw)
    assert table.expire(61.0) == []
    assert table.expire(90.0 + timewait.TICK) == [(addr, 40000, 80)]
    assert len(table) == 0 and table.next_deadline() is None


def test_the_table_is_capped() -> None:
    table = TimeWaitTable(limit=2)
    for port in (1, 2, 3):
        tw = record()
        tw.remote_port = port
        assert table.add(socket.inet_aton("10.0.1.2"), tw) is (port != 3)
    assert len(table) == 2


def test_ten_thousand_records_cost_under_300_bytes_each() -> None:
    rng = random.Random(7)
    records = []
    for i in range(10_000):
        tw = record()
        tw.remote_port = 1024 + i % 60000
        tw.snd_nxt, tw.rcv_nxt = rng.getrandbits(32), rng.getrandbits(32)
        tw.ts_recent, tw.ts_offset = rng.getrandbits(32), rng.getrandbits(32)
        tw.deadline = 1000.0 + i * 0.01
        addr = struct.pack("!I", 0x0A000000 + i // 60000 + rng.getrandbits(16))
        records.append((addr, tw))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = TimeWaitTable()
        for addr, tw in records:
            table.add(addr, tw)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(table) == 10_000
    per_record = (after - before) / 10_000
    assert per_record <= 300, per_record


# ------------------------------------------------------------------ through the host

US, PEER = "10.77.0.2", "10.77.0.1"


def ts_opt(ts_val: int, ts_ecr: int = 0) -> bytes:
    return b"\x01\x01\x08\x0a" + struct.pack("!II", ts_val, ts_ecr)


def packet(flags: int, seq: int, ack: int = 0, sport: int = 40000, opts: bytes = b"",
           payload: bytes = b"") -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=80, seq=seq, ack=ack, flags=flags, win=65535,
                       opts=opts, data=payload)
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton(PEER), dst=socket.inet_aton(US), p=6, ttl=64,
                    data=tcp)
    ip.len = 20 + len(bytes(tcp))
    return bytes(ip)


def tcp_out(h: Host, now: float) -> list[dpkt.tcp.TCP]:
    return [dpkt.ip.IP(p).data for p in h.poll(now)]


def server_in_time_wait(max_time_wait: int = timewait.MAX_RECORDS, sport: int = 40000,
                        h: Host | None = None) -> tuple[Host, int]:
    """A ustack server that closed first (HTTP/1.0 style), now in TIME-WAIT at t=1.0;
    the peer used timestamps (its TSval 1000, then 1001, 1002)."""
    if h is None:
        h = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1),
                 max_time_wait=max_time_wait)
        h.listen(80)
    h.receive(packet(dpkt.tcp.TH_SYN, 100, sport=sport, opts=ts_opt(1000)), 0.0)
    (synack,) = tcp_out(h, 0.0)
    iss = synack.seq
    h.receive(packet(dpkt.tcp.TH_ACK, 101, iss + 1, sport=sport, opts=ts_opt(1001)), 0.0)
    h.poll(0.0)
    _, (listener,) = h.take_events()
    tcb = listener.accept_queue[-1]
    tcb.shutdown()  # marks it for the next poll by itself
    tcp_out(h, 0.5)  # our FIN
    h.receive(packet(dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN, 101, iss + 2, sport=sport,
                     opts=ts_opt(1002)), 1.0)
    (last_ack,) = tcp_out(h, 1.0)
    assert last_ack.flags == dpkt.tcp.TH_ACK and last_ack.ack == 102
    return h, iss


def test_the_host_holds_time_wait_as_a_record_and_reacks_a_retransmitted_fin() -> None:
    h, iss = server_in_time_wait()
    assert h.connections() == [] and h.time_wait_count() == 1
    h.receive(packet(dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN, 101, iss + 2, opts=ts_opt(1003)), 5.0)
    (again,) = tcp_out(h, 5.0)
    assert (again.flags, again.seq, again.ack) == (dpkt.tcp.TH_ACK, iss + 2, 102)
    h.poll(61.5)  # the wait restarted at 5 s
    assert h.time_wait_count() == 1
    assert 65.0 <= h.next_deadline() <= 65.0 + timewait.TICK
    h.poll(65.0 + timewait.TICK)
    assert h.time_wait_count() == 0


def test_the_host_reopens_time_wait_for_a_newer_syn_and_refuses_an_older_one() -> None:
    h, _iss = server_in_time_wait()
    h.receive(packet(dpkt.tcp.TH_SYN, 50, opts=ts_opt(999)), 2.0)  # older TSval
    (ack,) = tcp_out(h, 2.0)
    assert ack.flags == dpkt.tcp.TH_ACK and h.time_wait_count() == 1
    h.receive(packet(dpkt.tcp.TH_SYN, 50, opts=ts_opt(2000)), 3.0)  # lower ISN, newer TS
    (synack,) = tcp_out(h, 3.0)
    assert synack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK and synack.ack == 51
    assert h.time_wait_count() == 0 and len(h.connections()) == 1


def test_a_rst_ends_a_time_wait_record() -> None:
    h, _ = server_in_time_wait()
    h.receive(packet(dpkt.tcp.TH_RST, 102), 2.0)
    assert tcp_out(h, 2.0) == [] and h.time_wait_count() == 0


def test_past_the_cap_a_connection_skips_time_wait_and_it_is_counted() -> None:
    h, _ = server_in_time_wait(max_time_wait=1)
    server_in_time_wait(sport=40001, h=h)
    assert h.time_wait_count() == 1
    assert h.stats()["tcp_time_wait_overflow"] == 1
    assert h.connections() == []


def test_our_timestamps_only_grow_towards_one_peer_so_it_can_reopen_its_time_wait() -> None:
    # RFC 6191 on the peer's side needs our TSvals to grow across connections: the offset
    # of our timestamp clock is per address pair (Linux secure_tcp_ts_off), not random
    # per connection (with which a new SYN started below the old connection's TSval half
    # of the time and the peer refused it).
    h = Host(US, isn=IsnGenerator(b"k" * 16))
    first = h.connect(PEER, 80, 10.0)
    (syn1,) = tcp_out(h, 10.0)
    second = h.connect(PEER, 8080, 10.5)
    (syn2,) = tcp_out(h, 10.5)
    assert first.local_port != second.local_port

    def tsval(tcp: dpkt.tcp.TCP) -> int:
        opts = dict(dpkt.tcp.parse_opts(tcp.opts))
        return struct.unpack("!II", opts[dpkt.tcp.TCP_OPT_TIMESTAMP])[0]

    assert (tsval(syn2) - tsval(syn1)) % 2**32 == 500  # one clock, 500 ms later


def test_a_key_filed_again_after_removal_expires_by_its_new_deadline() -> None:
    table = TimeWaitTable()
    addr = socket.inet_aton("10.0.1.2")
    k = timewait.key(addr, 40000, 80)
    table.add(addr, record(now=0.0))  # due at 60 s
    table.remove(k)  # reopened at 1 s; its bucket entry stays behind
    table.add(addr, record(now=30.0))  # the new connection's TIME-WAIT, due at 90 s
    assert table.expire(61.0) == []  # the old entry finds a record due later
    assert k in table
    assert table.expire(90.0 + timewait.TICK) == [(addr, 40000, 80)]


def test_a_reopening_syn_gets_an_isn_above_the_old_connection() -> None:
    # RFC 9293 §3.6.1 (MAY-2): the new incarnation starts above everything the old one
    # sent (Linux: SND.NXT + 65535 + 2), whatever the ISN clock says.
    h, iss = server_in_time_wait()
    h.receive(packet(dpkt.tcp.TH_SYN, 50, opts=ts_opt(2000)), 3.0)
    (synack,) = tcp_out(h, 3.0)
    assert synack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    assert synack.seq == (iss + 2 + 65537) % 2**32


def test_a_reopening_syn_that_finds_the_accept_queue_full_is_dropped_and_counted() -> None:
    # As Linux: TIME-WAIT gave way to the SYN, the listener had no room, the client's
    # SYN retransmission finds a plain listener.
    h = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1))
    listener = h.listen(80, backlog=1)
    server_in_time_wait(h=h)
    listener.accept_queue.clear()
    server_in_time_wait(sport=40001, h=h)  # still in the queue: it is full
    assert h.time_wait_count() == 2
    h.receive(packet(dpkt.tcp.TH_SYN, 50, opts=ts_opt(2000)), 3.0)
    assert tcp_out(h, 3.0) == []
    assert h.stats()["drop_tcp_listen_overflow"] == 1
    assert h.time_wait_count() == 1
