"""Options: codec (RFC 9293 §3.1-3.2), window scale and timestamps (RFC 7323), SACK (RFC 2018)."""

import pytest

from tests.unit.tcp.helpers import IRS, ISS, MSS, brief, new_tcb, peer, recv, send
from ustack.tcp import options
from ustack.tcp.config import TcpConfig
from ustack.tcp.options import OptionError, Options
from ustack.tcp.segment import ACK, PSH, RST, SYN
from ustack.tcp.states import State

LINUX_SYN = dict(mss=1460, wscale=7, sack_permitted=True, ts_val=1000, ts_ecr=0)


# ---------------------------------------------------------------- codec


def test_codec_round_trip() -> None:
    opts = Options(mss=1460, wscale=7, sack_permitted=True, ts_val=5, ts_ecr=6,
                   sack=((10, 20), (30, 40)))
    data = options.encode(opts)
    assert len(data) % 4 == 0  # padded with NOPs (MUST-69 asks for zero padding at the end)
    assert options.parse(data) == opts


def test_unknown_options_are_skipped_by_length() -> None:
    # MUST-6: kind 30 (MPTCP) and kind 99 are not ours; MSS after them still counts.
    assert options.parse(bytes([30, 4, 0, 0, 99, 2, 2, 4, 5, 0xB4])).mss == 1460


def test_end_of_list_stops_parsing() -> None:
    assert options.parse(bytes([0, 2, 4, 5, 0xB4])).mss is None


@pytest.mark.parametrize(
    "raw",
    [
        bytes([2, 4, 5]),  # runs past the header
        bytes([2, 1]),  # length below 2
        bytes([2, 3, 5, 0xB4]),  # MSS of the wrong length
        bytes([8, 9] + [0] * 7),  # timestamp of the wrong length
        bytes([5, 6, 0, 0, 0, 0]),  # SACK not a multiple of 8
        bytes([1, 1, 7]),  # a kind with no length byte
    ],
)
def test_malformed_option_lists_are_errors(raw: bytes) -> None:
    with pytest.raises(OptionError):  # the host drops such segments (MUST-7)
        options.parse(raw)


def test_window_scale_above_14_is_used_as_14() -> None:
    assert options.parse(bytes([3, 3, 15])).wscale == 14  # RFC 7323 §2.3


# ----------------------------------------------------------- negotiation


def passive(config: TcpConfig | None = None, **syn_opts: object):
    tcb = new_tcb(config=config or TcpConfig(nodelay=True))
    tcb.open_passive(peer(SYN, IRS, **syn_opts), 0.0)
    return tcb


def test_syn_ack_echoes_what_the_syn_offered() -> None:
    tcb = passive(**LINUX_SYN)
    (synack,) = recv(tcb)
    o = synack.opts
    assert (o.mss, o.wscale, o.sack_permitted) == (MSS, tcb.rcv_wscale, True)
    assert (o.ts_ecr, synack.wnd) == (1000, 65535)  # RFC 7323 §2.2: a SYN's window is unscaled
    assert tcb.snd_wscale == 7 and tcb.ts_ok and tcb.sack_ok


def test_syn_ack_offers_nothing_the_syn_did_not() -> None:
    tcb = passive(mss=1460)
    (synack,) = recv(tcb)
    assert synack.opts == Options(mss=MSS)  # RFC 7323 §2.2, §3.2; RFC 2018 §2
    assert tcb.rcv_wscale == tcb.snd_wscale == 0 and not tcb.ts_ok and not tcb.sack_ok


def test_disabled_options_are_not_negotiated() -> None:
    cfg = TcpConfig(window_scaling=False, timestamps=False, sack=False)
    tcb = passive(cfg, **LINUX_SYN)
    (synack,) = recv(tcb)
    assert synack.opts == Options(mss=MSS)


def test_active_syn_offers_all_and_keeps_only_what_comes_back() -> None:
    tcb = new_tcb()
    tcb.open_active(0.0)
    (syn,) = recv(tcb)
    assert syn.opts.wscale == tcb.rcv_wscale and syn.opts.sack_permitted
    assert syn.opts.ts_val is not None and syn.opts.ts_ecr == 0
    send(tcb, peer(SYN | ACK, IRS, ISS + 1, mss=1400))  # the peer knows none of them
    assert tcb.state is State.ESTABLISHED
    assert (tcb.rcv_wscale, tcb.snd_wscale, tcb.ts_ok, tcb.sack_ok) == (0, 0, False, False)
    assert recv(tcb)[0].opts == Options()


def established_with(**syn_opts: object):
    tcb = passive(**syn_opts)
    (synack,) = recv(tcb)
    ack_opts = {"ts_val": 1001, "ts_ecr": synack.opts.ts_val} if "ts_val" in syn_opts else {}
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=512, **ack_opts))
    assert tcb.state is State.ESTABLISHED
    return tcb


# -------------------------------------------------------- window scaling


def test_peer_window_is_scaled_except_in_syn() -> None:
    tcb = established_with(mss=1460, wscale=7)
    assert tcb.snd_wnd == 512 << 7  # RFC 7323 §2.3: SND.WND = SEG.WND << Snd.Wind.Shift


def test_window_scale_shift_14() -> None:
    tcb = passive(TcpConfig(rcv_buf=1 << 30, nodelay=True), mss=1460, wscale=14)
    assert tcb.rcv_wscale == 14
    (synack,) = recv(tcb)
    assert synack.opts.wscale == 14 and synack.wnd == 65535
    send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=3))
    assert tcb.snd_wnd == 3 << 14
    assert recv(tcb) == []
    tcb.send(b"x")
    (data,) = recv(tcb)
    # Our window field, scaled by 2**14: a 1 GiB buffer offers 65535 << 14 at most.
    assert data.wnd == 65535 and tcb._rcv_adv == (IRS + 1 + (65535 << 14)) & 0xFFFF_FFFF


def test_our_window_field_is_scaled_down_and_rounded_up() -> None:
    tcb = established_with(mss=1460, wscale=7)
    shift = tcb.rcv_wscale
    tcb.send(b"x")
    (seg,) = recv(tcb)
    assert seg.wnd == -(-(256 * 1024) >> shift)  # the whole 256 KiB buffer, in units
    assert seg.wnd << shift == 256 * 1024


# ----------------------------------------------------------- timestamps


def test_every_segment_carries_timestamps_once_negotiated() -> None:
    tcb = established_with(**LINUX_SYN)
    tcb.send(b"data")
    (seg,) = recv(tcb, 0.5)
    assert seg.opts.ts_ecr == 1001  # TS.Recent from the peer's last in-window segment
    assert seg.opts.ts_val is not None
    assert len(seg.payload) == 4


def test_timestamps_shrink_the_payload_by_12() -> None:
    tcb = established_with(**LINUX_SYN)
    tcb.send(b"z" * 3000)
    assert [len(s.payload) for s in recv(tcb)][:2] == [MSS - 12, MSS - 12]  # RFC 9293 §3.7.1


def test_paws_drops_an_old_timestamp_and_acks() -> None:
    tcb = established_with(**LINUX_SYN)
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 1, payload=b"old", ts_val=999, ts_ecr=0))
    assert tcb.readable == 0  # RFC 7323 §5.3 R1
    (ack,) = recv(tcb)
    assert brief([ack]) == [(ACK, ISS + 1, IRS + 1, b"")]


def test_paws_takes_text_one_tick_older_than_ts_recent() -> None:
    # Linux TCP_PAWS_WINDOW: a segment sent in the millisecond before a retransmission
    # that arrived first (and moved TS.Recent) is new text, not an old duplicate.
    tcb = established_with(**LINUX_SYN)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a", ts_val=1005, ts_ecr=0))
    assert tcb.ts_recent == 1005
    send(tcb, peer(ACK, IRS + 2, ISS + 1, payload=b"b", ts_val=1004, ts_ecr=0))
    assert tcb.read() == b"ab" and tcb.ts_recent == 1005  # taken; TS.Recent not moved back
    reason = tcb.on_segment(peer(ACK, IRS + 3, ISS + 1, payload=b"c", ts_val=1003, ts_ecr=0),
                            0.0)
    assert reason is not None and reason.name == "TCP_PAWS"  # two ticks: R1 holds


def test_paws_answers_old_pure_acks_at_most_twice_a_second() -> None:
    # Linux tcp_oow_rate_limited: a burst of ACKs the path reordered behind newer ones
    # draws one ACK per 500 ms; a segment with data still draws one each.
    tcb = established_with(**LINUX_SYN)
    answers = []
    for i, now in enumerate((1.0, 1.1, 1.2, 1.6)):
        send(tcb, peer(ACK, IRS + 1, ISS + 1, wnd=1000 + i, ts_val=999, ts_ecr=0), now)
        answers.append(len(recv(tcb, now)))
    assert answers == [1, 0, 0, 1]
    send(tcb, peer(ACK | PSH, IRS + 1, ISS + 1, payload=b"old", ts_val=999, ts_ecr=0), 1.7)
    assert len(recv(tcb, 1.7)) == 1


def test_paws_does_not_apply_to_rst() -> None:
    tcb = established_with(**LINUX_SYN)
    send(tcb, peer(RST, IRS + 1, ts_val=5, ts_ecr=0))
    assert tcb.state is State.CLOSED


def test_ts_recent_follows_the_left_edge_only() -> None:
    tcb = established_with(**LINUX_SYN)
    send(tcb, peer(ACK, IRS + 1 + 100, ISS + 1, payload=b"later", ts_val=3000, ts_ecr=0))
    assert tcb.ts_recent == 1001  # beyond Last.ACK.sent: not recorded (RFC 7323 §4.3 R3)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"now", ts_val=2000, ts_ecr=0))
    assert tcb.ts_recent == 2000


def test_rtt_is_measured_from_the_echoed_timestamp() -> None:
    tcb = established_with(**LINUX_SYN)
    tcb.send(b"x")
    (seg,) = recv(tcb, 10.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 2, ts_val=1002, ts_ecr=seg.opts.ts_val), 10.25)
    # RFC 7323 §4.1 (RTTM): R = 0.25 s; the handshake gave R = 0, so SRTT = 0.25 / 8.
    assert tcb.rtt.srtt == pytest.approx(0.25 / 8, abs=0.001)


@pytest.mark.parametrize("offset", [2**30, -(2**30), 2**31 - 1])
def test_a_tsecr_from_the_future_or_far_past_gives_no_rtt_sample(offset: int) -> None:
    # RFC 7323 §4.1 with Linux's plausibility bound (tcp_rtt_tsopt_us): an echoed value
    # ahead of our clock, or older than any RTT can be, is not an RTT. Before the bound an
    # echo 2**30 ms ahead sampled ~3 * 2**30 ms and pinned RTO at 60 s.
    tcb = established_with(**LINUX_SYN)
    rto = tcb.rtt.rto
    tcb.send(b"a" * 100)
    (seg,) = recv(tcb, 10.0)
    tcb.send(b"b" * 100)
    assert len(recv(tcb, 10.0)) == 1
    bogus = (seg.opts.ts_val + offset) & 0xFFFF_FFFF
    send(tcb, peer(ACK, IRS + 1, ISS + 101, wnd=512, ts_val=1002, ts_ecr=bogus), 10.002)
    # The timed segment (sent at 10.0, acknowledged at 10.002) gives the sample instead.
    assert tcb.rtt.srtt == pytest.approx(0.002 / 8, abs=1e-4)
    assert tcb.rtt.rto == rto
    # The rest is lost: it is sent again after the ordinary RTO, not after a minute.
    deadline = tcb.next_deadline
    assert deadline == pytest.approx(10.002 + rto)
    tcb.on_timer(deadline)
    assert brief(recv(tcb, deadline)) == [(ACK | PSH, ISS + 101, IRS + 1, b"b" * 100)]


# ----------------------------------------------------------------- SACK


def test_sack_blocks_describe_held_data_newest_first() -> None:
    tcb = established_with(mss=1460, sack_permitted=True)
    send(tcb, peer(ACK, IRS + 101, ISS + 1, payload=b"b" * 100))
    (ack1,) = recv(tcb)
    assert ack1.ack == IRS + 1 and ack1.opts.sack == ((IRS + 101, IRS + 201),)
    send(tcb, peer(ACK, IRS + 301, ISS + 1, payload=b"d" * 100))
    (ack2,) = recv(tcb)
    assert ack2.opts.sack == ((IRS + 301, IRS + 401), (IRS + 101, IRS + 201))  # RFC 2018 §4
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))  # fills the first gap
    (ack3,) = recv(tcb)
    assert ack3.ack == IRS + 201 and ack3.opts.sack == ((IRS + 301, IRS + 401),)
    assert tcb.read() == b"a" * 100 + b"b" * 100


def test_no_sack_blocks_without_permission() -> None:
    tcb = established_with(mss=1460)
    send(tcb, peer(ACK, IRS + 101, ISS + 1, payload=b"b" * 100))
    (ack,) = recv(tcb)
    assert ack.opts.sack == ()


def test_at_most_three_sack_blocks_beside_timestamps() -> None:
    tcb = established_with(**LINUX_SYN)
    for i in range(5):
        send(tcb, peer(ACK, IRS + 101 + 200 * i, ISS + 1, payload=b"x" * 100, ts_val=1001,
                       ts_ecr=0))
    acks = recv(tcb)
    # One for each out-of-order segment (RFC 5681 §4.2): each opens a hole of its own,
    # which is never left to a shared ACK, with the newest block first.
    assert len(acks) == 5
    ack = acks[-1]
    assert len(ack.opts.sack) == 3 and ack.opts.sack[0] == (IRS + 901, IRS + 1001)


# ------------------------------------------------------------ D-SACK (RFC 2883)


def test_a_wholly_old_segment_is_reported_in_a_dsack_block_once() -> None:
    # RFC 2883 §4.1.1: a duplicate below RCV.NXT; the ACK goes at once, its first block
    # is the duplicate range, and the next ACK no longer carries it.
    tcb = established_with(mss=1460, sack_permitted=True)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))
    recv(tcb, 1.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))  # again
    (ack,) = recv(tcb)
    assert ack.ack == IRS + 101 and ack.opts.sack == ((IRS + 1, IRS + 101),)
    assert tcb.counters["tcp_dsack_sent"] == 1
    send(tcb, peer(ACK, IRS + 301, ISS + 1, payload=b"c" * 100))
    (ack,) = recv(tcb)
    assert ack.opts.sack == ((IRS + 301, IRS + 401),)


def test_a_duplicate_of_held_out_of_order_data_comes_first_then_the_blocks() -> None:
    # RFC 2883 §4.1.2 (example 4.2.3 in spirit): the duplicate, then the SACK block that
    # holds it.
    tcb = established_with(mss=1460, sack_permitted=True)
    send(tcb, peer(ACK, IRS + 101, ISS + 1, payload=b"b" * 100))
    recv(tcb)
    send(tcb, peer(ACK, IRS + 151, ISS + 1, payload=b"b" * 100))  # half held already
    (ack,) = recv(tcb)
    assert ack.ack == IRS + 1
    assert ack.opts.sack == ((IRS + 151, IRS + 201), (IRS + 101, IRS + 251))


def test_a_segment_overlapping_rcv_nxt_reports_its_old_part() -> None:
    tcb = established_with(mss=1460, sack_permitted=True)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))
    recv(tcb, 1.0)
    send(tcb, peer(ACK, IRS + 51, ISS + 1, payload=b"a" * 50 + b"n" * 50))
    acks = recv(tcb, 2.0)  # the delayed ACK (nothing forces it out at once)
    assert acks == []
    tcb.on_timer(3.0)
    (ack,) = recv(tcb, 3.0)
    assert ack.ack == IRS + 151 and ack.opts.sack == ((IRS + 51, IRS + 101),)


def test_no_dsack_without_sack_permission() -> None:
    tcb = established_with(mss=1460)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))
    recv(tcb, 1.0)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))
    (ack,) = recv(tcb)
    assert ack.opts.sack == () and "tcp_dsack_sent" not in tcb.counters


def test_a_dsack_rides_on_one_data_segment_only() -> None:
    tcb = established_with(mss=1460, sack_permitted=True)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))
    recv(tcb, 1.0)
    tcb.send(b"x" * 4000)
    send(tcb, peer(ACK, IRS + 1, ISS + 1, payload=b"a" * 100))
    out = recv(tcb)
    assert len(out) >= 2
    assert out[0].opts.sack == ((IRS + 1, IRS + 101),)
    assert all(s.opts.sack == () for s in out[1:])
