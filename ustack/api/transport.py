"""`Transport`: an asyncio.Transport over one ustack connection (a TCB).

asyncio's own StreamReader/StreamWriter and Protocol classes run unchanged on it. It
hears of its connection through the core's events (`ustack.tcp.events`, handed out by
`Dispatch`) and acts on the TCB only through its user calls (RFC 9293 §3.10: send,
read, shutdown, close, abort), each of which marks the connection for the host's next
poll by itself.
"""

import asyncio
import dataclasses
from typing import Any

from ustack.addresses import is_link_local, ntop
from ustack.api.dispatch import Dispatch
from ustack.tcp import events
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

HIGH_WATER = 64 * 1024  # asyncio's _FlowControlMixin defaults
LOW_WATER = 16 * 1024

# Once our FIN is acknowledged, a closed transport is done (as a kernel socket is
# done when close() returns): the TCB finishes FIN-WAIT-2/TIME-WAIT on its own.
_DONE_AFTER_CLOSE = frozenset({State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED})


class Transport(asyncio.Transport):
    """An asyncio.Transport over one ustack TCB."""

    _start_tls_compatible = True  # asyncio's marker; `Stack.start_tls` upgrades it

    def __init__(self, tcb: Tcb, protocol: asyncio.BaseProtocol, *,
                 loop: asyncio.AbstractEventLoop, local_addr: str,
                 dispatch: Dispatch, scope_id: int = 0) -> None:
        super().__init__()
        self._tcb = tcb
        self._protocol = protocol
        self._loop = loop
        self._dispatch = dispatch
        dispatch.add(tcb, self._on_events, self._on_stack_closed)
        self._made = False
        self._reading = True
        self._closing = False
        self._eof_written = False
        self._eof_delivered = False
        self._lost = False
        self._protocol_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._linger_zero = False
        local: tuple[str | int, ...] = (local_addr, tcb.local_port)
        remote: tuple[str | int, ...] = (ntop(tcb.remote_addr), tcb.remote_port)
        if len(tcb.remote_addr) == 16:  # AF_INET6's (host, port, flowinfo, scope_id)
            # A link-local pair's zone is the device's interface (RFC 4007 §6).
            zone = scope_id if is_link_local(tcb.remote_addr) else 0
            local, remote = (*local, 0, zone), (*remote, 0, zone)
        self._extra: dict[str, Any] = {"peername": remote, "sockname": local, "socket": None}
        tcb.nodelay = True  # asyncio sets TCP_NODELAY on every TCP transport; so do we
        self._loop.call_soon(self._connection_made)

    # ---------------------------------------------------------- from the core

    def _connection_made(self) -> None:
        self._made = True
        self._protocol.connection_made(self)
        self._sync()

    def _on_events(self, happened: int) -> None:
        """The core's events for this connection (`ustack.tcp.events` bits)."""
        if happened & ~events.WRITABLE:
            self._sync()  # data, EOF, an end: every consequence, in order
        else:
            self._maybe_resume_protocol()  # only room to write

    def _on_stack_closed(self) -> None:
        """The stack is going away: whatever the TCB still holds, this is the end."""
        self._connection_lost(None)

    def _sync(self) -> None:
        """Deliver data and EOF, update flow control, notice the end: what the TCB's
        state calls for now (after events, on connection_made and resume_reading)."""
        if not self._made or self._lost:
            return
        tcb = self._tcb
        if self._reading and not self._closing:
            if tcb.readable:
                self._deliver(tcb.read())  # may open the window: the TCB wakes the host
            if (tcb.fin_received and not tcb.readable and not self._eof_delivered
                    and self._reading):
                self._eof_delivered = True
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
                if not keep_open:
                    self.close()
        if tcb.error is None:
            # A connection that fails leaves a paused writer paused: its drain() raises
            # the error (asyncio's connection_lost wakes only paused writers with it).
            self._maybe_resume_protocol()
        if tcb.state is State.CLOSED or (self._closing and tcb.state in _DONE_AFTER_CLOSE):
            if not self._closing and self._undelivered():
                # Reading is paused with bytes (or the EOF) still held: a kernel socket
                # stays readable after its connection ends (tcp_recvmsg copies the queue
                # before it reports sk_err), so connection_lost waits for resume_reading.
                return
            self._connection_lost(tcb.error)

    def _undelivered(self) -> bool:
        tcb = self._tcb
        return bool(tcb.readable) or (tcb.fin_received and not self._eof_delivered)

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._dispatch.remove(self._tcb)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # ------------------------------------------------------ asyncio interface

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "tcp_info":
            return self._tcp_info()
        return self._extra.get(name, default)

    def _tcp_info(self) -> dict[str, Any]:
        tcb = self._tcb
        return {
            "state": tcb.state.value, "snd_una": tcb.snd_una, "snd_nxt": tcb.snd_nxt,
            "snd_wnd": tcb.snd_wnd, "rcv_nxt": tcb.rcv_nxt, "snd_mss": tcb.snd_mss,
            "srtt": tcb.rtt.srtt, "rto": tcb.rtt.rto, "cwnd": tcb.cc.cwnd,
            "retransmits": tcb.retransmits, "rcv_buf": tcb.rcv_buf_size,
            "snd_buf": tcb.snd_buf_size,
            "nodelay": tcb.nodelay, "keepalive": tcb.config.keepalive,
            "keepalive_idle": tcb.config.keepalive_idle,
            "keepalive_interval": tcb.config.keepalive_interval,
            "keepalive_count": tcb.config.keepalive_count,
        }

    # ------------------------------------------------ per-connection options

    def set_nodelay(self, enabled: bool = True) -> None:
        """Like `setsockopt(IPPROTO_TCP, TCP_NODELAY, enabled)`. On by default, as on every
        asyncio TCP transport; `set_nodelay(False)` turns Nagle's algorithm back on."""
        self._tcb.set_nodelay(bool(enabled))

    def set_keepalive(self, enabled: bool = True, idle: float | None = None,
                      interval: float | None = None, count: int | None = None) -> None:
        """Like `SO_KEEPALIVE` with `TCP_KEEPIDLE`, `TCP_KEEPINTVL` and `TCP_KEEPCNT`
        (seconds, seconds, probes); None keeps the connection's current value. After
        `idle` seconds without a segment from the peer, probes go every `interval`
        seconds; after `count` unanswered ones `connection_lost` gets a TimeoutError."""
        changes: dict[str, Any] = {"keepalive": bool(enabled)}
        for name, value in (("keepalive_idle", idle), ("keepalive_interval", interval),
                            ("keepalive_count", count)):
            if value is not None:
                if value <= 0:
                    raise ValueError(f"{name.removeprefix('keepalive_')} must be positive")
                changes[name] = value
        self._tcb.set_config(dataclasses.replace(self._tcb.config, **changes))

    def set_receive_buffer(self, nbytes: int) -> None:
        """Like `SO_RCVBUF`: the bytes this connection buffers for a reader that is slow
        (or paused) before the advertised window closes. As on Linux, a buffer set this
        way is no longer autotuned. It never shrinks below what is already buffered, and
        the window already advertised is never taken back. The window scale was fixed by
        the handshake (for `TcpConfig.rcv_buf_max`), which bounds the window."""
        if nbytes <= 0:
            raise ValueError("the receive buffer must be positive")
        self._tcb.set_receive_buffer(int(nbytes))

    def set_linger_zero(self, enabled: bool = True) -> None:
        """Like `SO_LINGER` with `l_onoff=1, l_linger=0`: from then on `close()` works as
        `abort()`: buffered data is discarded and the peer gets a RST instead of a FIN.
        (`abort()` always ends the connection with a RST.)"""
        self._linger_zero = bool(enabled)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        # Data stays in the TCB's receive buffer, so the advertised window closes.
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._loop.call_soon(self._sync)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._eof_written:
            raise RuntimeError("cannot call write() after write_eof()")
        if self._lost or self._closing or not data:
            return  # asyncio drops writes to a closing transport
        self._tcb.send(data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self._eof_written or self._lost:
            return
        self._eof_written = True
        self._tcb.shutdown()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        """Mirrors `asyncio.Transport.close`: buffered data is sent, then a FIN (unless
        `set_linger_zero()` was called: then it is `abort()`)."""
        if self._closing:
            return
        if self._linger_zero:
            self.abort()
            return
        self._closing = True
        self._tcb.close()  # the FIN follows whatever is still buffered
        if self._tcb.state in _DONE_AFTER_CLOSE:
            self._connection_lost(self._tcb.error)

    def abort(self) -> None:
        """Mirrors `asyncio.Transport.abort`: close at once, discarding buffered data; the
        peer gets a RST (as a socket with `SO_LINGER` 0 does). `connection_lost(None)`."""
        if self._lost:
            return
        self._tcb.abort()
        self._connection_lost(None)

    def _force_close(self, exc: Exception | None) -> None:
        """End the connection at once, reporting `exc` to `connection_lost` (asyncio's
        transports have this private method; its SSLProtocol calls it on a fatal TLS
        error or a shutdown timeout). Like asyncio, buffered data is discarded: RST."""
        if self._lost:
            return
        self._tcb.abort()
        self._connection_lost(exc)

    def get_write_buffer_size(self) -> int:
        # What the TCB holds within its send buffer (SO_SNDBUF, autotuned) is the kernel's
        # part of a socket's buffering; only what lies beyond it is the transport's.
        return max(0, self._tcb.send_buffered - self._tcb.snd_buf_size)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and self.get_write_buffer_size() > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()

