"""Receive coalescing (software GRO): one connection's consecutive data segments that
arrive in one batch reach its TCB as one segment.

Linux merges them below IP (dev_gro_receive, tcp_gro_receive) before TCP sees them,
so its receiver runs acceptance and reassembly once per run rather than once per wire
segment. ustack reads the TUN in batches (`Host.receive_batch`): a receiver that falls
behind gets large batches, and coalescing makes each of them cheaper: the load that
makes them large is what it relieves (as NAPI with GRO). Unlike Linux's GRO packet, a
run still draws the ACKs its segments would have drawn one by one (`Segment.gso` says
their size; `ustack.tcp.delivery`): the batch is an artefact of ustack's speed, not of
the wire, and a sender's clock is its ACKs.

The rules are tcp_gro_receive's:
- a run starts with a segment that carries text and has only ACK set, and no SACK
  blocks (a PSH, FIN, SYN, RST or URG segment is delivered on its own, or ends a run);
- the next segment joins when it starts where the run ends, carries text, has the same
  ACK, window and timestamps (Linux compares every option byte), is no longer than the
  run's first segment (a shorter one joins as the last), and the run stays within one
  IPv4 datagram's 64 KB; a PSH joins as the last one too.

One deviation, for senders without SACK: `Host` starts a run only for a connection that
negotiated SACK, or at RCV.NXT. Such a sender counts duplicate ACKs, one per segment
that arrives out of order (RFC 5681 §4.2), and a run would leave it short of its three.
"""

from ustack.tcp import seq
from ustack.tcp.segment import ACK, PSH, SUPER_PAYLOAD_MAX, Segment

MAX_RUN = SUPER_PAYLOAD_MAX  # a run stays one IPv4 datagram, as a TSO super-segment


def starts_run(seg: Segment) -> bool:
    """May `seg` begin a run (only ACK set, text, no SACK blocks)?"""
    return seg.flags == ACK and bool(seg.payload) and not seg.opts.sack


class Run:
    """Consecutive segments of one connection, to be delivered as one."""

    __slots__ = ("closed", "end", "first", "flags", "parts", "size")

    def __init__(self, first: Segment) -> None:
        self.first = first
        self.parts: list[bytes | memoryview] = [first.payload]
        self.size = len(first.payload)
        self.end = seq.add(first.seq, self.size)
        self.closed = False  # a short or PSH segment joined: nothing more may
        self.flags = ACK

    def extend(self, seg: Segment) -> bool:
        """Join `seg` to the run if the rules allow; False leaves the run as it was."""
        first = self.first
        size = len(seg.payload)
        if (self.closed or seg.seq != self.end or (seg.flags | PSH) != ACK | PSH or not size
                or size > len(first.payload) or self.size + size > MAX_RUN
                or seg.ack != first.ack or seg.wnd != first.wnd):
            return False
        opts, first_opts = seg.opts, first.opts
        if opts is not first_opts and (opts.ts_val != first_opts.ts_val
                                       or opts.ts_ecr != first_opts.ts_ecr or opts.sack):
            return False
        self.parts.append(seg.payload)
        self.size += size
        self.end = seq.add(self.end, size)
        if seg.flags & PSH or size < len(first.payload):
            self.closed = True
            self.flags = seg.flags
        return True

    def segment(self) -> Segment:
        """The run as one segment (the first one itself when nothing joined it)."""
        first = self.first
        if len(self.parts) == 1:
            return first
        # gso: the size of the segments it was made of (Linux's gso_size of a GRO packet),
        # so that the TCB can count them.
        return Segment(first.src_port, first.dst_port, first.seq, first.ack, self.flags,
                       first.wnd, b"".join(self.parts), first.opts, gso=len(first.payload))
