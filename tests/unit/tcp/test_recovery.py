"""Loss recovery: fast retransmit and NewReno (RFC 5681 §3.2, RFC 6582), SACK-based
recovery (RFC 6675), D-SACK tolerance, and RTO as the last resort."""

from tests.unit.tcp.helpers import IRS, ISS, MSS, new_tcb, peer, recv, send
from ustack.tcp import sack
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import ACK, PSH, SYN
from ustack.tcp.states import State

NEWRENO = TcpConfig(nodelay=True, congestion="newreno", sack=False, timestamps=False)
SACK = TcpConfig(nodelay=True, congestion="newreno", timestamps=False)


def sender(config: TcpConfig, segments: int, sack: bool = False):
    """ESTABLISHED, with `segments` full segments in flight (the initial window allows 10)."""
    tcb = new_tcb(config=config)
    tcb.open_passive(peer(SYN, IRS, mss=MSS, sack_permitted=sack), 0.0)
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=65535), 0.0)
    assert tcb.state is State.ESTABLISHED
    tcb.send(b"s" * (MSS * segments))
    out = recv(tcb, 0.0)
    assert [s.seq for s in out] == [ISS + 1 + i * MSS for i in range(segments)]
    return tcb


def seg_start(i: int) -> int:
    return ISS + 1 + i * MSS


def dupack(tcb, now: float = 0.1, sack: tuple[tuple[int, int], ...] = ()) -> list:
    send(tcb, peer(ACK, IRS + 1, seg_start(0), wnd=65535, sack=sack), now)
    return recv(tcb, now)


def test_three_duplicate_acks_give_one_fast_retransmit() -> None:
    tcb = sender(NEWRENO, 10)
    assert dupack(tcb) == [] and dupack(tcb) == []
    out = dupack(tcb)
    assert [(s.seq, len(s.payload)) for s in out] == [(seg_start(0), MSS)]
    assert tcb.in_recovery and tcb.counters["tcp_fast_retransmits"] == 1
    for _ in range(5):  # more duplicates: no second retransmission of the same segment
        assert all(s.seq != seg_start(0) for s in dupack(tcb))
    assert tcb.counters["tcp_fast_retransmits"] == 1


def test_newreno_window_follows_rfc_6582() -> None:
    tcb = sender(NEWRENO, 10)
    flight = 10 * MSS
    for _ in range(3):
        dupack(tcb)
    ssthresh = max(flight // 2, 2 * MSS)  # RFC 6582 §3.2 step 2
    assert tcb.cc.ssthresh == ssthresh
    assert tcb.cc.cwnd == ssthresh + 3 * MSS
    dupack(tcb)
    assert tcb.cc.cwnd == ssthresh + 4 * MSS  # step 4: inflate by one SMSS per duplicate
    # Step 5, a partial ACK (segments 0-2 arrive; 3 is also lost): resend segment 3 at
    # once, deflate by the amount acknowledged and add back one SMSS.
    cwnd = tcb.cc.cwnd
    send(tcb, peer(ACK, IRS + 1, seg_start(3), wnd=65535), 0.2)
    out = recv(tcb, 0.2)
    assert out[0].seq == seg_start(3) and len(out[0].payload) == MSS
    assert tcb.cc.cwnd == cwnd - 3 * MSS + MSS
    assert tcb.in_recovery
    # Step 3, the full ACK: cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
    nxt = tcb.snd_nxt
    send(tcb, peer(ACK, IRS + 1, nxt, wnd=65535), 0.3)
    assert not tcb.in_recovery
    assert tcb.cc.cwnd == min(ssthresh, max(0, MSS) + MSS)


def test_sack_blocks_steer_what_is_resent() -> None:
    tcb = sender(SACK, 8, sack=True)
    # Segments 0 and 2 are lost; the peer holds 1 and 3..7.
    blocks = [((seg_start(1), seg_start(2)),)]
    for i in range(3, 8):
        blocks.append(((seg_start(3), seg_start(i + 1)), (seg_start(1), seg_start(2))))
    resent = []
    for b in blocks:
        resent += [s.seq for s in dupack(tcb, sack=b) if s.payload]
    # RFC 6675: exactly the holes, never what the peer said it holds.
    assert sorted(set(resent)) == [seg_start(0), seg_start(2)]
    assert len(resent) == 2


def test_dsack_does_not_count_as_a_duplicate_ack() -> None:
    tcb = sender(SACK, 4, sack=True)
    old = (ISS + 1 - MSS, ISS + 1)  # a D-SACK block below SND.UNA (RFC 2883)
    for _ in range(6):
        assert dupack(tcb, sack=(old,)) == []
    assert not tcb.in_recovery and tcb.counters["tcp_fast_retransmits"] == 0


def test_window_updates_are_not_duplicate_acks() -> None:
    tcb = sender(NEWRENO, 4)
    for wnd in (60000, 50000, 40000, 30000):
        send(tcb, peer(ACK, IRS + 1, seg_start(0), wnd=wnd), 0.1)
    assert not tcb.in_recovery  # RFC 5681 §2 (e): the window must be unchanged


def test_rto_ends_recovery_with_a_one_segment_window() -> None:
    tcb = sender(SACK, 6, sack=True)
    for i in range(3):  # each duplicate reports one more segment held
        dupack(tcb, sack=((seg_start(2), seg_start(3 + i)),))
    assert tcb.in_recovery
    tcb.on_timer(tcb.next_deadline)
    out = recv(tcb, tcb.next_deadline)
    assert not tcb.in_recovery and tcb.cc.cwnd == MSS  # RFC 5681 §3.1 loss window
    assert [s.seq for s in out] == [seg_start(0)]


def test_after_a_timeout_what_the_peer_sacked_is_not_sent_again() -> None:
    # Linux tcp_timeout_mark_lost: the SACK marks outlive the timeout (RFC 6675 §5.1).
    tcb = sender(SACK, 6, sack=True)
    for i in range(3):
        dupack(tcb, sack=((seg_start(2), seg_start(3 + i)),))
    due = tcb.next_deadline
    tcb.on_timer(due)
    recv(tcb, due)  # segment 0 again
    assert tcb.scoreboard
    # Segment 0 arrives; the window opens: 1, then 5 (2-4 are held by the peer).
    send(tcb, peer(ACK, IRS + 1, seg_start(1), wnd=65535, sack=((seg_start(2),
                                                                 seg_start(5)),)), due + 0.1)
    sent = []
    for k in range(4):
        now = due + 0.1 + k * 0.01
        sent += [s.seq for s in recv(tcb, now) if s.payload]
        if sent:
            send(tcb, peer(ACK, IRS + 1, seg_start(1), wnd=65535,
                           sack=((seg_start(2), seg_start(5)),)), now)
    assert seg_start(1) in sent and seg_start(5) in sent
    assert not {seg_start(2), seg_start(3), seg_start(4)} & set(sent)


def test_a_peer_that_reneges_on_its_sacks_gets_everything_again() -> None:
    # RFC 2018 §8: the cumulative ACK stops where a SACKed range begins: the peer dropped
    # it; the marks go and the data counts as outstanding like the rest.
    tcb = sender(SACK, 6, sack=True)
    dupack(tcb, sack=((seg_start(2), seg_start(4)),))
    send(tcb, peer(ACK, IRS + 1, seg_start(2), wnd=65535), 0.2)
    assert tcb.counters["tcp_sack_reneging"] == 1
    assert not tcb.scoreboard


def test_recovery_runs_once_per_window() -> None:
    tcb = sender(NEWRENO, 10)
    for _ in range(3):
        dupack(tcb)
    send(tcb, peer(ACK, IRS + 1, seg_start(1), wnd=65535), 0.2)  # partial
    recv(tcb, 0.2)
    for _ in range(4):  # duplicates of the partial ACK
        send(tcb, peer(ACK, IRS + 1, seg_start(1), wnd=65535), 0.3)
        recv(tcb, 0.3)
    assert tcb.counters["tcp_fast_retransmits"] == 1  # RFC 6582 §3.2 step 2: recover


def test_no_new_recovery_below_the_recovery_point_after_a_timeout() -> None:
    tcb = sender(NEWRENO, 6)
    tcb.on_timer(tcb.next_deadline)  # RTO: recover = SND.NXT
    recv(tcb, 1.0)
    ssthresh = tcb.cc.ssthresh
    for _ in range(4):
        dupack(tcb, now=1.1)
    assert not tcb.in_recovery and tcb.cc.ssthresh == ssthresh  # RFC 6675 §5.1


def test_fast_retransmit_resends_exactly_one_segment_beside_timestamps() -> None:
    cfg = TcpConfig(nodelay=True, congestion="newreno", sack=False)
    tcb = new_tcb(config=cfg)
    tcb.open_passive(peer(SYN, IRS, mss=MSS, ts_val=1), 0.0)
    recv(tcb)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, ts_val=2, ts_ecr=0), 0.0)
    tcb.send(b"t" * (6 * (MSS - 12)))
    recv(tcb, 0.0)
    out = []
    for _ in range(3):
        send(tcb, peer(ACK, IRS + 1, ISS + 1, ts_val=3, ts_ecr=0), 0.1)
        out += recv(tcb, 0.1)
    assert [(s.seq, len(s.payload)) for s in out] == [(ISS + 1, MSS - 12)]
    send(tcb, peer(ACK, IRS + 1, ISS + 1, ts_val=3, ts_ecr=0), 0.1)  # inflate: new data only
    assert all(s.seq >= tcb.snd_nxt - len(s.payload) for s in recv(tcb, 0.1))


def test_karn_no_rtt_sample_from_a_fast_retransmitted_segment() -> None:
    tcb = sender(NEWRENO, 6)
    srtt = tcb.rtt.srtt
    for _ in range(3):
        dupack(tcb, now=0.9)
    send(tcb, peer(ACK, IRS + 1, tcb.snd_nxt, wnd=65535), 0.91)
    assert tcb.rtt.srtt == srtt  # MUST-18


def test_a_data_segment_with_new_sack_blocks_is_a_duplicate_ack() -> None:
    tcb = sender(SACK, 8, sack=True)
    for i in range(3):
        send(tcb, peer(ACK | PSH, IRS + 1 + i, seg_start(0), wnd=65535, payload=b"x",
                       sack=((seg_start(1), seg_start(2 + i)),)), 0.1)
    assert tcb.in_recovery  # RFC 6675 §2: the data does not hide the SACK news


def test_a_dsack_is_recognised_below_the_ack_or_inside_the_second_block() -> None:
    assert sack.is_dsack(((100, 200),), 200)  # RFC 2883 §4.2.1: at or below the ACK
    assert sack.is_dsack(((300, 400), (250, 500)), 200)  # §4.2.3: inside the second block
    assert not sack.is_dsack(((300, 400), (500, 600)), 200)
    assert not sack.is_dsack(((300, 400),), 200)
    assert not sack.is_dsack((), 200)
