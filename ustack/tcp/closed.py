"""A segment for no connection (RFC 9293 §3.10.7.1, CLOSED; §3.5.2): what answers it."""

from ustack.tcp import seq
from ustack.tcp.segment import ACK, RST, Segment


def reset_for(seg: Segment) -> Segment | None:
    """The RST for anything but a RST (never answer a RST with a RST): <SEQ=SEG.ACK>
    <CTL=RST> to an ACK, else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return Segment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
    ack = seq.add(seg.seq, seg.seg_len)
    return Segment(seg.dst_port, seg.src_port, 0, ack, RST | ACK, 0)
