"""Where the core's events reach the application's objects.

The host hands the driver each connection that had events since the last step, with
their bits (`Host.take_events`, `ustack.tcp.events`). `Dispatch` knows who listens to
which connection — its `Transport`, or a `create_connection` still waiting for the
handshake — and calls it with the bits, once per connection per step. Nothing here
reads a TCB: what happened is in the bits, what to do about it is the listener's.
"""

from collections.abc import Callable

from ustack.tcp.tcb import Tcb

OnEvents = Callable[[int], None]  # the bits of `ustack.tcp.events`
OnStackClosed = Callable[[], None]  # the stack is going away: this is the end


class Dispatch:
    """Who hears each connection's events."""

    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        self._listeners: dict[Tcb, tuple[OnEvents, OnStackClosed]] = {}
        # Where a failing listener's exception goes (the loop's exception handler): the
        # other connections of the batch still hear of theirs.
        self._on_error = on_error

    def add(self, tcb: Tcb, on_events: OnEvents,
            on_stack_closed: OnStackClosed = lambda: None) -> None:
        """`tcb`'s events go to `on_events` from now on (replacing whoever had them)."""
        self._listeners[tcb] = (on_events, on_stack_closed)

    def remove(self, tcb: Tcb) -> None:
        self._listeners.pop(tcb, None)

    def deliver(self, happened: list[tuple[Tcb, int]]) -> None:
        listeners = self._listeners
        for tcb, bits in happened:
            found = listeners.get(tcb)
            if found is not None:
                try:
                    found[0](bits)
                except Exception as exc:
                    self._on_error(exc)

    def close_all(self) -> None:
        """The stack is closing: everyone still listening hears it is the end."""
        for _, on_stack_closed in list(self._listeners.values()):
            on_stack_closed()
        self._listeners.clear()
