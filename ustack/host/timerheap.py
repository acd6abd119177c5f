"""The host's timers: one heap of connections by their earliest deadline, not a timer
per connection or per deadline. A connection is filed at most once per earlier
deadline; an entry that comes up for a deadline that has moved later (every ACK
restarts the retransmission timer) is filed again then, rather than on every change
(Linux's timer wheel and gVisor's timers do the same: most timers never fire)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class _Deadlines(Protocol):
    @property
    def next_deadline(self) -> float | None: ...


class _HasTimers(Protocol):
    @property
    def timers(self) -> _Deadlines: ...


T = TypeVar("T", bound=_HasTimers)


class TimerHeap(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._tiebreak = itertools.count()
        self._filed: dict[T, float] = {}  # the deadline each connection's entry is for

    def file(self, conn: T) -> None:
        """After an event: an entry for the connection's earliest deadline, if that is
        earlier than the one it is filed for (a later one is refiled when it comes up)."""
        deadline = conn.timers.next_deadline
        filed = self._filed.get(conn)
        if deadline is not None and (filed is None or deadline < filed):
            self._filed[conn] = deadline
            heapq.heappush(self._heap, (deadline, next(self._tiebreak), conn))

    def forget(self, conn: T) -> None:
        """The connection is gone: its entries are stale from now on."""
        self._filed.pop(conn, None)

    def next_deadline(self) -> float | None:
        heap, filed_for = self._heap, self._filed
        while heap:
            filed, _, conn = heap[0]
            if filed_for.get(conn) == filed:
                actual = conn.timers.next_deadline
                if actual == filed:
                    return filed
                # Its timer moved later since it was filed: refile it where it is now.
                heapq.heappop(heap)
                self._refile(conn, actual)
            else:
                heapq.heappop(heap)  # stale: refiled or forgotten since
        return None

    def due(self, now: float) -> Iterator[T]:
        """The connections with a deadline at or before `now` (each once)."""
        heap, filed_for = self._heap, self._filed
        while heap and heap[0][0] <= now:
            deadline, _, conn = heapq.heappop(heap)
            if filed_for.get(conn) != deadline:
                continue
            del filed_for[conn]
            actual = conn.timers.next_deadline
            if actual is None:
                continue
            if actual > now:
                self._refile(conn, actual)
                continue
            yield conn

    def _refile(self, conn: T, deadline: float | None) -> None:
        if deadline is None:
            self._filed.pop(conn, None)
        else:
            self._filed[conn] = deadline
            heapq.heappush(self._heap, (deadline, next(self._tiebreak), conn))
