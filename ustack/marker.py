"""The `@pytest.mark.ustack(...)` marker of the pytest plugin (`ustack.testing`): its
keywords, their defaults and the checks that turn a bad one into a usage error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

MARKER_DOC = (
    "ustack(services=['echo:7', 'http:80'], loss=0, dup=0, reorder=0, corrupt=0, "
    "delay_ms=0, jitter_ms=0, distribution='uniform', correlation=0, reorder_gap=0, "
    "seed=1, mtu=1500, trace=False, addr='10.77.0.2', kernel_addr='10.77.0.1/24', "
    "rate_bps=None, queue=1000, gemodel=None, preset=None, rules=()): configure the "
    "ustack_host fixture (every keyword optional; kernel_addr with or without a prefix, "
    "/24 by default; the faults as Stack.faults, rate_bps, queue and gemodel as "
    "Stack.shape, preset ('wifi', '3g', 'satellite') as Stack.preset and alone, rules as "
    "Stack.rule; proxies=['8080=10.77.0.1:8000'] and toxics=['latency latency=50'] as "
    "Stack.create_proxy)"
)



@dataclass(frozen=True)
class Options:
    services: tuple[str, ...] = ("echo:7", "http:80")
    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "uniform"
    correlation: float = 0.0
    reorder_gap: int = 0
    seed: int | None = 1
    mtu: int = 1500
    offload: bool = True  # checksum and TSO offloads, as `Stack(offload=...)`
    trace: bool = False
    rate_bps: float | None = None  # shaping, as `Stack.shape`
    queue: int = 1000
    gemodel: tuple[float, float, float, float] | None = None
    preset: str | None = None  # a named link, as `Stack.preset` (instead of the above)
    rules: tuple[str, ...] = ()  # faults that know TCP, as `Stack.rule`
    proxies: tuple[str, ...] = ()  # "PORT=ADDRESS:PORT", as `Stack.create_proxy`
    toxics: tuple[str, ...] = ()  # on every proxy's stream
    addr: str = "10.77.0.2"
    kernel_addr: str = "10.77.0.1/24"  # the kernel's side of the device, address/prefix

    def fault_kwargs(self) -> dict[str, Any]:
        return {"loss": self.loss, "dup": self.dup, "reorder": self.reorder,
                "corrupt": self.corrupt, "delay_ms": self.delay_ms,
                "jitter_ms": self.jitter_ms, "seed": self.seed,
                "distribution": self.distribution, "correlation": self.correlation,
                "reorder_gap": self.reorder_gap}


def options_of(marker: pytest.Mark | None) -> Options:
    if marker is None:
        return Options()
    if marker.args:
        raise pytest.UsageError("@pytest.mark.ustack takes keywords only, e.g. "
                                "@pytest.mark.ustack(loss=0.05)")
    known = set(Options.__dataclass_fields__)
    unknown = sorted(set(marker.kwargs) - known)
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.ustack: unknown keyword(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")
    kwargs = dict(marker.kwargs)
    for name in ("services", "rules", "proxies", "toxics"):
        if name in kwargs:
            value = kwargs[name]
            kwargs[name] = (value,) if isinstance(value, str) else tuple(value)
    if "kernel_addr" in kwargs:
        kwargs["kernel_addr"] = _interface(kwargs["kernel_addr"])
    if kwargs.get("preset") is not None:
        from ustack.link.presets import SETS

        beside = sorted(set(kwargs) & set(SETS))
        if beside:
            raise pytest.UsageError(f"@pytest.mark.ustack: preset={kwargs['preset']!r} sets "
                                    f"the link's faults and shaping; drop {', '.join(beside)}"
                                    " or the preset")
    opts = Options(**kwargs)
    from ustack.services.proxy import parse_proxy_spec
    from ustack.services.toxics import parse_toxic

    try:
        for spec in opts.proxies:
            parse_proxy_spec(f"proxy:{spec}")
        for toxic in opts.toxics:
            parse_toxic(toxic)
    except ValueError as e:
        raise pytest.UsageError(f"@pytest.mark.ustack: {e}") from None
    from ustack.link import ignored_settings

    unused = ignored_settings(opts.reorder, opts.jitter_ms, opts.distribution,
                              opts.correlation, opts.reorder_gap)
    if unused:
        raise pytest.UsageError(f"@pytest.mark.ustack: {unused}")
    return opts


def _interface(text: object) -> str:
    """`10.77.0.1` or `10.77.0.1/24` (the default prefix /24) as address/prefix."""
    import ipaddress

    try:
        iface = ipaddress.IPv4Interface(text if "/" in str(text) else f"{text}/24")
    except ValueError:
        raise pytest.UsageError(f"@pytest.mark.ustack: kernel_addr={text!r} is not an IPv4 "
                                "address (with an optional /prefix)") from None
    return str(iface)
