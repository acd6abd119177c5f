"""What a connection tells its application: RFC 9293 §3.9.1's "TCP-to-user" signals,
recorded by the TCB where they happen and handed up by the host (`Host.take_events`).

A TCB collects them as bits in `Tcb.events` until the host hands them over: one
delivery per connection per driver step, however many segments made them. The bits
are plain ints, not enum members, because they are set on the per-segment path
(an `enum.IntFlag` operation is a Python-level call); `ConnEvent` names them.
"""

import enum

ESTABLISHED = 1  # the handshake completed: an active open may return
READABLE = 2  # data arrived in the receive buffer (`Tcb.read` takes it)
EOF = 4  # the peer's FIN: nothing follows what is buffered
WRITABLE = 8  # the peer acknowledged data: the send buffer has room again
FIN_ACKED = 16  # our FIN is acknowledged: a closed connection is done for its user
CLOSED = 32  # CLOSED; `Tcb.error` says why (None: an orderly end or our abort)


class ConnEvent(enum.IntFlag):
    """The bits of `Tcb.events` by name (for messages and tests)."""

    ESTABLISHED = ESTABLISHED
    READABLE = READABLE
    EOF = EOF
    WRITABLE = WRITABLE
    FIN_ACKED = FIN_ACKED
    CLOSED = CLOSED
