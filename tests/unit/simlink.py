"""Two hosts wired back to back through a simulated link on a virtual clock."""

import random
from dataclasses import dataclass, field

from ustack.host import Host
from ustack.link import FaultInjector, Pipeline, Stage
from ustack.packet import Offloaded, Packet
from ustack.tcp.config import TcpConfig
from ustack.tcp.states import State
from ustack.tcp.tcb import Tcb

A_ADDR = "10.9.0.1"
B_ADDR = "10.9.0.2"
A_ADDR6 = "fd09::1"
B_ADDR6 = "fd09::2"


@dataclass
class Faults:
    loss: float = 0.0
    dup: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.001
    jitter: float = 0.0  # uniform extra delay: reorders packets

    def injector(self, seed: int) -> FaultInjector:
        """The link middleware's own fault injector with these faults: a delay uniform
        in [delay, delay + jitter] is its `delay_ms` ± `jitter_ms`."""
        return FaultInjector(loss=self.loss, dup=self.dup, corrupt=self.corrupt,
                             delay_ms=(self.delay + self.jitter / 2) * 1000,
                             jitter_ms=self.jitter / 2 * 1000, seed=seed)


@dataclass
class Pair:
    """A and B on one wire: the fault injector of the link middleware (`ustack.link`)
    between them, A's packets its TX direction, B's its RX, on a virtual clock."""

    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    config: TcpConfig = field(default_factory=TcpConfig)
    # Both hosts on devices with checksum and TSO offloads: what one sends crosses as the
    # kernel passes it between two such devices (a super-packet, its checksum vouched
    # for), and the wire's injector cuts it into wire segments.
    offload: bool = False
    # Over IPv6: `transfer` connects to B's IPv6 address (both hosts have one either way).
    ipv6: bool = False
    # More of the link: a stage between the hosts beside the faults (a `Shaper`).
    stage: Stage | None = None

    def __post_init__(self) -> None:
        self.a = Host(A_ADDR, rng=random.Random(self.seed + 1), config=self.config,
                      offload=self.offload, addrs6=[A_ADDR6])
        self.b = Host(B_ADDR, rng=random.Random(self.seed + 2), config=self.config,
                      offload=self.offload, addrs6=[B_ADDR6])
        self.now = 0.0
        injector = self.faults.injector(self.seed)
        self.wire: Stage = (injector if self.stage is None
                            else Pipeline([self.stage, injector]))
        # What the wire let through at once (no delay), per receiving host.
        self._arrived: dict[Host, list[Packet]] = {}

    def _transmit(self) -> None:
        for src, dst, send in ((self.a, self.b, self.wire.tx), (self.b, self.a, self.wire.rx)):
            for packet in src.poll(self.now):
                if type(packet) is Offloaded:
                    packet = Offloaded(packet.ip, csum_ok=True, gso=packet.gso)
                passed = send(packet, self.now)
                if passed:
                    self._arrived.setdefault(dst, []).extend(passed)

    def step(self) -> bool:
        """Flush both hosts, advance to the next event, deliver; False when idle."""
        self._transmit()
        times = [t for t in (self.a.next_deadline(), self.b.next_deadline(),
                             self.wire.next_deadline()) if t is not None]
        if self._arrived:
            times.append(self.now)
        if not times:
            return False
        self.now = max(self.now, min(times))
        # What arrives together is read together, as a driver reads a device's batch
        # (so receive coalescing, ustack.tcp.gro, runs under every fault mix too).
        batches, self._arrived = self._arrived, {}
        to_a, to_b = self.wire.poll(self.now)
        for dst, due in ((self.a, to_a), (self.b, to_b)):
            if due:
                batches.setdefault(dst, []).extend(due)
        for dst, batch in batches.items():
            taken = 0
            while taken < len(batch):  # it pauses where an accept queue filled
                taken = dst.receive_batch(batch, self.now, taken)
        return True


def transfer(pair: Pair, up: bytes, down: bytes, chunk: int = 4096,
             limit: float = 3600.0) -> tuple[bytes, bytes, Tcb, Tcb]:
    """A sends `up` and closes; B answers with `down` and closes. Returns what each got."""
    listener = pair.b.listen(5000)
    client = pair.a.connect(B_ADDR6 if pair.ipv6 else B_ADDR, 5000, pair.now)
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
