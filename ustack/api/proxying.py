"""A `Stack`'s proxies (`ustack.services.proxy`): a port of the stack forwarding each
connection to an upstream server, typically one on the kernel's side of the device,
with toxics on the stream. Packet faults and shaping act on the clients' side only
unless asked: the upstream leg's far side is spared (`ustack.link.stage.Spared`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from ustack.addresses import pton
from ustack.aio import clock
from ustack.ladder import Ladder
from ustack.probe import Endpoint, ToxicEvent
from ustack.services.proxy import Connect, Proxy
from ustack.services.toxics import Toxic, parse_toxic

if TYPE_CHECKING:
    from ustack.api.calls import AsyncioCalls


class ProxyControls:
    # What `Stack` provides.
    _proxies: list[Proxy]
    _spared: set[tuple[bytes, int]]
    _proxy_totals: Counter[str]
    _ladder: Ladder | None

    def _replace_pipeline(self) -> None:
        raise NotImplementedError

    async def create_proxy(self, port: int, host: str, upstream_port: int, *,
                           toxics: Iterable[Toxic | str] = (), seed: int | None = None,
                           faults_upstream: bool = False, backlog: int = 100) -> Proxy:
        """Listen on `port` (both families, as `create_server`) and forward each
        connection to (`host`, `upstream_port`) through the toxics (`Proxy.add_toxic`
        and the rest change them while it runs). The link's faults and shaping skip the
        upstream leg unless `faults_upstream` (spared by the server's address and port:
        every connection of the stack to it). `proxy.close()` stops it and resets its
        connections; `proxy.counters` (also in `stats()`) count its connections and
        toxics."""
        upstream = (pton(host), upstream_port)  # an address, checked before listening
        calls = cast("AsyncioCalls", self)
        connect = cast(Connect, calls.create_connection)
        proxy = Proxy(connect, host, upstream_port,
                      toxics=[parse_toxic(t) if isinstance(t, str) else t for t in toxics],
                      seed=seed, on_toxic=self._on_toxic)
        proxy.server = await calls.create_server(proxy.protocol, None, port, backlog=backlog)
        self._proxies.append(proxy)
        if not faults_upstream:
            self._spared.add(upstream)  # the pipeline's Spared stages read this set

        def forget(closed: Proxy) -> None:
            if closed in self._proxies:
                self._proxies.remove(closed)
                self._proxy_totals.update(closed.counters)  # its counts stay in stats()
            if not any(p.upstream == closed.upstream for p in self._proxies):
                self._spared.discard(upstream)

        proxy.on_close = forget
        return proxy

    def _on_toxic(self, toxic: Toxic, client: asyncio.BaseTransport) -> None:
        """A toxic drawn for a connection: a row of the ladder (`--trace`)."""
        if self._ladder is None:
            return
        local, remote = client.get_extra_info("sockname"), client.get_extra_info("peername")
        if local is None or remote is None:
            return
        detail = " ".join([*toxic.settings(), toxic.stream])
        self._ladder.feed(ToxicEvent(clock(), Endpoint(local[0], local[1]),
                                     Endpoint(remote[0], remote[1]), toxic.kind, detail))
