"""The link middleware a `Stack` puts between its device and its host (`ustack.link`):
the capture, the fault injector (`faults`) and the shaper (`shape`), in the order device -
pcap - shaper - faults - host, and their counters. Either may be set or replaced before
the stack starts or while it runs; what a replaced stage held goes on its way."""

from __future__ import annotations

import os
from collections import Counter
from typing import TextIO

from ustack.aio import Driver
from ustack.ladder import Ladder, fault_event, flag_names
from ustack.link import (
    FAULT_COUNTERS,
    SHAPER_COUNTERS,
    TX,
    FaultInjector,
    PcapWriter,
    Pipeline,
    Shaper,
    pipeline_of,
    presets,
)
from ustack.link.rules import RULE_COUNTERS, Rule, TcpRules, parse_rule
from ustack.link.stage import Spared, Stage
from ustack.packet import Packet, ip_of
from ustack.services.proxy import Proxy


class LinkControls:
    # What `Stack` provides.
    pcap: str | os.PathLike[str] | None
    _pcap: PcapWriter | None
    _faults: FaultInjector | None
    _fault_totals: Counter[str]
    _shaper: Shaper | None
    _shaper_totals: Counter[str]
    _rules: TcpRules | None
    _rule_totals: Counter[str]
    _ladder: Ladder | None
    _fault_log: TextIO | None
    _driver: Driver
    _device: object | None
    _proxies: list[Proxy]
    _spared: set[tuple[bytes, int]]
    _wrapped: dict[Stage, Spared]
    _proxy_totals: Counter[str]

    def shape(self, rate_bps: float | None = None, queue: int = 1000,
              queue_bytes: int | None = None,
              gemodel: tuple[float, float, float, float] | None = None,
              seed: int | None = None, directions: str = "both") -> int | None:
        """Shape the link, per direction (`ustack.link.Shaper`): a rate in bits per second
        counting IP bytes behind a FIFO of `queue` packets (or `queue_bytes` bytes; tail
        drop, counted as `shaper_queue_dropped`), and Gilbert–Elliott loss `gemodel` =
        (p, r, 1-h, 1-k) as netem's `loss gemodel`, one model per direction. Neither a
        rate nor a gemodel: no shaper. Returns the seed of its losses (None without)."""
        new = None
        if rate_bps is not None or gemodel is not None:
            new = Shaper(rate_bps, queue, queue_bytes, gemodel, seed, directions)
        old, self._shaper = self._shaper, new
        if old is not None:
            self._shaper_totals.update(old.counters)
        self._replace_pipeline()
        return new.seed if new is not None else None

    def faults(self, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
               corrupt: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
               seed: int | None = None, distribution: str = "uniform",
               correlation: float = 0.0, reorder_gap: int = 0) -> int | None:
        """Put a seeded fault injector on the link, in both directions, replacing any
        before it; with no arguments (or all zero) remove it (netem's `loss`, `duplicate`,
        `reorder P gap G`, `corrupt`, `delay D J C% distribution NAME`; see
        `ustack.link.FaultInjector`). Probabilities are fractions (0.05 = 5%). Returns
        the seed in use (log it to replay a run), or None when no faults are on. May be
        called before the stack starts or while it runs; packets the old injector held
        back are sent on, not lost."""
        injector = FaultInjector(loss=loss, dup=dup, reorder=reorder, corrupt=corrupt,
                                 delay_ms=delay_ms, jitter_ms=jitter_ms, seed=seed,
                                 distribution=distribution, correlation=correlation,
                                 reorder_gap=reorder_gap)
        injector.probe = self._on_fault
        new = injector if injector.active else None
        old, self._faults = self._faults, new
        if old is not None:
            self._fault_totals.update(old.counters)
        self._replace_pipeline()
        return new.seed if new is not None else None

    def preset(self, name: str, seed: int | None = None) -> int | None:
        """Make the link one of the named ones (`ustack.link.presets`: "wifi", "3g",
        "satellite"): its faults and its shaping, replacing both. Returns the seed."""
        chosen = presets.preset(name)
        used = self.faults(**chosen.faults, seed=seed)
        self.shape(**chosen.shape, seed=used if seed is None else seed)
        return used

    def _on_fault(self, kind: str, direction: int, packet: Packet, now: float) -> None:
        """The fault injector dropped, duplicated or corrupted `packet`: into the ladder
        (`--trace`), and beside the capture in `<pcap>.faults` (a classic pcap has no
        room for a comment), one line each."""
        if self._ladder is None and self._pcap is None:
            return
        ev = fault_event(kind, bytes(ip_of(packet)),
                         direction == TX, now)
        if ev is None:
            return
        if self._ladder is not None:
            self._ladder.feed(ev)
        if self._pcap is not None and self.pcap is not None:
            if self._fault_log is None:
                self._fault_log = open(f"{os.fspath(self.pcap)}.faults", "w",  # noqa: SIM115
                                       encoding="utf-8")
            wall = now + self._pcap.wall_offset
            way = "ustack->peer" if ev.outbound else "peer->ustack"
            self._fault_log.write(
                f"{wall:.6f} {kind} {way} {ev.src} > {ev.dst} {flag_names(ev.flags)} "
                f"seq {ev.seq} len {ev.length}\n")

    @property
    def fault_injector(self) -> FaultInjector | None:
        """The fault injector in use, if any (its `.seed`, `.describe()`, `.counters`)."""
        return self._faults

    @property
    def shaper(self) -> Shaper | None:
        """The shaper in use, if any (its `.describe()`, `.counters`)."""
        return self._shaper

    def rule(self, rule: str | Rule) -> Rule:
        """Add a fault that knows TCP (`ustack.link.rules`): `"drop flags=SA count=2
        port=80"`, `"corrupt offset=100000 dir=rx"`, `"blackhole after=1000000"`. Each
        firing shows in the ladder and the `.faults` log beside a capture, and counts
        (`rule_fired`). Returns the Rule (its `fired` says how often it did)."""
        added = parse_rule(rule) if isinstance(rule, str) else rule
        if self._rules is None:
            self._rules = TcpRules([])
            self._rules.probe = self._on_fault
            self._replace_pipeline()
        self._rules.rules.append(added)
        return added

    @property
    def rules(self) -> list[Rule]:
        """The rules in force, in order."""
        return list(self._rules.rules) if self._rules is not None else []

    def clear_rules(self) -> None:
        """No more rules (their counts stay in `stats()`)."""
        if self._rules is not None:
            self._rule_totals.update(self._rules.counters)
            self._rules = None
            self._replace_pipeline()

    def _pipeline(self) -> Pipeline | None:
        # A proxy's upstream legs pass the shaper, faults and rules untouched
        # (`Stack.create_proxy(faults_upstream=False)`); the capture shows everything.
        # One wrapper per stage for its life: the driver keeps the stages a new pipeline
        # keeps (by identity), and a shaper's queue must not be emptied by a rewrap.
        wrapped: dict[Stage, Spared] = {}
        for stage in (self._shaper, self._faults, self._rules):
            if stage is not None:
                wrapped[stage] = self._wrapped.get(stage) or Spared(stage, self._spared)
        self._wrapped = wrapped
        return pipeline_of([self._pcap, *wrapped.values()])  # shaper, faults, rules

    def _replace_pipeline(self) -> None:
        if self._device is not None:  # running: the driver exists
            self._driver.set_pipeline(self._pipeline())

    def _link_counters(self) -> Counter[str]:
        """The capture's, fault injectors' and shapers' counters (those replaced too)."""
        counters: Counter[str] = Counter()
        for current, totals, names in ((self._faults, self._fault_totals, FAULT_COUNTERS),
                                       (self._shaper, self._shaper_totals, SHAPER_COUNTERS),
                                       (self._rules, self._rule_totals, RULE_COUNTERS)):
            if current is not None or totals:
                counters.update(dict.fromkeys(names, 0))
                counters.update(totals)
                if current is not None:
                    counters.update(current.counters)
        if self._pcap is not None:
            counters.update(self._pcap.counters)
        counters.update(self._proxy_totals)  # closed proxies'
        for proxy in self._proxies:
            counters.update(proxy.counters)
        return counters
