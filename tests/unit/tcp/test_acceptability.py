"""RFC 9293 §3.10.7.4, Table 6: every row of the acceptability test, also across 2**32.

A segment that fails the test is answered with <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
(unless it is a RST) and dropped; one that passes is processed.
"""

import pytest

from tests.unit.tcp.helpers import brief, established, peer, recv, send
from ustack.tcp import seq
from ustack.tcp.config import TcpConfig
from ustack.tcp.segment import ACK, FIN

NEAR_WRAP = 0xFFFF_FFF0  # IRS so that RCV.NXT sits just below 2**32
WND = 1000


def tcb_with_window(irs: int, wnd: int):
    """ESTABLISHED with exactly `wnd` bytes of receive window offered."""
    tcb = established(irs=irs, config=TcpConfig(rcv_buf=wnd, nodelay=True))
    assert seq.sub(tcb._rcv_adv, tcb.rcv_nxt) == wnd
    return tcb


def zero_window_tcb(irs: int):
    tcb = tcb_with_window(irs, 100)
    send(tcb, peer(ACK, seq.add(irs, 1), tcb.snd_nxt, payload=b"x" * 100))
    recv(tcb)  # ACK with window 0
    assert seq.sub(tcb._rcv_adv, tcb.rcv_nxt) == 0
    return tcb


@pytest.mark.parametrize("irs", [1000, NEAR_WRAP])
@pytest.mark.parametrize(
    ("offset", "length", "fin", "advance", "held", "acked_now"),
    [
        # Row 2: length 0, window > 0: RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND
        (0, 0, False, 0, 0, False),
        (WND - 1, 0, False, 0, 0, False),
        (WND, 0, False, None, 0, True),
        (-1, 0, False, None, 0, True),
        # Row 4: length > 0, window > 0: first or last byte inside the window
        (0, 10, False, 10, 0, False),  # in order: delivered, the ACK may wait
        (WND - 1, 10, False, 0, 1, True),  # last byte of the window: held, trimmed to 1
        (-5, 10, False, 5, 0, False),  # straddles RCV.NXT: the new half is delivered
        (-10, 10, False, None, 0, True),  # wholly old
        (WND, 10, False, None, 0, True),  # wholly beyond
        (-1, 0, True, None, 0, True),  # an old FIN: SEG.LEN counts it, before RCV.NXT
        (0, 0, True, 1, 0, True),  # a FIN at RCV.NXT
    ],
)
def test_table6_window_open(irs: int, offset: int, length: int, fin: bool,
                            advance: int | None, held: int, acked_now: bool) -> None:
    """advance None: not acceptable, so nothing is processed and an ACK answers it."""
    tcb = tcb_with_window(irs, WND)
    rcv_nxt = tcb.rcv_nxt
    flags = ACK | (FIN if fin else 0)
    send(tcb, peer(flags, seq.add(rcv_nxt, offset), tcb.snd_nxt, payload=b"d" * length))
    assert tcb.rcv_nxt == seq.add(rcv_nxt, advance or 0)
    assert tcb._ooo.held == held
    out = brief(recv(tcb))
    assert out == ([(ACK, tcb.snd_nxt, tcb.rcv_nxt, b"")] if acked_now else [])


@pytest.mark.parametrize("irs", [1000, NEAR_WRAP])
def test_table6_row1_zero_window_empty_segment_only_at_rcv_nxt(irs: int) -> None:
    tcb = zero_window_tcb(irs)
    una = tcb.snd_una
    tcb.send(b"q")
    recv(tcb)
    send(tcb, peer(ACK, seq.add(tcb.rcv_nxt, 1), seq.add(una, 1)))  # not at RCV.NXT
    assert tcb.snd_una == una  # its ACK field was not processed
    assert brief(recv(tcb)) == [(ACK, tcb.snd_nxt, tcb.rcv_nxt, b"")]
    send(tcb, peer(ACK, tcb.rcv_nxt, seq.add(una, 1)))  # exactly RCV.NXT: acceptable
    assert tcb.snd_una == seq.add(una, 1)


@pytest.mark.parametrize("irs", [1000, NEAR_WRAP])
def test_table6_row3_zero_window_data_not_acceptable_but_ack_counts(irs: int) -> None:
    tcb = zero_window_tcb(irs)
    rcv_nxt = tcb.rcv_nxt
    tcb.send(b"q")
    recv(tcb)
    # Text at RCV.NXT into a zero window: not accepted, but "special allowance should be
    # made to accept valid ACKs" (§3.10.7.4): the ACK of our byte counts.
    send(tcb, peer(ACK, rcv_nxt, tcb.snd_nxt, payload=b"zz"))
    assert tcb.rcv_nxt == rcv_nxt and tcb.readable == 100
    assert tcb.snd_una == tcb.snd_nxt
    assert brief(recv(tcb)) == [(ACK, tcb.snd_nxt, rcv_nxt, b"")]
    send(tcb, peer(ACK, seq.add(rcv_nxt, 5), tcb.snd_nxt, payload=b"zz"))  # elsewhere
    assert brief(recv(tcb)) == [(ACK, tcb.snd_nxt, rcv_nxt, b"")]


def test_data_crossing_2_32_is_delivered_in_order() -> None:
    tcb = established(irs=0xFFFF_FFFA)
    first = tcb.rcv_nxt
    send(tcb, peer(ACK, first, tcb.snd_nxt, payload=b"0123456789"))
    assert tcb.read() == b"0123456789"
    assert tcb.rcv_nxt == 5  # wrapped: 0xFFFFFFFB + 10 - 2**32
    send(tcb, peer(ACK, 5, tcb.snd_nxt, payload=b"after"))
    assert tcb.read() == b"after"


def test_sending_across_2_32_is_acked_across_it() -> None:
    tcb = established(iss=0xFFFF_FFF0)
    tcb.send(b"a" * 40)
    (seg,) = recv(tcb)
    assert seg.seq == 0xFFFF_FFF1 and len(seg.payload) == 40
    send(tcb, peer(ACK, tcb.rcv_nxt, 0x19))  # 0xFFFFFFF1 + 40 wraps to 0x19
    assert tcb.snd_una == 0x19 and tcb.send_buffered == 0 and tcb.next_deadline is None
