"""The eleven TCP states (RFC 9293 §3.3.2, Figure 5) and their groupings."""

from enum import Enum


class State(Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RCVD = "SYN_RCVD"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    def __str__(self) -> str:
        return self.value


# States in which the connection is synchronized (RFC 9293 §3.5.2, "3.").
SYNCHRONIZED = frozenset({
    State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT,
    State.CLOSING, State.LAST_ACK, State.TIME_WAIT,
})

# States that still accept segment text (RFC 9293 §3.10.7.4, seventh).
RECEIVING = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})

# States from which user data may still be sent (our FIN not yet queued).
SENDING = frozenset({State.SYN_SENT, State.SYN_RCVD, State.ESTABLISHED, State.CLOSE_WAIT})

# When the ACK of our FIN arrives (RFC 9293 §3.10.7.4, fifth).
ON_FIN_ACKED = {
    State.FIN_WAIT_1: State.FIN_WAIT_2,
    State.CLOSING: State.TIME_WAIT,
    State.LAST_ACK: State.CLOSED,
}

# When the peer's FIN arrives (RFC 9293 §3.10.7.4, eighth); FIN_WAIT_1 with our
# FIN already acknowledged has become FIN_WAIT_2 before this step runs.
ON_FIN_RECEIVED = {
    State.SYN_RCVD: State.CLOSE_WAIT,
    State.ESTABLISHED: State.CLOSE_WAIT,
    State.FIN_WAIT_1: State.CLOSING,
    State.FIN_WAIT_2: State.TIME_WAIT,
}

# When the user closes its sending side (RFC 9293 §3.10.4, CLOSE call).
ON_CLOSE = {
    State.SYN_RCVD: State.FIN_WAIT_1,
    State.ESTABLISHED: State.FIN_WAIT_1,
    State.CLOSE_WAIT: State.LAST_ACK,
}
