"""The asyncio-style calls of `Stack` (`create_server`, `create_connection`, `start_tls`,
`start_server`, `open_connection`): each mirrors the asyncio call of its name, argument
checks and errors included."""

import asyncio
import errno
import ssl as _ssl
from collections.abc import Awaitable, Callable

from ustack.addresses import pton
from ustack.aio import Driver, clock
from ustack.api import tls
from ustack.api.checks import check_host, check_port
from ustack.api.dispatch import Dispatch
from ustack.api.server import Server, socket_names
from ustack.api.transport import Transport
from ustack.host import Host
from ustack.tcp import events
from ustack.tcp.config import TcpConfig
from ustack.tcp.listener import Listener
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

STREAM_LIMIT = 2**16
_HANDSHAKE = frozenset({State.SYN_SENT, State.SYN_RCVD})

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class AsyncioCalls:
    """`Stack`'s asyncio-style calls, over what the running stack holds."""

    # What `Stack` provides (set once it runs).
    loop: asyncio.AbstractEventLoop
    addr: str
    _host: Host
    _driver: Driver
    _dispatch: Dispatch
    _servers: dict[Listener, Server]
    _scope_id: int

    def _check_running(self) -> None:
        raise NotImplementedError

    def _check_local(self, host: str | None) -> list[str]:
        raise NotImplementedError

    def _close_server(self, listener: Listener) -> None:
        raise NotImplementedError

    def _transport(self, tcb: Tcb, protocol: asyncio.BaseProtocol) -> Transport:
        raise NotImplementedError

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: str | None = None, port: int | None = None, *,
                            backlog: int = 100, ssl: _ssl.SSLContext | None = None,
                            ssl_handshake_timeout: float | None = None,
                            ssl_shutdown_timeout: float | None = None,
                            tcp: TcpConfig | None = None) -> Server:
        """Mirrors `loop.create_server`; with `ssl` every connection is TLS (the
        handshake runs before the protocol's `connection_made`). `tcp` gives this
        listener's connections their own settings (default: the stack's `tcp`). `host`
        as asyncio binds it: None or "" both families (a `Server.sockets` entry each),
        "0.0.0.0" IPv4 only, "::" IPv6 only, an address of the stack only that one
        (else `OSError(errno.EADDRNOTAVAIL)`). A port already listening on one of those
        addresses raises `OSError(errno.EADDRINUSE)`, as `bind()` does; port 0 listens
        on a free ephemeral port (`server.sockets[0].getsockname()`)."""
        local = self._check_local(host)
        if port is None:
            raise ValueError("a port is required (0 for any free port)")
        port = check_port(port, server=True)
        sslcontext = tls.check_server_args(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        self._check_running()  # after the argument checks, as asyncio makes them first
        if port == 0:
            port = self._host.free_port()
        if sslcontext is not None:
            protocol_factory = tls.server_protocol_factory(
                protocol_factory, sslcontext, self.loop,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        try:
            listener = self._host.listen(port, backlog, config=tcp,
                                         local=[pton(a) for a in local])
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(errno.EADDRINUSE, f"[Errno {errno.EADDRINUSE}] error while "
                              f"attempting to bind on address ({host or self.addr!r}, "
                              f"{port}): address already in use") from None
            raise
        server = Server(listener, protocol_factory, loop=self.loop,
                        names=socket_names(host, local, port, self._scope_id),
                        on_close=self._close_server)
        self._servers[listener] = server
        return server

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *,
        ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        tcp: TcpConfig | None = None,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Mirrors `loop.create_connection`. With `ssl` (a context, or True for a
        default one) it returns once the TLS handshake is done: the transport is then
        the TLS one, and handshake errors (`ssl.SSLError`, a timeout) are raised.

        `tcp` gives this connection its own settings (default: the stack's `tcp`).
        Errors: `ConnectionRefusedError` when the peer answers our SYN with a RST,
        `TimeoutError` when `tcp.syn_retries` retransmitted SYNs go unanswered
        (1+2+4+... s), `ConnectionResetError` on a reset during the handshake."""
        host = check_host(host)
        port = check_port(port)
        tls_args = tls.check_client_args(ssl, host, server_hostname, ssl_handshake_timeout,
                                         ssl_shutdown_timeout)
        self._check_running()
        tcb = self._host.connect(host, port, clock(), config=tcp)  # the SYN goes out soon
        established: asyncio.Future[None] = self.loop.create_future()

        def on_events(happened: int) -> None:
            # By the state, not only the bit: whatever event comes first after the
            # handshake (a bit lost to a failing callback is not the end of it).
            if established.done():
                return
            if tcb.state is State.CLOSED:
                established.set_exception(tcb.error or ConnectionError("connection closed"))
            elif happened & events.ESTABLISHED or tcb.state not in _HANDSHAKE:
                established.set_result(None)

        self._dispatch.add(tcb, on_events)
        try:
            await established
        except asyncio.CancelledError:
            tcb.abort()
            raise
        finally:
            self._dispatch.remove(tcb)
        protocol = protocol_factory()
        if tls_args is not None:
            return await self._client_tls(tcb, protocol, *tls_args, ssl_handshake_timeout,
                                          ssl_shutdown_timeout)
        transport = self._transport(tcb, protocol)
        made = self.loop.create_future()
        self.loop.call_soon(made.set_result, None)  # after connection_made, as asyncio does
        await made
        return transport, protocol

    async def _client_tls(self, tcb: Tcb, protocol: asyncio.BaseProtocol,
                          sslcontext: _ssl.SSLContext | None, server_hostname: str | None,
                          handshake_timeout: float | None, shutdown_timeout: float | None,
                          ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        # asyncio's _create_connection_transport with _make_ssl_transport.
        waiter: asyncio.Future[None] = self.loop.create_future()
        ssl_protocol = tls.make_ssl_protocol(
            self.loop, protocol, sslcontext, waiter, server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout, ssl_shutdown_timeout=shutdown_timeout)
        transport = self._transport(tcb, ssl_protocol)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return ssl_protocol._app_transport, protocol

    async def start_tls(self, transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol,
                        sslcontext: _ssl.SSLContext, *, server_side: bool = False,
                        server_hostname: str | None = None,
                        ssl_handshake_timeout: float | None = None,
                        ssl_shutdown_timeout: float | None = None) -> asyncio.Transport:
        """Mirrors `loop.start_tls`: upgrade a ustack connection to TLS; return the new
        transport (`protocol` receives the plaintext from then on). The old transport
        must no longer be used by the caller."""
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, "
                            f"got {sslcontext!r}")
        if not isinstance(transport, Transport):
            raise TypeError(f"transport {transport!r} is not supported by start_tls() "
                            f"(only a plain ustack Transport is)")
        self._check_running()
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()
        ssl_protocol = tls.make_ssl_protocol(
            loop, protocol, sslcontext, waiter, server_side=server_side,
            server_hostname=server_hostname, call_connection_made=False,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        # Pause early so that data cannot reach ssl_protocol before its connection_made.
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = loop.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = loop.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    async def start_server(self, client_connected_cb: ClientConnected, host: str | None = None,
                           port: int | None = None, *, limit: int = STREAM_LIMIT,
                           backlog: int = 100, ssl: _ssl.SSLContext | None = None,
                           ssl_handshake_timeout: float | None = None,
                           ssl_shutdown_timeout: float | None = None,
                           tcp: TcpConfig | None = None) -> Server:
        """Mirrors `asyncio.start_server` (`tcp` as for `create_server`)."""
        self._check_running()
        loop = self.loop

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, host, port, backlog=backlog, ssl=ssl,
                                        ssl_handshake_timeout=ssl_handshake_timeout,
                                        ssl_shutdown_timeout=ssl_shutdown_timeout, tcp=tcp)

    async def open_connection(
        self, host: str, port: int, *, limit: int = STREAM_LIMIT,
        ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        tcp: TcpConfig | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Mirrors `asyncio.open_connection` (`tcp` as for `create_connection`)."""
        self._check_running()
        reader = asyncio.StreamReader(limit=limit, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        transport, _ = await self.create_connection(
            lambda: protocol, host, port, ssl=ssl, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout, tcp=tcp)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self.loop)
