"""The sender's SACK scoreboard (RFC 6675 §3, §4): what the peer says it holds.

Ranges of sequence space above SND.UNA that SACK blocks reported, merged and
sorted. Blocks below SND.UNA (D-SACK, RFC 2883) or beyond SND.NXT are ignored, so
duplicates never look like new information. The ranges outlive a retransmission
timeout, as in Linux (RFC 6675 §5.1 and RFC 2018's erratum 1610 allow it where reneging
is detected): they are forgotten only when an ACK shows the peer dropped them.
"""

from ustack.tcp import seq

DUP_THRESH = 3  # RFC 6675 §2 DupThresh


def is_dsack(blocks: tuple[tuple[int, int], ...], ack: int) -> bool:
    """RFC 2883 §4 (and Linux tcp_check_dsack): the first block reports a duplicate when
    it lies at or below the cumulative ACK, or inside the second block."""
    if not blocks:
        return False
    left, right = blocks[0]
    if seq.le(right, ack):
        return True
    if len(blocks) > 1:
        left2, right2 = blocks[1]
        return seq.le(left2, left) and seq.le(right, right2)
    return False


class Scoreboard:
    __slots__ = ("ranges", "sacked")

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []  # (left, right), sorted, disjoint
        self.sacked = 0  # bytes covered

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def update(self, blocks: tuple[tuple[int, int], ...], snd_una: int,
               snd_nxt: int) -> list[tuple[int, int]]:
        """Merge SACK blocks in; the blocks (clipped to SND.UNA) that told us something
        new, for the flight to mark (empty: nothing new)."""
        new = []
        for left, right in blocks:
            if not seq.lt(left, right) or seq.gt(right, snd_nxt) or seq.le(right, snd_una):
                continue  # malformed, beyond what we sent, or a D-SACK of old data
            if seq.lt(left, snd_una):
                left = snd_una
            if self._add(left, right):
                new.append((left, right))
        return new

    def _add(self, left: int, right: int) -> bool:
        ranges = self.ranges
        i = 0
        while i < len(ranges) and seq.lt(ranges[i][1], left):
            i += 1
        j = i
        while j < len(ranges) and seq.le(ranges[j][0], right):
            j += 1
        if i < j:
            lo, hi = ranges[i], ranges[j - 1]
            if seq.le(lo[0], left) and seq.ge(hi[1], right) and j - i == 1:
                return False  # already known
            left = lo[0] if seq.lt(lo[0], left) else left
            right = hi[1] if seq.gt(hi[1], right) else right
            self.sacked -= sum(seq.sub(r, s) for s, r in ranges[i:j])
        ranges[i:j] = [(left, right)]
        self.sacked += seq.sub(right, left)
        return True

    def advance(self, snd_una: int) -> None:
        """SND.UNA moved: forget what is now cumulatively acknowledged."""
        ranges = self.ranges
        while ranges and seq.le(ranges[0][1], snd_una):
            left, right = ranges.pop(0)
            self.sacked -= seq.sub(right, left)
        if ranges and seq.lt(ranges[0][0], snd_una):
            left, right = ranges[0]
            self.sacked -= seq.sub(snd_una, left)
            ranges[0] = (snd_una, right)

    def lost_edge(self, mss: int) -> int | None:
        """Unsacked data below this edge is lost (RFC 6675 §4, IsLost): DupThresh SACKed
        ranges, or more than (DupThresh - 1) * MSS SACKed bytes, lie above it."""
        total = 0
        for count, (left, right) in enumerate(reversed(self.ranges), 1):
            total += seq.sub(right, left)
            if count >= DUP_THRESH or total > (DUP_THRESH - 1) * mss:
                return left
        return None

    def reneged(self, ack: int) -> bool:
        """The cumulative ACK stops at or inside a range the peer SACKed: it dropped what
        it had reported (RFC 2018 §8; Linux tcp_check_sack_reneging)."""
        ranges = self.ranges
        return bool(ranges) and seq.le(ranges[0][0], ack) and seq.lt(ack, ranges[0][1])

    def clear(self) -> None:
        """Forget every SACKed range (the peer reneged)."""
        self.ranges.clear()
        self.sacked = 0
