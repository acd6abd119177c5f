"""Spurious retransmissions (timeouts and fast retransmits): RFC 3522 detection with
timestamps, RFC 4015's undo."""

from tests.unit.tcp.helpers import IRS, ISS, MSS, new_tcb, peer, recv, send
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import ACK, SYN
from ustack.tcp.states import State

LINUX_SYN = dict(mss=MSS, wscale=7, sack_permitted=True, ts_val=1000, ts_ecr=0)
SEG = MSS - 12  # data per segment beside the timestamp option


def with_flight():
    """Timestamps on; four segments in flight; returns the TCB, the segments, the time.
    No tail loss probe: these are about what the timeout does."""
    tcb = new_tcb(config=TcpConfig(nodelay=True, rack=False))
    tcb.open_passive(peer(SYN, IRS, **LINUX_SYN), 0.0)
    (synack,) = recv(tcb, 0.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000, ts_val=1001,
                   ts_ecr=synack.opts.ts_val), 0.05)
    assert tcb.state is State.ESTABLISHED and tcb.ts_ok
    tcb.send(b"x" * 4 * SEG)
    segs = recv(tcb, 1.0)
    assert len(segs) == 4
    return tcb, segs


def timeout(tcb):
    due = tcb.next_deadline
    tcb.on_timer(due)
    (again,) = recv(tcb, due)
    assert again.seq == ISS + 1  # go-back-N starts at SND.UNA
    return again, due


def test_an_ack_for_the_original_transmission_undoes_the_timeout() -> None:
    tcb, segs = with_flight()
    cwnd, ssthresh = tcb.cc.cwnd, tcb.cc.ssthresh
    again, due = timeout(tcb)
    assert tcb.cc.cwnd == SEG and again.opts.ts_val > segs[0].opts.ts_val
    # The original was only delayed: its ACK echoes the original's TSval.
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + SEG, wnd=1000, ts_val=1002,
                   ts_ecr=segs[0].opts.ts_val), due + 0.01)
    assert tcb.counters["tcp_spurious_rto"] == 1
    assert (tcb.cc.cwnd, tcb.cc.ssthresh) >= (cwnd, ssthresh)  # as before the timeout
    # No go-back-N: the rest was never lost and is not sent again.
    assert all(s.seq != ISS + 1 + SEG for s in recv(tcb, due + 0.01))


def test_an_ack_for_the_retransmission_keeps_the_reduction() -> None:
    tcb, _ = with_flight()
    again, due = timeout(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + SEG, wnd=1000, ts_val=1002,
                   ts_ecr=again.opts.ts_val), due + 0.01)
    assert "tcp_spurious_rto" not in tcb.counters
    assert tcb.cc.cwnd <= 2 * SEG
    # Go-back-N goes on with the next segment (RFC 5681 §3.1 after a real loss).
    assert recv(tcb, due + 0.01)[0].seq == ISS + 1 + SEG


def test_a_lone_fin_is_not_judged() -> None:
    # A peer in TIME-WAIT answers a retransmitted FIN with the TSecr of the first copy
    # (Linux tcp_timewait_state_process): a lost ACK would look like a spurious timeout.
    tcb, segs = with_flight()
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + 4 * SEG, wnd=1000, ts_val=1002,
                   ts_ecr=segs[-1].opts.ts_val), 1.01)
    tcb.shutdown()
    (fin,) = recv(tcb, 1.02)
    due = tcb.next_deadline
    tcb.on_timer(due)
    recv(tcb, due)
    send(tcb, peer(ACK, IRS + 1, ISS + 2 + 4 * SEG, wnd=1000, ts_val=1003,
                   ts_ecr=fin.opts.ts_val), due + 0.01)
    assert tcb.state is State.FIN_WAIT_2
    assert "tcp_spurious_rto" not in tcb.counters


def fast_retransmit(tcb, segs, now: float = 1.1):
    """Three duplicate ACKs, SACKing segments 2-4: segment 1 is resent at once."""
    for i in range(1, 4):
        sacked = ((ISS + 1 + SEG, ISS + 1 + (i + 1) * SEG),)
        send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000, ts_val=1002,
                       ts_ecr=segs[i].opts.ts_val, sack=sacked), now)
    (again,) = [s for s in recv(tcb, now) if s.payload]
    assert again.seq == ISS + 1 and tcb.in_recovery
    return again


def test_a_fast_retransmit_that_reordering_set_off_is_undone() -> None:
    # The first segment was only overtaken: the ACK that covers it echoes its own
    # (older) timestamp, so the window cut is undone and recovery ends (RFC 3522; Linux
    # tcp_try_undo_recovery).
    tcb, segs = with_flight()
    cwnd, ssthresh = tcb.cc.cwnd, tcb.cc.ssthresh
    again = fast_retransmit(tcb, segs)
    assert tcb.cc.cwnd < cwnd and again.opts.ts_val > segs[0].opts.ts_val
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + 4 * SEG, wnd=1000, ts_val=1003,
                   ts_ecr=segs[0].opts.ts_val), 1.2)
    assert tcb.counters["tcp_spurious_fast_retransmit"] == 1
    assert not tcb.in_recovery
    assert (tcb.cc.cwnd, tcb.cc.ssthresh) >= (cwnd, ssthresh)


def test_a_fast_retransmit_of_a_lost_segment_keeps_the_cut() -> None:
    tcb, segs = with_flight()
    cwnd = tcb.cc.cwnd
    again = fast_retransmit(tcb, segs)
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + 4 * SEG, wnd=1000, ts_val=1003,
                   ts_ecr=again.opts.ts_val), 1.2)
    assert "tcp_spurious_fast_retransmit" not in tcb.counters
    assert tcb.cc.cwnd < cwnd


def test_a_reordered_duplicate_ack_passes_paws_and_its_sack_counts() -> None:
    # Linux tcp_disordered_ack: a pure duplicate ACK a little older than TS.Recent is the
    # path reordering ACKs, not an old duplicate; its SACK blocks are news.
    tcb, segs = with_flight()
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000, ts_val=1005, ts_ecr=segs[1].opts.ts_val,
                   sack=((ISS + 1 + SEG, ISS + 1 + 2 * SEG),)), 1.1)
    reason = tcb.on_segment(peer(ACK, IRS + 1, ISS + 1, wnd=1000, ts_val=1004,
                                 ts_ecr=segs[2].opts.ts_val,
                                 sack=((ISS + 1 + SEG, ISS + 1 + 3 * SEG),)), 1.1)
    assert reason is None and tcb.scoreboard.sacked == 2 * SEG


def test_an_older_ack_that_moves_anything_still_fails_paws() -> None:
    tcb, segs = with_flight()
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000, ts_val=1005, ts_ecr=segs[0].opts.ts_val),
         1.1)
    una = tcb.snd_una
    for ack, wnd in ((ISS + 1 + SEG, 1000), (ISS + 1, 2000)):  # new data acked; window
        reason = tcb.on_segment(peer(ACK, IRS + 1, ack, wnd=wnd, ts_val=1003,
                                     ts_ecr=segs[0].opts.ts_val), 1.1)
        assert reason is not None and reason.name == "TCP_PAWS"
    assert tcb.snd_una == una


def test_the_ack_of_a_retransmission_times_it_by_its_timestamp() -> None:
    # Karn leaves a retransmitted segment untimed, but its echoed TSval dates the copy that
    # arrived (RFC 7323 §4.1; Linux tcp_ack_update_rtt): the backed-off RTO comes back
    # down. Without it a long recovery kept doubling RTO up to 60 s.
    tcb, _ = with_flight()
    rto = tcb.rtt.rto
    again, due = timeout(tcb)
    assert tcb.rtt.rto == 2 * rto
    send(tcb, peer(ACK, IRS + 1, ISS + 1 + SEG, wnd=1000, ts_val=1002,
                   ts_ecr=again.opts.ts_val), due + 0.01)
    assert tcb.rtt.rto < 2 * rto
