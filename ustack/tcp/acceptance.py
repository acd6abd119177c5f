"""Is an arriving segment acceptable? RFC 9293 §3.10.7.4 (first, Table 6) and RFC 7323's
timestamp rules, for every place that receives: a TCB's full path, its header prediction
and a TIME-WAIT record. One copy of each rule."""

from ustack.tcp import seq


def in_window(seg_seq: int, seg_len: int, rcv_nxt: int, rcv_adv: int) -> bool:
    """RFC 9293 §3.10.7.4 Table 6, against the window we advertised: [RCV.NXT, rcv_adv).

    With a zero window only a segment at exactly RCV.NXT is taken: an ACK or a RST there
    must still count (the RFC's "special allowance"); its text is trimmed away later."""
    if not seq.ahead(rcv_adv, rcv_nxt):
        return seg_seq == rcv_nxt
    if seg_len == 0:
        return seq.in_range(seg_seq, rcv_nxt, rcv_adv)
    return (seq.in_range(seg_seq, rcv_nxt, rcv_adv)
            or seq.in_range(seq.add(seg_seq, seg_len - 1), rcv_nxt, rcv_adv))


# Linux TCP_PAWS_WINDOW (tcp_paws_discard): a connection's segment may carry a TSval one
# tick older than TS.Recent. A deviation from R1's "<" that Linux makes too: peers tick
# in milliseconds, and on a path that reorders, a segment sent in the tick before a
# retransmission can arrive after it (which moved TS.Recent). Strict R1 dropped that
# new text: 43 segments of a 10 MB upload at 5 % reordering, each one resent.
PAWS_WINDOW = 1


def paws_rejects(ts_val: int, ts_recent: int, window: int = PAWS_WINDOW) -> bool:
    """RFC 7323 §5.3 (R1): a TSval older than TS.Recent (by more than `window` ticks)
    marks an old duplicate. TIME-WAIT is strict (window 0, as Linux tcp_paws_reject)."""
    return window < seq.ahead(ts_recent, ts_val)


def keeps_ts(ts_val: int, ts_recent: int, seg_seq: int, last_ack_sent: int) -> bool:
    """RFC 7323 §4.3 (R3): does this acceptable segment's TSval become TS.Recent? Only a
    segment at the left edge (SEG.SEQ =< Last.ACK.sent) with a TSval not older."""
    return seq.ge(ts_val, ts_recent) and seq.le(seg_seq, last_ack_sent)
