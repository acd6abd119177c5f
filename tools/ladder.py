#!/usr/bin/env python3
"""The ladder of every TCP connection in a capture (pcap or pcapng; raw IP, Ethernet,
Linux cooked): the same renderer as `ustack serve --trace`, so ustack's own `--pcap` and a
tcpdump of the kernel talking to anything compare side by side.

    python tools/ladder.py FILE [--us ADDR] [--svg OUT.svg [--conn N]] [--width 80]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.ladder import CaptureError, Ladder, capture_events, svg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="pcap or pcapng capture")
    ap.add_argument("--us", metavar="ADDR",
                    help="ustack's address (default 10.77.0.2 if present, else the side "
                         "that answered the first SYN)")
    ap.add_argument("--svg", metavar="OUT", help="also draw the sequence diagram as SVG")
    ap.add_argument("--conn", type=int, metavar="N", help="SVG of the N-th connection only")
    ap.add_argument("--width", type=int, default=80, help="terminal columns (default 80)")
    ap.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    args = ap.parse_args(argv)
    try:
        with open(args.file, "rb") as f:
            events, skipped = capture_events(f, args.us)
    except (OSError, CaptureError) as e:
        print(f"ladder: {e}", file=sys.stderr)
        return 1
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    ladder = Ladder(sys.stdout, color=color, width=args.width)
    for ev in events:
        ladder.feed(ev)
    ladder.close()
    conns = len(ladder.tracker.conns)
    if args.svg:
        if args.conn is not None and not 1 <= args.conn <= conns:
            print(f"ladder: no connection #{args.conn} (there are {conns})", file=sys.stderr)
            return 1
        Path(args.svg).write_text(svg(events, args.conn), encoding="utf-8")
    if skipped:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        print(f"ladder: skipped {sum(skipped.values())} packets ({why})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
