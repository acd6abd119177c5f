#!/usr/bin/env python3
"""The ladder of every TCP connection in a capture (pcap or pcapng; raw IP, Ethernet,
Linux cooked): the same renderer as `ustack serve --trace`, so ustack's own `--pcap` and a
tcpdump of the kernel talking to anything compare side by side.

    python tools/ladder.py FILE [--us ADDR] [--conn N] [--svg OUT.svg] [--width 80]

The same as `ustack ladder FILE ...` (what an installed package offers), from a checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ustack.cli import main

if __name__ == "__main__":
    sys.exit(main(["ladder", *sys.argv[1:]]))
