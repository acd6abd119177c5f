"""A router said a segment of this connection did not fit the path (ICMPv6 Packet Too
Big, ICMP Fragmentation Needed; `ustack.pmtu` reads them): the send MSS falls to fit
and what was sent in larger segments goes again in smaller ones (RFC 8201 §5.4, RFC 1191
§6.3; Linux tcp_v6_mtu_reduced / tcp_v4_mtu_reduced with tcp_simple_retransmit).

The message is believed only when it quotes a sequence number this connection has in
flight (RFC 5927 §4.1): anyone can send an ICMP error, few can guess SND.UNA..SND.NXT.
The retransmission is no congestion signal (the router said why it dropped): the
window keeps its count of segments (`congestion.resize`) and is not cut.
"""

from ustack.stats import DropReason
from ustack.tcp import congestion, output, seq
from ustack.tcp.flight import END, SACKED, START
from ustack.tcp.handshake import MIN_SND_MSS
from ustack.tcp.options import TIMESTAMP_SPACE
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb


def too_big(tcb: Tcb, seq_no: int, mss: int) -> DropReason | None:
    """The path towards this connection's peer takes segments of at most `mss` (the
    path MTU less the fixed IP and TCP headers), says an error quoting `seq_no`. Returns
    why it was ignored, or None once the connection has taken it (the host then polls
    it: what must go again is marked lost)."""
    if tcb.state is State.CLOSED or tcb.state is State.TIME_WAIT:
        return DropReason.ICMP_NO_CONNECTION
    # RFC 5927 §4.1: SND.UNA <= SEG.SEQ < SND.NXT (Linux tcp_v6_err's OutOfWindowIcmps).
    if not (seq.le(tcb.snd_una, seq_no) and seq.lt(seq_no, tcb.snd_nxt)):
        return DropReason.ICMP_OUT_OF_WINDOW
    tcb.path_mss = min(tcb.path_mss, mss)
    mss = max(MIN_SND_MSS, mss)
    if mss >= tcb.snd_mss:
        return None  # our segments fit already (an old message, or one for the SYN)
    tcb.snd_mss = mss
    congestion.resize(tcb.cc, mss - (TIMESTAMP_SPACE if tcb.ts_ok else 0))
    # A window kept to be put back (a spurious timeout's or recovery's undo) holds the
    # old segment size: it may not come back (Linux tcp_simple_retransmit zeroes
    # undo_marker).
    tcb._eifel = tcb._dsack_undo = None
    # tcp_simple_retransmit: whatever went out in segments larger than the new size was
    # dropped on the way (a TSO super-segment too: the device cut it at the old size).
    limit = output.mss_payload(tcb)
    for entry in tcb._flight:
        if not entry[SACKED] and seq.sub(entry[END], entry[START]) > limit:
            tcb._flight.lose(entry)
    return None
