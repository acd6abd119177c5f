"""What `ss -tan` / `ss -tin` show of each connection, as data: `Stack.connections()`
returns these, and `ustack serve` prints them as a table on SIGUSR1.

A snapshot, taken from the TCBs (every state from SYN-RECEIVED to LAST-ACK) and the
TIME-WAIT records; a connection a SYN cookie stands for has no state, so, as in `ss`,
it is not listed until its handshake completes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ustack.addresses import endpoint, ntop, pton
from ustack.tcp.tcb import Tcb


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One connection. Times in seconds; `srtt`, `rto` and `cwnd` are None where the
    state has none (before the first RTT sample; TIME-WAIT)."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: str  # "ESTABLISHED", "SYN_RCVD", "TIME_WAIT", ... (ustack.tcp.states.State)
    recv_q: int  # bytes received, not yet read by the application (ss Recv-Q)
    send_q: int  # bytes written, not yet acknowledged by the peer (ss Send-Q)
    srtt: float | None
    rto: float | None
    cwnd: int | None  # bytes
    mss: int | None  # SND.MSS
    bytes_acked: int
    bytes_received: int
    retransmits: int  # segments sent again
    expires: float | None = None  # TIME-WAIT: seconds left


def as_dict(row: ConnectionInfo) -> dict[str, Any]:
    """The row as plain data (JSON's types but tuples): how a worker of `ustack serve
    --workers` sends its connections to the supervisor."""
    return dataclasses.asdict(row)


def from_dict(data: dict[str, Any]) -> ConnectionInfo:
    """The row `as_dict` gave, after a trip through JSON (which made the tuples lists)."""
    return ConnectionInfo(**{**data, "local": tuple(data["local"]),
                             "remote": tuple(data["remote"])})


def from_tcb(tcb: Tcb, local_addr: str) -> ConnectionInfo:
    return ConnectionInfo(
        local=(local_addr, tcb.local_port),
        remote=(ntop(tcb.remote_addr), tcb.remote_port),
        state=tcb.state.value, recv_q=tcb.readable, send_q=tcb.send_buffered,
        srtt=tcb.rtt.srtt, rto=tcb.rtt.rto, cwnd=tcb.cc.cwnd, mss=tcb.snd_mss,
        bytes_acked=tcb.bytes_acked, bytes_received=tcb.bytes_received,
        retransmits=tcb.retransmits)


def from_time_wait(local_addr: str, remote_addr: bytes, remote_port: int, local_port: int,
                   left: float) -> ConnectionInfo:
    return ConnectionInfo(
        local=(local_addr, local_port), remote=(ntop(remote_addr), remote_port),
        state="TIME_WAIT", recv_q=0, send_q=0, srtt=None, rto=None, cwnd=None, mss=None,
        bytes_acked=0, bytes_received=0, retransmits=0, expires=max(left, 0.0))


def _order(addr: str) -> tuple[int, bytes]:
    """IPv4 peers before IPv6 ones, each in numeric order."""
    packed = pton(addr)
    return len(packed), packed


def rows(local_for: Callable[[bytes], bytes], tcbs: Iterable[Tcb],
         time_waits: Iterable[tuple[bytes, int, int, float]], now: float) -> list[ConnectionInfo]:
    """Every connection as `ss -tan` lists it: TCBs (SYN-RECEIVED to LAST-ACK) and
    TIME-WAIT records (remote address and port, local port, deadline), sorted by local
    port then peer; `local_for` gives our address in a connection with a peer."""
    found = [from_tcb(tcb, ntop(local_for(tcb.remote_addr))) for tcb in tcbs]
    found += [from_time_wait(ntop(local_for(remote)), remote, port, local_port,
                             deadline - now)
              for remote, port, local_port, deadline in time_waits]
    found.sort(key=lambda r: (r.local[1], _order(r.remote[0]), r.remote[1]))
    return found


def format_table(rows: list[ConnectionInfo]) -> list[str]:
    """The rows as `ss -tin` lays them out, one line each, with a header line; endpoints
    as `10.77.0.2:80` or `[fd77::2]:80`, their columns as wide as the widest."""
    width = max([21] + [len(endpoint(*r.local)) for r in rows]
                + [len(endpoint(*r.remote)) for r in rows])
    lines = [f"{'State':<12} {'Recv-Q':>7} {'Send-Q':>7} {'Local':<{width}} "
             f"{'Peer':<{width}} details"]
    for r in rows:
        details = []
        if r.srtt is not None:
            details.append(f"rtt:{r.srtt * 1000:.3f}ms")
        if r.rto is not None and r.state != "TIME_WAIT":
            details.append(f"rto:{r.rto * 1000:.0f}ms")
        if r.cwnd is not None and r.mss:
            details.append(f"cwnd:{r.cwnd // r.mss}")
        if r.state != "TIME_WAIT":
            details.append(f"bytes_acked:{r.bytes_acked} bytes_received:{r.bytes_received}")
        if r.retransmits:
            details.append(f"retrans:{r.retransmits}")
        if r.expires is not None:
            details.append(f"timer:({r.expires:.1f}s)")
        local, remote = endpoint(*r.local), endpoint(*r.remote)
        lines.append(f"{r.state:<12} {r.recv_q:>7} {r.send_q:>7} {local:<{width}} "
                     f"{remote:<{width}} " + " ".join(details))
    return lines
