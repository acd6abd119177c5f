"""Two hosts wired back to back through a simulated link on a virtual clock."""

import heapq
import itertools
import random
from dataclasses import dataclass, field

from ustack.host import Host
from ustack.tcp.config import TcpConfig
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

A_ADDR = "10.9.0.1"
B_ADDR = "10.9.0.2"


@dataclass
class Faults:
    loss: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.001
    jitter: float = 0.0  # uniform extra delay: reorders packets


@dataclass
class Pair:
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    config: TcpConfig = field(default_factory=TcpConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.a = Host(A_ADDR, rng=random.Random(self.seed + 1), config=self.config)
        self.b = Host(B_ADDR, rng=random.Random(self.seed + 2), config=self.config)
        self.now = 0.0
        self._wire: list[tuple[float, int, Host, bytes]] = []
        self._order = itertools.count()

    def _transmit(self, src: Host, dst: Host) -> None:
        f = self.faults
        for packet in src.poll(self.now):
            copies = 2 if self.rng.random() < f.dup else 1
            for _ in range(copies):
                if self.rng.random() < f.loss:
                    continue
                data = bytearray(packet)
                if self.rng.random() < f.corrupt:
                    data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
                at = self.now + f.delay + self.rng.random() * f.jitter
                heapq.heappush(self._wire, (at, next(self._order), dst, bytes(data)))

    def step(self) -> bool:
        """Flush both hosts, advance to the next event, deliver; False when idle."""
        self._transmit(self.a, self.b)
        self._transmit(self.b, self.a)
        times = [t for t in (self.a.next_deadline(), self.b.next_deadline()) if t is not None]
        if self._wire:
            times.append(self._wire[0][0])
        if not times:
            return False
        self.now = max(self.now, min(times))
        # What arrives together is read together, as a driver reads a device's batch
        # (so receive coalescing, ustack.tcp.gro, runs under every fault mix too).
        batches: dict[Host, list[bytes]] = {}
        while self._wire and self._wire[0][0] <= self.now:
            _, _, dst, packet = heapq.heappop(self._wire)
            batches.setdefault(dst, []).append(packet)
        for dst, batch in batches.items():
            taken = 0
            while taken < len(batch):  # it pauses where an accept queue filled
                taken = dst.receive_batch(batch, self.now, taken)
        return True


def transfer(pair: Pair, up: bytes, down: bytes, chunk: int = 4096,
             limit: float = 3600.0) -> tuple[bytes, bytes, Tcb, Tcb]:
    """A sends `up` and closes; B answers with `down` and closes. Returns what each got."""
    listener = pair.b.listen(5000)
    client = pair.a.connect(B_ADDR, 5000, pair.now)
    server: Tcb | None = None
    got_a, got_b = bytearray(), bytearray()
    up_left, down_left = memoryview(up), memoryview(down)
    while pair.now < limit:
        if server is None:
            server = listener.accept()
        if client.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            while up_left and client.send_buffered < 65536:  # writes of `chunk` bytes
                client.send(up_left[:chunk])
                up_left = up_left[chunk:]
            if not up_left:
                client.shutdown()
        if server is not None and server.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            while down_left and server.send_buffered < 65536:
                server.send(down_left[:chunk])
                down_left = down_left[chunk:]
            if not down_left and server.fin_received:
                server.shutdown()
        for tcb, got in ((client, got_a), (server, got_b)):
            if tcb is not None and tcb.readable:
                got += tcb.read()
        done = (server is not None and server.state is State.CLOSED
                and client.state in (State.TIME_WAIT, State.CLOSED))
        if done or not pair.step():
            break
    assert server is not None, "the connection was never accepted"
    return bytes(got_a), bytes(got_b), client, server
