"""Named links: a few paths people test clients against, each written as the numbers of
the fault injector (`ustack.link.faults`) and the shaper (`ustack.link.shaper`) that
make it. They are round figures for a typical path of the kind, not measurements of any
one; a test that needs other numbers sets them itself.

    wifi       a lossy Wi-Fi: 20 mbit, a 3 ms hop with 2 ms of correlated jitter, 1 % of
               packets lost in short bursts (Gilbert-Elliott, 2 on average)
    3g         a 3G link (a browser's "good 3G" throttle): 1.5 mbit, 50 ms each way with
               10 ms of jitter, a 0.5 % random loss
    satellite  a geostationary hop: 10 mbit, 300 ms each way (600 ms round trips), a
               deep queue, 0.1 % loss
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The `Stack.faults` and `Stack.shape` keywords a preset sets (all of them: it replaces
# both), which may not be given beside it (the marker's check; the CLI's names its flags).
SETS = ("loss", "dup", "reorder", "corrupt", "delay_ms", "jitter_ms", "distribution",
        "correlation", "reorder_gap", "rate_bps", "queue", "gemodel")


@dataclass(frozen=True)
class Preset:
    """A named link: `faults` are `Stack.faults`'s keywords, `shape` `Stack.shape`'s."""

    name: str
    about: str
    faults: dict[str, Any] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("wifi", "a lossy Wi-Fi",
           faults={"delay_ms": 3.0, "jitter_ms": 2.0, "distribution": "normal",
                   "correlation": 0.5},
           # loss = p / (p + r) = 0.005 / 0.505 ~ 1 %; bursts of 1 / r = 2 packets
           shape={"rate_bps": 20e6, "queue": 100, "gemodel": (0.005, 0.5, 1.0, 0.0)}),
    Preset("3g", "a 3G link",
           faults={"loss": 0.005, "delay_ms": 50.0, "jitter_ms": 10.0,
                   "distribution": "normal", "correlation": 0.25},
           shape={"rate_bps": 1.5e6, "queue": 50}),
    Preset("satellite", "a geostationary satellite hop",
           faults={"loss": 0.001, "delay_ms": 300.0, "jitter_ms": 5.0,
                   "distribution": "normal"},
           shape={"rate_bps": 10e6, "queue": 1000}),
)}


def preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the ones there are."""
    found = PRESETS.get(name)
    if found is None:
        raise ValueError(f"no link preset {name!r}: one of {', '.join(PRESETS)}")
    return found
