"""Toxics: what a proxy (`ustack.services.proxy`) does to the stream it forwards, as
toxiproxy names them, each on one direction ("downstream": server to client, the
default; "upstream": client to server), each drawn once per connection with probability
`toxicity`:

    latency latency=50 jitter=10        every chunk 50 ms (± 10) after it arrived
    bandwidth rate=1000                 at most 1000 KB/s
    slow_close delay=500                the end of the stream (FIN) 0.5 s late
    timeout timeout=0                   nothing more delivered (dropped, as toxiproxy
                                        does), the connection kept open, its end too
                                        (timeout=T: closed T ms after the toxic came)
    reset_peer timeout=200              both ends reset (RST) 200 ms after the
                                        connection opened (or the toxic came)
    slicer average_size=64 size_variation=32 delay=100
                                        chunks cut into 64 ± 32-byte writes, 100 µs apart
    limit_data bytes=100000             closed once 100,000 bytes went through

One line each, as the command line takes it (`--toxic`), with `stream=` and
`toxicity=` where wanted: `latency latency=50 stream=upstream toxicity=0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

STREAMS = ("downstream", "upstream")
# Each kind's attributes and their defaults (toxiproxy's).
KINDS: dict[str, dict[str, float]] = {
    "latency": {"latency": 0.0, "jitter": 0.0},
    "bandwidth": {"rate": 0.0},
    "slow_close": {"delay": 0.0},
    "timeout": {"timeout": 0.0},
    "reset_peer": {"timeout": 0.0},
    "slicer": {"average_size": 0.0, "size_variation": 0.0, "delay": 0.0},
    "limit_data": {"bytes": 0.0},
}


@dataclass(eq=False)
class Toxic:
    """One toxic (see the module's docstring); `applied` counts the connections it was
    drawn for."""

    kind: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attrs: dict[str, float] = field(default_factory=dict)
    applied: int = field(default=0, compare=False)
    _positive: ClassVar[dict[str, str]] = {"bandwidth": "rate", "slicer": "average_size"}

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"toxic {self.kind!r}: one of {', '.join(KINDS)}")
        if self.stream not in STREAMS:
            raise ValueError(f"toxic stream {self.stream!r}: downstream or upstream")
        if not 0.0 <= self.toxicity <= 1.0:
            raise ValueError(f"toxicity {self.toxicity!r}: a probability from 0 to 1")
        known = KINDS[self.kind]
        unknown = sorted(set(self.attrs) - set(known))
        if unknown:
            raise ValueError(f"toxic {self.kind}: {', '.join(unknown)} is not one of "
                             f"{', '.join(known) or 'no attributes'}")
        self.attrs = {**known, **{k: float(v) for k, v in self.attrs.items()}}
        if any(v < 0 for v in self.attrs.values()):
            raise ValueError(f"toxic {self.kind}: attributes are >= 0")
        must = self._positive.get(self.kind)
        if must is not None and self.attrs[must] <= 0:
            raise ValueError(f"toxic {self.kind} needs {must}= above 0")

    def __getitem__(self, name: str) -> float:
        return self.attrs[name]

    def settings(self) -> list[str]:
        """`latency=50`, ...: the attributes that differ from the kind's defaults."""
        return [f"{k}={_number(v)}" for k, v in self.attrs.items()
                if v != KINDS[self.kind][k]]

    def describe(self) -> str:
        """The line that makes it again (`parse_toxic`)."""
        parts = [self.kind, *self.settings()]
        if self.stream != "downstream":
            parts.append(f"stream={self.stream}")
        if self.toxicity != 1.0:
            parts.append(f"toxicity={_number(self.toxicity)}")
        return " ".join(parts)


def _number(value: float) -> str:
    """`5`, `0.25`: a whole number without its point, any other as repr (exact)."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def parse_toxic(text: str) -> Toxic:
    """`latency latency=50 stream=upstream` as a Toxic; ValueError saying what is wrong."""
    words = text.split()
    if not words:
        raise ValueError("an empty toxic: give e.g. 'latency latency=50'")
    kind, attrs = words[0], {}
    stream, toxicity = "downstream", 1.0
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"toxic {text!r}: {word!r} is not NAME=VALUE")
        if name == "stream":
            stream = value
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"toxic {text!r}: {name}={value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"toxic {text!r}: {name}={value!r} is not a finite number")
        if name == "toxicity":
            toxicity = number
        else:
            attrs[name] = number
    return Toxic(kind, stream, toxicity, attrs)
