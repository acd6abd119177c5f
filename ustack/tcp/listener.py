"""A LISTEN socket: the bound port, its backlog and its accept queue."""

from collections import deque

from ustack.tcp.config import TcpConfig
from ustack.tcp.tcb import Tcb


class Listener:
    def __init__(self, port: int, backlog: int, config: TcpConfig) -> None:
        self.port = port
        self.backlog = max(1, backlog)
        self.config = config  # for the connections it accepts
        self.embryonic = 0  # children still in SYN-RECEIVED
        self.accept_queue: deque[Tcb] = deque()
        self.closed = False
        self.last_cookie_at: float | None = None  # when we last answered with a SYN cookie

    def syn_queue_full(self) -> bool:
        """Handshakes in progress are bounded; past this, SYN cookies answer (RFC 4987)."""
        return self.embryonic >= self.backlog

    def accept_queue_full(self) -> bool:
        """Established connections not yet taken by the user; past this, SYNs and the ACKs
        that would complete a handshake are dropped (Linux sk_acceptq_is_full)."""
        return len(self.accept_queue) >= self.backlog
