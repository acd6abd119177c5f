"""The ladder as an SVG drawing (`ustack ladder --svg`)."""

from collections.abc import Sequence
from xml.sax.saxutils import escape

from ustack.ladder.track import Row, Tracker, event_label, flag_names
from ustack.probe import (
    Event,
    FaultEvent,
    SegmentEvent,
    StateEvent,
)
from ustack.tcp.segment import RST

# ------------------------------------------------------------------------------ SVG

_SVG_W, _PEER_X, _US_X, _STEP, _SLOPE = 760, 200, 520, 30, 22


def svg(events: Sequence[Event], conn: int | None = None) -> str:
    """A sequence diagram (plain SVG text): per connection, two lifelines (peer left,
    ustack right), a sloped arrow per segment labelled with flags, relative seq/ack,
    length, the (scaled) window, SACK blocks and a retransmission mark,
    state changes and timers beside ustack's lifeline. All connections stacked, or only
    the `conn`-th (1-based)."""
    tracker = Tracker()
    rows: dict[int, list[Row]] = {}
    for ev in events:
        row, _ = tracker.feed(ev)
        rows.setdefault(row.conn.number, []).append(row)
    numbers = [conn] if conn is not None else sorted(rows)
    body: list[str] = []
    y = 10
    for n in numbers:
        c = tracker.conns[n - 1]
        section = rows.get(n, [])
        top = y
        y += 20
        body.append(f'<text x="{_SVG_W // 2}" y="{y}" text-anchor="middle" '
                    f'font-weight="bold">#{n}</text>')
        y += 20
        for x, name in ((_PEER_X, f"peer {c.peer}"), (_US_X, f"ustack {c.us}")):
            body.append(f'<text x="{x}" y="{y}" text-anchor="middle">{escape(name)}</text>')
        y += 10
        life_top = y
        y += 20
        for row in section:
            ev = row.event
            body.append(f'<text x="10" y="{y + 4}" class="t">{row.dt:.6f}</text>')
            if isinstance(ev, SegmentEvent):
                x1, x2 = (_US_X, _PEER_X) if ev.outbound else (_PEER_X, _US_X)
                label = f"{flag_names(ev.flags)} seq={row.rseq}"
                if row.rack is not None:
                    label += f" ack={row.rack}"
                if ev.length:
                    label += f" len={ev.length}"
                # The window (scaled) and SACK blocks, as the text ladder has them.
                extra = [d for d in row.details
                         if d.startswith(("win ", "sack ", "dsack ", "retransmission"))]
                label += "".join(f" {d.split(' len ')[0]}" for d in extra)
                cls = "rst" if ev.flags & RST else "out" if ev.outbound else "in"
                body.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y + _SLOPE}" '
                            f'class="{cls}" marker-end="url(#head)"/>')
                tx = (_PEER_X + _US_X) // 2
                body.append(f'<text x="{tx}" y="{y + _SLOPE // 2 - 4}" text-anchor="middle" '
                            f'class="seg">{escape(label)}</text>')
                y += _STEP + _SLOPE // 2
            else:
                if isinstance(ev, StateEvent):
                    text, cls = f"{ev.old} → {ev.new}", "state"
                elif isinstance(ev, FaultEvent):
                    side = "ustack" if ev.outbound else "peer"
                    text = (f"fault: {ev.kind} {flag_names(ev.flags)} from {side} "
                            f"seq={row.rseq} len={ev.length}")
                    cls = "rst"
                else:
                    text, cls = event_label(ev)[1], "timer"
                body.append(f'<text x="{_US_X + 8}" y="{y + 4}" class="{cls}">'
                            f'{escape(text)}</text>')
                y += _STEP
        for x in (_PEER_X, _US_X):
            body.append(f'<line x1="{x}" y1="{life_top}" x2="{x}" y2="{y}" class="life"/>')
        y += 20
        body.append(f'<rect x="2" y="{top}" width="{_SVG_W - 4}" height="{y - top}" '
                    f'class="box"/>')
        y += 10
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_W}" height="{y}" '
        f'viewBox="0 0 {_SVG_W} {y}" font-family="monospace" font-size="12">\n'
        '<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
        'orient="auto"><path d="M0,0 L10,4 L0,8 z"/></marker></defs>\n'
        "<style>.life{stroke:#888;stroke-width:2}.in{stroke:#06c}.out{stroke:#080}"
        ".rst{stroke:#c00}.state{fill:#a60;font-weight:bold}.timer{fill:#808;"
        "font-style:italic}.t{fill:#666}.box{fill:none;stroke:#ddd}</style>\n"
        f'<rect width="{_SVG_W}" height="{y}" fill="white"/>\n'
    )
    return head + "\n".join(line for line in body if line) + "\n</svg>\n"
