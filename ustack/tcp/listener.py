"""A LISTEN socket: the bound port, its backlog and its accept queue."""

from collections import deque

from ustack.tcp.tcb import Tcb


class Listener:
    def __init__(self, port: int, backlog: int) -> None:
        self.port = port
        self.backlog = max(1, backlog)
        self.embryonic = 0  # children still in SYN-RECEIVED
        self.accept_queue: deque[Tcb] = deque()
        self.closed = False

    def full(self) -> bool:
        # Like Linux, bound the connections not yet handed to the user: SYN-RECEIVED
        # children plus the accept queue (SYN cookies come with the RFC 9293 work).
        return self.embryonic + len(self.accept_queue) >= self.backlog
