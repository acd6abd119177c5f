"""The segments in flight: for each one sent and not yet acknowledged, its sequence range,
when it was last sent, whether it was sent more than once, whether the peer SACKed it and
whether it is presumed lost and waits to be sent again (Linux's retransmission queue with
its TCPCB_SACKED_ACKED, TCPCB_LOST and TCPCB_SACKED_RETRANS marks, without the data: the
send buffer holds that).

It gives every ACK an RTT sample from the microsecond send time of the newest segment the
ACK covers, unless any of the covered segments was retransmitted (Karn, MUST-18: the ACK
may then be for either copy); Linux takes its congestion-control RTT the same way
(tcp_clean_rtx_queue's `last_ackt`). The send times also drive RACK (`ustack.tcp.rack`).

A TSO super-segment is one entry until a SACK edge, a retransmission or a loss mark falls
inside it: the entry is then cut there (Linux tcp_fragment), so that each mark covers whole
entries. Entries are kept in sequence order: new data is always appended at SND.NXT.
"""

from bisect import bisect_right
from collections.abc import Iterator

from ustack.tcp import seq

# An entry: [start, end, sent at, retransmitted, SACKed, lost].
START, END, SENT_AT, RETRANS, SACKED, LOST = range(6)
Entry = list


class Flight:
    __slots__ = ("_entries", "_head", "_lost_hint", "lost_bytes")

    def __init__(self) -> None:
        self._entries: list[Entry] = []  # entries before _head are acknowledged
        self._head = 0
        self.lost_bytes = 0  # in entries marked lost and not sent again since
        self._lost_hint = 0  # no lost entry starts before this sequence number

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def __iter__(self) -> Iterator[Entry]:
        entries = self._entries
        for i in range(self._head, len(entries)):
            yield entries[i]

    def sent(self, start: int, end: int, now: float) -> None:
        """New data (or the SYN, or the FIN) [start, end) went out for the first time."""
        self._entries.append([start, end, now, False, False, False])

    def resent(self, start: int, end: int, now: float) -> None:
        """[start, end) went out again: it is retransmitted now, and no longer lost."""
        i, j = self._cut(start), self._cut(end)
        entries = self._entries
        for k in range(i, j):
            entry = entries[k]
            entry[SENT_AT] = now
            entry[RETRANS] = True
            if entry[LOST]:
                entry[LOST] = False
                self.lost_bytes -= seq.sub(entry[END], entry[START])

    def sack(self, left: int, right: int) -> list[Entry]:
        """The peer holds [left, right): mark it; returns the entries newly SACKed."""
        i, j = self._cut(left), self._cut(right)
        entries = self._entries
        newly = []
        for k in range(i, j):
            entry = entries[k]
            if not entry[SACKED]:
                entry[SACKED] = True
                if entry[LOST]:
                    entry[LOST] = False
                    self.lost_bytes -= seq.sub(entry[END], entry[START])
                newly.append(entry)
        return newly

    def unsack_all(self) -> None:
        """The peer reneged on what it SACKed (RFC 2018 §8): nothing is held any more."""
        for entry in self:
            entry[SACKED] = False

    def lose(self, entry: Entry) -> bool:
        """Presume `entry` lost (unless SACKed or already marked): it is sent again before
        any new data. True if it was newly marked."""
        if entry[LOST] or entry[SACKED]:
            return False
        entry[LOST] = True
        self.lost_bytes += seq.sub(entry[END], entry[START])
        if self.lost_bytes == seq.sub(entry[END], entry[START]) or seq.lt(
                entry[START], self._lost_hint):
            self._lost_hint = entry[START]
        return True

    def lose_range(self, start: int, end: int) -> int:
        """Presume every entry in [start, end) that the peer has not SACKed lost (a
        timeout, RFC 6675's IsLost, NewReno's partial ACK); the entries newly marked."""
        i, j = self._cut(start), self._cut(end)
        entries = self._entries
        return sum(self.lose(entries[k]) for k in range(i, j))

    def clear_lost(self) -> None:
        """Nothing is presumed lost any more (a spurious retransmission was undone)."""
        if self.lost_bytes:
            for entry in self:
                entry[LOST] = False
            self.lost_bytes = 0

    def next_lost(self, limit: int) -> tuple[int, int]:
        """The lowest range to send again: the first entry marked lost and those marked
        lost right after it, up to `limit` bytes (Linux tcp_retrans_try_collapse). Only
        while `lost_bytes`."""
        entries = self._entries
        i = self._index(self._lost_hint)
        n = len(entries)
        while not entries[i][LOST]:
            i += 1  # lost_bytes says one is marked: an IndexError here is a bug
        start = entries[i][START]
        self._lost_hint = start
        end = entries[i][END]
        i += 1
        while (i < n and entries[i][LOST] and entries[i][START] == end
               and seq.sub(end, start) < limit):
            end = entries[i][END]
            i += 1
        if seq.sub(end, start) > limit:
            end = seq.add(start, limit)
        return start, end

    def acked(self, ack: int) -> tuple[float | None, bool, int | None]:
        """SND.UNA moved to `ack`: forget what it covers. Returns the send time of the
        newest segment it covers (in part or whole), whether any of them was sent more
        than once, and the end of the first that was neither SACKed nor ever resent (a
        hole this ACK filled with an original transmission: reordering, for RACK)."""
        entries = self._entries
        head = self._head
        newest: float | None = None
        retransmitted = False
        hole_end: int | None = None
        n = len(entries)
        while head < n:
            entry = entries[head]
            if seq.ge(entry[START], ack):
                break  # starts at or after the ACK: not covered
            if newest is None or entry[SENT_AT] > newest:
                newest = entry[SENT_AT]
            if entry[RETRANS]:
                retransmitted = True
            elif hole_end is None and not entry[SACKED]:
                hole_end = entry[END]
            if seq.lt(ack, entry[END]):
                if entry[LOST]:
                    self.lost_bytes -= seq.sub(ack, entry[START])
                entry[START] = ack  # acknowledged in part (a TSO super-segment): trim
                break
            if entry[LOST]:
                self.lost_bytes -= seq.sub(entry[END], entry[START])
            head += 1
        if head == n:
            entries.clear()
            head = 0
        elif head > 64 and head * 2 > n:
            del entries[:head]  # compact now and then: popping from the front is O(n)
            head = 0
        self._head = head
        return newest, retransmitted, hole_end

    def clear(self) -> None:
        self._entries.clear()
        self._head = 0
        self.lost_bytes = 0

    def _index(self, s: int) -> int:
        """The index of the first entry that ends after `s`."""
        entries = self._entries
        head = self._head
        if head == len(entries):
            return head
        base = entries[head][START]
        r = seq.sub(s, base)
        if seq.lt(s, base):
            return head  # before everything in flight
        i = bisect_right(entries, r, head, len(entries),
                         key=lambda e: seq.sub(e[START], base))
        if i > head and seq.sub(entries[i - 1][END], base) > r:
            return i - 1
        return i

    def _cut(self, s: int) -> int:
        """Make `s` an entry boundary (cutting the entry that holds it in two, both halves
        keeping its marks); the index of the first entry at or after `s`."""
        i = self._index(s)
        entries = self._entries
        if i < len(entries):
            entry = entries[i]
            if seq.gt(s, entry[START]):
                tail = entry.copy()
                tail[START] = s
                entry[END] = s
                entries.insert(i + 1, tail)
                return i + 1
        return i
