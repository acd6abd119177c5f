"""A connection's state as its segments on the wire show it, for the TCP-aware rules
(`ustack.link.rules`): each side's ISN and FIN, whether each was acknowledged, and from
those the state of ustack's side by RFC 9293's names (§3.3.2). Linux's connection
tracker (nf_conntrack_proto_tcp) follows connections from a middlebox the same way; this
one is smaller: it trusts the segments (the rules act on ustack's own link, not on an
adversary's) and keeps what picking a segment needs.

A state is the one ustack's side is in once the segment seen has arrived where it goes:
an inbound SYN leaves it SYN-RECEIVED (a listener's TCB), an inbound SYN-ACK ESTABLISHED,
its own FIN FIN-WAIT-1 (or LAST-ACK). A connection first seen past its handshake (rules
added while it ran) counts as ESTABLISHED until its FINs say more. Not followed: a
simultaneous open (it stays SYN-SENT).
"""

from __future__ import annotations

from ustack.link.stage import TX
from ustack.tcp import seq as sq
from ustack.tcp.segment import ACK, FIN, RST, SYN

STATES = ("SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2",
          "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT", "CLOSED")
FINAL_ACKS = ("handshake", "close")  # what `Conn.see` calls a final ACK


class Side:
    """What one side sent: its ISN, where its FIN sits, whether the other acknowledged
    its SYN and its FIN."""

    __slots__ = ("fin", "fin_acked", "isn", "syn_acked")

    def __init__(self) -> None:
        self.isn: int | None = None
        self.syn_acked = False
        self.fin: int | None = None  # the FIN's sequence number
        self.fin_acked = False

    def copy(self) -> Side:
        twin = Side()
        twin.isn, twin.syn_acked, twin.fin, twin.fin_acked = (
            self.isn, self.syn_acked, self.fin, self.fin_acked)
        return twin


class Conn:
    """One connection, both directions; `local` is ustack's side (its segments are TX)."""

    __slots__ = ("bytes", "joined", "local", "local_first_fin", "opener_local", "peer",
                 "reset")

    def __init__(self) -> None:
        self.local = Side()
        self.peer = Side()
        self.opener_local: bool | None = None  # who sent the first SYN
        self.local_first_fin = False  # ustack's FIN went first (it closed first, or both)
        self.reset = False
        self.joined = False  # first seen past its handshake
        self.bytes = 0  # payload bytes seen, both directions

    def copy(self) -> Conn:
        """A copy to go back to (`TcpRules`: a segment a rule drops changes nothing)."""
        twin = Conn()
        twin.local, twin.peer = self.local.copy(), self.peer.copy()
        twin.opener_local, twin.local_first_fin = self.opener_local, self.local_first_fin
        twin.reset, twin.joined, twin.bytes = self.reset, self.joined, self.bytes
        return twin

    def new_incarnation(self, d: int, seq: int, flags: int) -> bool:
        """Whether a SYN (`flags`) opens a new connection on this 4-tuple: this one was
        reset or closed, or its opener's SYN now has another ISN (not a retransmission)."""
        if flags & (SYN | ACK) != SYN or not (self.local.isn is not None
                                                 or self.peer.isn is not None
                                                 or self.joined or self.reset):
            return False  # not a SYN, or nothing seen yet
        isn = (self.local if d == TX else self.peer).isn
        return (self.reset or self.joined or (isn is not None and isn != seq)
                or self.state() in ("TIME-WAIT", "CLOSED"))

    def see(self, d: int, seq: int, ack: int, flags: int, payload: int) -> str | None:
        """Take one segment (direction `d`); returns "handshake" when it is the ACK that
        completes the three-way handshake (the first to acknowledge the SYN of the side
        that did not open), "close" when it is the last segment of a close (the first
        ACK, without a FIN, of a FIN by a side that sent its own FIN before: in a
        simultaneous close each side's), else None."""
        me, other = (self.local, self.peer) if d == TX else (self.peer, self.local)
        if not self.bytes and me.isn is None and other.isn is None and not flags & SYN:
            self.joined = True
        self.bytes += payload
        if flags & RST:
            self.reset = True
            return None
        final = None
        if flags & SYN:
            me.isn = seq
            if self.opener_local is None and not flags & ACK:
                self.opener_local = d == TX
        if flags & ACK:
            if (other.isn is not None and not other.syn_acked
                    and ack == sq.add(other.isn, 1)):
                other.syn_acked = True
                if not flags & SYN:
                    final = "handshake"
            if (other.fin is not None and not other.fin_acked
                    and ack == sq.add(other.fin, 1)):
                other.fin_acked = True
                if me.fin is not None and not flags & FIN:
                    final = "close"
        if flags & FIN and me.fin is None:
            me.fin = sq.add(seq, payload + (1 if flags & SYN else 0))
            # Ours first, or crossing the peer's (a FIN that does not acknowledge the
            # peer's was sent before it arrived): a simultaneous close, CLOSING.
            if me is self.local and (self.peer.fin is None or not self.peer.fin_acked):
                self.local_first_fin = True
        return final

    def state(self) -> str:
        """ustack's side's state (RFC 9293 §3.3.2), as the wire has shown it."""
        local, peer = self.local, self.peer
        if self.reset:
            return "CLOSED"
        if not self.joined:
            if local.isn is None:
                return "SYN-RECEIVED" if peer.isn is not None else "CLOSED"
            if not local.syn_acked or peer.isn is None:
                return "SYN-SENT" if self.opener_local else "SYN-RECEIVED"
        if local.fin is None:
            return "CLOSE-WAIT" if peer.fin is not None else "ESTABLISHED"
        if peer.fin is None:
            return "FIN-WAIT-2" if local.fin_acked else "FIN-WAIT-1"
        if self.local_first_fin:  # the active close (or a simultaneous one)
            return "TIME-WAIT" if local.fin_acked else "CLOSING"
        return "CLOSED" if local.fin_acked else "LAST-ACK"

    def offset(self, d: int, seq: int) -> int | None:
        """Where `seq` of direction `d` lies in that direction's stream (0: the first byte
        after its SYN), or None before its SYN was seen."""
        isn = (self.local if d == TX else self.peer).isn
        return None if isn is None else sq.sub(seq, sq.add(isn, 1))
