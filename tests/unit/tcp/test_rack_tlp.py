"""RACK-TLP (RFC 8985) and PRR (RFC 6937), scripted on a virtual clock: loss found by
time, tail losses repaired by a probe instead of a timeout, the reordering window widened
by D-SACKs, and the window through a recovery."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, MSS, new_tcb, peer, recv, send
from ustack.tcp import timers
from ustack.tcp.config import TcpConfig
from ustack.tcp.prr import Prr
from ustack.tcp.recovery import REORDER_SLACK
from ustack.tcp.segment import ACK, SYN
from ustack.tcp.states import State

LINUX_SYN = dict(mss=MSS, wscale=7, sack_permitted=True, ts_val=1000, ts_ecr=0)
SEG = MSS - 12  # data per segment beside the timestamp option
RTT = 0.05


class Peer:
    """The receiving side, scripted: it answers with timestamps and SACK blocks. Its
    window scale is 7: a window field of 4000 offers 512,000 bytes."""

    def __init__(self, config: TcpConfig | None = None, wnd: int = 4000) -> None:
        self.tcb = new_tcb(config=config or TcpConfig(nodelay=True, congestion="newreno",
                                                      pacing=False))
        self.ts = 1000
        self.tcb.open_passive(peer(SYN, IRS, **LINUX_SYN), 0.0)
        (synack,) = recv(self.tcb, 0.0)
        self.ack(ISS + 1, RTT, ts_ecr=synack.opts.ts_val, wnd=wnd)
        assert self.tcb.state is State.ESTABLISHED and self.tcb.sack_ok and self.tcb.ts_ok

    def ack(self, ack: int, now: float, sack: tuple = (), ts_ecr: int | None = None,
            wnd: int = 4000) -> list:
        """An ACK at `now`, echoing (unless told) the TSval of what we sent an RTT ago."""
        self.ts += 1
        if ts_ecr is None:
            ts_ecr = self.tcb._ts_now(now - RTT)
        send(self.tcb, peer(ACK, IRS + 1, ack, wnd=wnd, ts_val=self.ts, ts_ecr=ts_ecr,
                            sack=sack), now)
        return recv(self.tcb, now)

    def send(self, segments: int, now: float) -> list:
        self.tcb.send(b"x" * SEG * segments)
        return recv(self.tcb, now)


def seg(i: int) -> int:
    return ISS + 1 + i * SEG


def fire(tcb, kind: str) -> float:
    assert tcb.timer_kind == kind
    due = tcb.next_deadline
    tcb.on_timer(due)
    return due


def test_a_lost_tail_is_repaired_by_a_probe_within_two_rtts_not_by_a_timeout() -> None:
    p = Peer()
    tcb = p.tcb
    steps = []
    tcb.on_recovery = lambda _tcb, kind, detail: steps.append((kind, detail))
    p.send(10, 1.0)
    p.ack(seg(8), 1.0 + RTT)  # segments 8 and 9 are lost: no ACK will say so
    assert tcb.timer_kind == timers.LOSS_PROBE
    due = tcb.next_deadline
    assert due - (1.0 + RTT) == pytest.approx(2 * tcb.rtt.srtt)  # RFC 8985 §7.2
    assert due < 1.0 + RTT + tcb.rtt.rto
    tcb.on_timer(due)
    (probe,) = recv(tcb, due)
    assert (probe.seq, len(probe.payload)) == (seg(9), SEG)  # the last segment again
    assert tcb.timer_kind == timers.RETRANSMIT  # the RTO behind the probe
    # Its ACK SACKs segment 9: RACK finds segment 8 lost by time and resends it at once.
    out = p.ack(seg(8), due + RTT, sack=((seg(9), seg(10)),))
    assert [s.seq for s in out if s.payload] == [seg(8)]
    assert tcb.in_recovery and tcb.counters["tcp_rack_lost"] == 1
    p.ack(seg(10), due + 2 * RTT)
    assert tcb.snd_una == tcb.snd_nxt and not tcb.in_recovery
    assert tcb.counters["tcp_rto"] == 0 and tcb.counters["tcp_tlp_probes"] == 1
    assert steps == [("loss_probe", "the last segment again"),
                     ("fast_recovery", "RACK: 1 lost")]  # what the ladder shows


def test_a_probe_sends_new_data_when_the_window_allows() -> None:
    p = Peer(wnd=23)  # 2944 bytes: two segments
    tcb = p.tcb
    p.send(2, 1.0)
    tcb.send(b"y" * SEG)  # held back: the peer's window is full
    assert recv(tcb, 1.0) == []
    out = p.ack(seg(1), 1.0 + RTT, wnd=63)  # segment 1 lost; room for more now
    assert [s.seq for s in out] == [seg(2)]
    due = fire(tcb, timers.LOSS_PROBE)
    tcb.send(b"z" * SEG)
    (probe,) = recv(tcb, due)
    assert probe.seq == seg(3)  # RFC 8985 §7.3: new data first
    assert tcb.counters["tcp_tlp_probes"] == 1


def test_a_probe_that_repaired_a_loss_reduces_the_window() -> None:
    p = Peer()
    tcb = p.tcb
    p.send(4, 1.0)
    p.ack(seg(3), 1.0 + RTT)  # the last segment is lost
    due = fire(tcb, timers.LOSS_PROBE)
    recv(tcb, due)  # the probe: segment 3 again
    cwnd = tcb.cc.cwnd
    p.ack(seg(4), due + RTT)  # covers the probe, no D-SACK: it was the only copy
    assert tcb.cc.cwnd == cwnd  # not yet judged (Linux waits for an ACK beyond it)
    p.send(1, due + RTT)
    p.ack(seg(5), due + 2 * RTT)
    assert tcb.counters["tcp_tlp_recovered"] == 1
    assert tcb.cc.cwnd < cwnd


def test_a_probe_answered_by_a_dsack_leaves_the_window_alone() -> None:
    p = Peer()
    tcb = p.tcb
    p.send(4, 1.0)
    p.ack(seg(3), 1.0 + RTT)
    due = fire(tcb, timers.LOSS_PROBE)
    recv(tcb, due)
    cwnd = tcb.cc.cwnd
    p.ack(seg(4), due + 0.01)  # the original arrived after all...
    p.ack(seg(4), due + RTT, sack=((seg(3), seg(4)),))  # ... and the probe: a D-SACK
    p.send(1, due + RTT)
    p.ack(seg(5), due + 2 * RTT)
    assert tcb.counters["tcp_tlp_recovered"] == 0
    assert tcb.cc.cwnd >= cwnd


def test_rack_marks_loss_by_time_not_by_count() -> None:
    p = Peer()
    tcb = p.tcb
    p.send(2, 1.0)  # one burst: segments 0 and 1 share a send time
    # Segment 1 is SACKed: one SACKed segment is far from DupThresh, but once RACK.rtt
    # plus the reordering window has passed since segment 0 was sent, it is lost.
    out = p.ack(seg(0), 1.0 + RTT, sack=((seg(1), seg(2)),))
    assert [s for s in out if s.payload] == []
    assert tcb.timer_kind == timers.REORDER
    reo_wnd = tcb._rack.min_rtt / 4
    assert tcb.next_deadline == pytest.approx(1.0 + RTT + reo_wnd + REORDER_SLACK)
    due = fire(tcb, timers.REORDER)
    out = recv(tcb, due)
    assert [s.seq for s in out if s.payload] == [seg(0)]
    assert tcb.counters["tcp_rack_lost"] == 1 and tcb.in_recovery


def test_rack_tolerates_reordering_within_the_window() -> None:
    p = Peer()
    tcb = p.tcb
    p.send(3, 1.0)
    p.ack(seg(0), 1.0 + RTT, sack=((seg(1), seg(3)),))
    assert tcb.timer_kind == timers.REORDER
    p.ack(seg(3), 1.0 + RTT + 0.001)  # segment 0 was only late
    assert not tcb.in_recovery and tcb.counters["tcp_rack_lost"] == 0
    assert tcb.retransmits == 0


def test_a_lost_retransmission_is_found_without_a_timeout() -> None:
    p = Peer()
    tcb = p.tcb
    p.send(8, 1.0)
    t = 1.0 + RTT
    sack = ((seg(1), seg(8)),)
    out = p.ack(seg(0), t, sack=sack)  # 7 SACKed: reo_wnd 0, segment 0 lost at once
    assert [s.seq for s in out if s.payload][:1] == [seg(0)]
    p.send(1, t)  # new data after the retransmission
    # The retransmission is lost too; segment 8, sent after it, is SACKed an RTT later.
    out = p.ack(seg(0), t + RTT, sack=((seg(1), seg(9)),))
    assert [s.seq for s in out if s.payload] == [seg(0)]  # again, by RACK
    assert tcb.counters["tcp_rto"] == 0 and tcb.counters["tcp_rack_lost"] == 2


def test_a_dsack_widens_the_reordering_window_once_per_round_trip() -> None:
    p = Peer()
    tcb = p.tcb
    rack = tcb._rack
    p.send(4, 1.0)
    p.ack(seg(2), 1.0 + RTT)
    assert rack.reo_wnd_mult == 1
    dsack = ((seg(0), seg(1)),)  # below the cumulative ACK: a duplicate (RFC 2883)
    p.ack(seg(2), 1.0 + RTT + 0.001, sack=dsack)
    assert rack.reo_wnd_mult == 2 and tcb.counters["tcp_rack_reo_wnd_changes"] == 1
    p.ack(seg(3), 1.0 + RTT + 0.002, sack=dsack)  # the same round trip: no more
    assert rack.reo_wnd_mult == 2
    p.ack(seg(4), 1.0 + RTT + 0.003)
    # After the round trip (SND.UNA passes what was sent then), it widens again.
    p.send(2, 1.1)
    p.ack(seg(6), 1.1 + RTT)
    p.ack(seg(6), 1.1 + RTT + 0.001, sack=dsack)
    assert rack.reo_wnd_mult == 3
    # The widened window is what RACK now waits for before calling a segment lost.
    p.send(2, 1.2)
    p.ack(seg(6), 1.2 + RTT, sack=((seg(7), seg(8)),))
    assert tcb.timer_kind == timers.REORDER
    assert tcb.next_deadline - (1.2 + RTT) == pytest.approx(
        min(3 * rack.min_rtt / 4, tcb.rtt.srtt) + REORDER_SLACK)


# ---------------------------------------------------------------- PRR (RFC 6937)

def test_prr_sends_half_a_segment_per_segment_delivered_when_ssthresh_is_half() -> None:
    # RFC 6937 §5's first example: 20 segments in flight, one lost, Reno's ssthresh of 10.
    # Each duplicate ACK delivers one segment; PRR sends one segment per two of them, so
    # the 19 that arrive release 10 (ssthresh) spread over the recovery.
    prr = Prr()
    prr.start(20 * MSS)
    ssthresh, sent, pipe = 10 * MSS, [], 19 * MSS  # the lost one is out of the pipe
    for _ in range(19):
        pipe -= MSS  # one more segment left the network
        cwnd = prr.on_ack(MSS, pipe, ssthresh, MSS)
        n = (cwnd - pipe) // MSS
        prr.sent(n * MSS)
        pipe += n * MSS
        sent.append(n)
    # In bytes (as RFC 6937 writes it), half a segment's credit waits for the next ACK;
    # at ssthresh PRR-SSRB takes over and holds the pipe there.
    assert sent == [0, 1] * 7 + [0, 0, 1, 1, 1]
    assert sum(sent) == 10 and pipe == ssthresh


def test_prr_ssrb_grows_back_no_faster_than_delivery_after_heavy_loss() -> None:
    # Below ssthresh (many losses), PRR-SSRB allows what was delivered plus one MSS.
    prr = Prr()
    prr.start(20 * MSS)
    ssthresh = 10 * MSS
    cwnd = prr.on_ack(MSS, 4 * MSS, ssthresh, MSS)  # pipe fell to 4 segments
    assert cwnd - 4 * MSS == 2 * MSS  # delivered 1 + 1
    prr.sent(2 * MSS)
    cwnd = prr.on_ack(3 * MSS, 5 * MSS, ssthresh, MSS)
    assert cwnd - 5 * MSS == 4 * MSS  # max(4 - 2, 3) + 1
    cwnd = prr.on_ack(MSS, 9 * MSS, ssthresh, MSS)
    assert cwnd == ssthresh  # never beyond ssthresh


def test_a_recovery_spreads_its_retransmission_and_new_data_over_the_acks() -> None:
    # One loss in a flight of 20 (NewReno: ssthresh = 10 segments). With PRR the sender
    # keeps sending through the recovery, about one segment per two ACKs, instead of a
    # silence while the pipe drains to ssthresh.
    p = Peer()
    tcb = p.tcb
    tcb.cc.cwnd = 20 * SEG
    tcb.cc.ssthresh = 20 * SEG
    p.send(20, 1.0)
    tcb.send(b"n" * SEG * 20)  # more queued behind
    sent = []
    t = 1.0 + RTT
    for i in range(2, 21):
        out = p.ack(seg(0), t, sack=((seg(1), seg(i)),), wnd=60000)
        sent.append(len([s for s in out if s.payload]))
        t += 0.001
    assert tcb.in_recovery
    assert 9 <= sum(sent) <= 11 and max(sent) <= 2  # ~ssthresh, spread, no burst
    assert sent.count(0) >= 7


def test_a_recovery_whose_retransmissions_all_come_back_dsacked_is_undone() -> None:
    # RFC 3708: segment 0 was only late. Its retransmission reaches the peer as a second
    # copy, which the peer reports in a D-SACK: the window cut is undone.
    p = Peer()
    tcb = p.tcb
    p.send(8, 1.0)
    cwnd = tcb.cc.cwnd
    t = 1.0 + RTT
    out = p.ack(seg(0), t, sack=((seg(1), seg(8)),))  # RACK: segment 0 lost
    assert [s.seq for s in out if s.payload] == [seg(0)] and tcb.in_recovery
    assert tcb.cc.cwnd < cwnd
    # The original arrives; the ACK echoes the retransmission's TSval all the same (the
    # Eifel check cannot tell), then the D-SACK of the second copy comes.
    p.ack(seg(8), t + 0.01, ts_ecr=tcb._ts_now(t))
    assert not tcb.in_recovery and tcb.cc.cwnd < cwnd
    p.ack(seg(8), t + RTT, sack=((seg(0), seg(1)),))
    assert tcb.cc.cwnd == cwnd and tcb.counters["tcp_dsack_undo"] == 1


def test_reordering_taken_for_two_losses_is_undone_by_the_echoes_of_both() -> None:
    # RFC 3522 over a whole recovery: segments 0 and 1 were late, not lost. The ACKs that
    # cover them echo their original TSvals, older than the first retransmission.
    p = Peer()
    tcb = p.tcb
    p.send(8, 1.0)
    original = tcb._ts_now(1.0)
    cwnd = tcb.cc.cwnd
    t = 1.0 + RTT + 0.005
    out = p.ack(seg(0), t, sack=((seg(2), seg(8)),))  # RACK: 0 and 1 lost
    assert [s.seq for s in out if s.payload] == [seg(0), seg(1)] and tcb.in_recovery
    p.ack(seg(1), t + 0.001, sack=((seg(2), seg(8)),), ts_ecr=original)  # partial
    assert tcb.in_recovery and tcb.cc.cwnd < cwnd
    p.ack(seg(8), t + 0.002, ts_ecr=original)
    assert not tcb.in_recovery and tcb.cc.cwnd >= cwnd  # restored, and this ACK grows it
    assert tcb.counters["tcp_spurious_fast_retransmit"] == 1


@pytest.mark.parametrize("cumulative", [False, True])
def test_a_recovery_whose_losses_arrive_before_they_are_resent_is_undone(
        cumulative: bool) -> None:
    # In one batch of ACKs the first makes RACK mark segment 0 lost, a later one SACKs
    # it (or ACKs everything): nothing was resent, nothing was lost, the window goes back.
    p = Peer()
    tcb = p.tcb
    p.send(8, 1.0)
    cwnd = tcb.cc.cwnd
    t = 1.0 + RTT
    ts = tcb._ts_now(1.0)
    send(tcb, peer(ACK, IRS + 1, seg(0), wnd=4000, ts_val=2000, ts_ecr=ts,
                   sack=((seg(1), seg(8)),)), t)
    assert tcb.in_recovery and tcb.cc.cwnd < cwnd
    later = (peer(ACK, IRS + 1, seg(8), wnd=4000, ts_val=2001, ts_ecr=ts) if cumulative
             else peer(ACK, IRS + 1, seg(0), wnd=4000, ts_val=2001, ts_ecr=ts,
                       sack=((seg(0), seg(8)),)))
    send(tcb, later, t)
    assert not tcb.in_recovery and tcb.cc.cwnd >= cwnd
    assert tcb.counters["tcp_reorder_undo"] == 1
    assert [s for s in recv(tcb, t) if s.payload] == []  # nothing resent
