"""The text ladder (`--trace`): one row per event, the peer on the left, ustack on the
right, arrows between them."""

from typing import TextIO

from ustack.ladder.track import Row, Tracker, event_label, flag_names
from ustack.probe import (
    Event,
    FaultEvent,
    SegmentEvent,
    StateEvent,
)
from ustack.tcp.segment import RST

# ------------------------------------------------------------------------------ text

_ARROW = 18  # columns of the arrow between "peer" and "ustack"
_RESET = "\x1b[0m"
_COLORS = {"in": "\x1b[36m", "out": "\x1b[32m", "rst": "\x1b[1;31m", "state": "\x1b[1;33m",
           "timer": "\x1b[35m", "head": "\x1b[1m", "dim": "\x1b[2m"}


def arrow(flags: str, outbound: bool, width: int = _ARROW) -> str:
    """`──SYN────────────▶` (peer to ustack) or `◀──SYN,ACK──────` (ustack to peer)."""
    body = "──" + flags
    body += "─" * max(2, width - 1 - len(body))
    return "◀" + body if outbound else body + "▶"


class Ladder:
    """Renders events as text ladders, one per connection, as they come.

    Every line starts with the connection's tag (`#1`) and the seconds since that
    connection's first event; peer on the left, ustack on the right.
    """

    def __init__(self, out: TextIO, *, color: bool = False, width: int = 80) -> None:
        self.out = out
        self.color = color
        self.width = width
        self.tracker = Tracker()

    def _paint(self, text: str, kind: str) -> str:
        return f"{_COLORS[kind]}{text}{_RESET}" if self.color else text

    def feed(self, event: Event) -> None:
        row, new = self.tracker.feed(event)
        for line in self.lines(row, new):
            self.out.write(line + "\n")

    def close(self) -> None:
        self.out.flush()

    def lines(self, row: Row, new: bool) -> list[str]:
        conn, ev = row.conn, row.event
        tag = f"#{conn.number}"
        out = []
        if new:
            head = f"{tag} ── peer {conn.peer} ⇄ ustack {conn.us} ──"
            out.append(self._paint(head, "head"))
        lead = f"{tag} {row.dt:9.6f}  "
        if isinstance(ev, SegmentEvent):
            mid = f"peer {arrow(flag_names(ev.flags), ev.outbound)} ustack  "
            kind = "rst" if ev.flags & RST else "out" if ev.outbound else "in"
            indent = " " * (len(lead) + len(mid))
            if len(indent) > self.width // 2:
                indent = " " * (len(lead) + 5)
            first, rest = self._wrap(row.details, self.width - len(lead) - len(mid),
                                     self.width - len(indent))
            out.append(lead + self._paint(mid.rstrip(), kind) + "  " + first)
            out += [indent + line for line in rest]
        elif isinstance(ev, FaultEvent):
            # The arrow stops short: the packet never reached the other side as sent.
            flags = flag_names(ev.flags)
            mid = (f"peer {arrow(flags, True)[:-4]}✕    ustack" if ev.outbound
                   else f"peer ──{flags}{'─' * max(2, _ARROW - 5 - len(flags))}✕    ustack")
            if ev.kind != "dropped":
                mid = f"peer {arrow(flags, ev.outbound)} ustack"
            out.append(lead + self._paint(f"{mid}  fault: {ev.kind}", "rst") + "  "
                       + " ".join(row.details))
        else:
            if isinstance(ev, StateEvent):
                text, kind = f"{ev.old} → {ev.new} ▶ ustack", "state"
            else:
                text, kind = "{}: {} ▶ ustack".format(*event_label(ev)), "timer"
            pad = len("peer ") + _ARROW + len(" ustack") - len(text)
            out.append(lead + " " * max(0, pad) + self._paint(text, kind))
        return out

    @staticmethod
    def _wrap(items: tuple[str, ...], first: int, later: int) -> tuple[str, list[str]]:
        lines: list[str] = []
        cur = ""
        room = first
        for item in items:
            cand = f"{cur} {item}" if cur else item
            if cur and len(cand) > room:
                lines.append(cur)
                cur, room = item, later
            else:
                cur = cand
        lines.append(cur)
        return lines[0], lines[1:]


