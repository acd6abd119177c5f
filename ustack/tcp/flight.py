"""The segments in flight: for each one sent and not yet acknowledged, its sequence range,
when it was last sent and whether it was sent more than once (Linux's retransmission
queue, without the data: the send buffer holds that).

It gives every ACK an RTT sample from the microsecond send time of the newest segment the
ACK covers, unless any of the covered segments was retransmitted (Karn, MUST-18: the ACK
may then be for either copy); Linux takes its congestion-control RTT the same way
(tcp_clean_rtx_queue's `last_ackt`).

A TSO super-segment is one entry. Entries are kept in sequence order: new data is always
appended at SND.NXT, and a retransmission only marks the entries it overlaps.
"""

from ustack.tcp import seq

_HALF = 0x8000_0000


class Flight:
    __slots__ = ("_entries", "_head")

    def __init__(self) -> None:
        # [start, end, sent at, retransmitted]; entries before _head are acknowledged.
        self._entries: list[list] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def sent(self, start: int, end: int, now: float) -> None:
        """New data (or the SYN, or the FIN) [start, end) went out for the first time."""
        self._entries.append([start, end, now, False])

    def resent(self, start: int, end: int, now: float) -> None:
        """[start, end) went out again: every entry it overlaps is retransmitted now."""
        entries = self._entries
        for i in range(self._head, len(entries)):
            entry = entries[i]
            if (start - entry[1]) & seq.MASK < _HALF:
                continue  # entirely before the retransmission
            if (entry[0] - end) & seq.MASK < _HALF:
                break  # entirely after it (and so is every later one)
            entry[2] = now
            entry[3] = True

    def acked(self, ack: int) -> tuple[float | None, bool]:
        """SND.UNA moved to `ack`: forget what it covers. Returns the send time of the
        newest segment it covers (in part or whole) and whether any of them was sent
        more than once."""
        entries = self._entries
        head = self._head
        newest: float | None = None
        retransmitted = False
        n = len(entries)
        while head < n:
            entry = entries[head]
            if (entry[0] - ack) & seq.MASK < _HALF:
                break  # starts at or after the ACK: not covered
            newest = entry[2]
            retransmitted = retransmitted or entry[3]
            if (ack - entry[1]) & seq.MASK >= _HALF:
                entry[0] = ack  # acknowledged in part (a TSO super-segment): trim
                break
            head += 1
        if head == n:
            entries.clear()
            head = 0
        elif head > 64 and head * 2 > n:
            del entries[:head]  # compact now and then: popping from the front is O(n)
            head = 0
        self._head = head
        return newest, retransmitted

    def clear(self) -> None:
        self._entries.clear()
        self._head = 0
