"""The asyncio driver over an in-memory device: the application accepts in mid-batch."""

import asyncio
import contextlib
import os
import random
import socket

import dpkt

from ustack.aio import Driver, clock
from ustack.host import Host
from ustack.tcp.isn import IsnGenerator
from ustack.tcp.syncookies import SynCookies
from ustack.tun import MAX_BATCH

US, PEER = "10.77.0.2", "10.77.0.1"


def packet(flags: int, sport: int, seq: int, ack: int = 0) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=7, seq=seq, ack=ack, flags=flags, win=65535)
    ip = dpkt.ip.IP(src=socket.inet_aton(PEER), dst=socket.inet_aton(US), p=6, ttl=64,
                    data=tcp)
    ip.len = 20 + len(bytes(tcp))
    return bytes(ip)


class BatchDevice:
    """Hands out one batch of packets when its (pipe) descriptor is readable."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.pending: list[bytes] = []
        self.written: list[bytes] = []

    def deliver(self, packets: list[bytes]) -> None:
        self.pending = packets
        os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def read_batch(self) -> list[bytes]:
        # Read without a signal too (a timer's wake-up): hand out what is pending.
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 1)
        batch, self.pending = self.pending, []
        return batch

    def write(self, p: bytes) -> bool:
        self.written.append(p)
        return True

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def test_a_batch_of_more_completions_than_the_backlog_is_accepted_whole() -> None:
    # Backlog 2: two handshakes wait in SYN-RECEIVED, a third gets a cookie. One batch
    # brings the three completing ACKs: the queue fills after the second, the
    # application takes them before the third packet, and nothing overflows.
    cookies = SynCookies(b"c" * 16)
    host = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1), cookies=cookies)
    listener = host.listen(7, backlog=2)
    accepted: list[int] = []

    def on_events(events, accepting) -> None:
        for lst in accepting:
            while (tcb := lst.accept()) is not None:  # what the application does
                accepted.append(tcb.remote_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        synacks = {}
        for port in (1001, 1002, 1003):
            host.receive(packet(dpkt.tcp.TH_SYN, port, 100), clock())
            (out,) = host.poll(clock())
            synacks[port] = dpkt.ip.IP(out).data.seq
        assert host.stats()["tcp_syncookies_sent"] == 1
        device = BatchDevice()
        driver = Driver(host, device, loop, on_events)
        driver.start()
        try:
            device.deliver([packet(dpkt.tcp.TH_ACK, port, 101, synacks[port] + 1)
                            for port in (1001, 1002, 1003)])
            for _ in range(100):  # bounded: at most 1 s
                if len(accepted) == 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            driver.stop()
            device.close()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert accepted == [1001, 1002, 1003]
    assert "drop_tcp_listen_overflow" not in host.stats()
    assert host.stats()["tcp_syncookies_accepted"] == 1
    assert not listener.accept_queue


def test_a_timer_wake_up_reads_the_device_before_it_fires_timers() -> None:
    # The ACK of our data waits in the device when the retransmission timer comes due
    # (uvloop runs due timers before it polls for I/O): it must cancel the timeout, not
    # follow a spurious retransmission. The device here never signals readability, so
    # only the timer's wake-up can find the ACK.
    host = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1))

    def reply(flags: int, seq: int, ack: int, dport: int) -> bytes:
        tcp = dpkt.tcp.TCP(sport=7, dport=dport, seq=seq, ack=ack, flags=flags, win=65535)
        ip = dpkt.ip.IP(src=socket.inet_aton(PEER), dst=socket.inet_aton(US), p=6, ttl=64,
                        data=tcp)
        ip.len = 20 + len(bytes(tcp))
        return bytes(ip)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        device = BatchDevice()
        driver = Driver(host, device, loop, lambda events, accepting: None)
        try:
            tcb = host.connect(PEER, 7, clock())
            (syn,) = host.poll(clock())
            iss = dpkt.ip.IP(syn).data.seq
            host.receive(reply(dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, 500, iss + 1,
                               tcb.local_port), clock())
            tcb.send(b"data")  # wakes the driver by itself
            await asyncio.sleep(0.01)
            assert device.written  # the data went out; its RTO is now armed
            device.pending = [reply(dpkt.tcp.TH_ACK, 501, iss + 5, tcb.local_port)]
            await asyncio.sleep(tcb.rtt.rto + 0.1)
            assert tcb.snd_una == iss + 5
        finally:
            driver.stop()
            device.close()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert "tcp_rto" not in host.stats()


def test_timers_wait_while_a_full_batch_says_the_device_holds_more() -> None:
    # A batch of MAX_BATCH packets means more may wait: due timers run only once the
    # device is drained, since any packet still in it may make them moot (the ACK of a
    # segment whose retransmission timer is due; in a close storm thousands of them).
    host = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1))
    junk = [b"\x45" + bytes(19)] * MAX_BATCH  # malformed: dropped, counted
    start = clock() - 5.0  # the data went out 5 s ago: its RTO is long due

    async def main() -> None:
        loop = asyncio.get_running_loop()
        device = BatchDevice()
        driver = Driver(host, device, loop, lambda events, accepting: None)
        try:
            tcb = host.connect(PEER, 7, start)
            (syn,) = host.poll(start)
            iss = dpkt.ip.IP(syn).data.seq
            host.receive(wrap(dpkt.tcp.TCP(sport=7, dport=tcb.local_port, seq=500,
                                           ack=iss + 1, win=65535,
                                           flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)), start)
            tcb.send(b"data")
            host.poll(start)
            ack = wrap(dpkt.tcp.TCP(sport=7, dport=tcb.local_port, seq=501, ack=iss + 5,
                                    flags=dpkt.tcp.TH_ACK, win=65535))
            device.pending = junk
            driver._on_readable()  # a full batch: the device may hold more
            assert "tcp_rto" not in host.stats()
            device.pending = [ack]
            driver._on_readable()  # drained: the ACK first, then the (moot) timer
        finally:
            driver.stop()
            device.close()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert "tcp_rto" not in host.stats()
    assert host.stats()["drops"] >= MAX_BATCH


def wrap(tcp: dpkt.tcp.TCP) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(PEER), dst=socket.inet_aton(US), p=6, ttl=64,
                    data=tcp)
    ip.len = 20 + len(bytes(tcp))
    return bytes(ip)


def test_a_stopped_driver_runs_no_step_and_arms_no_timer() -> None:
    # Stack.aclose aborts every connection (each abort wakes the driver: a step is
    # scheduled), flushes, stops the driver and closes the device. The step scheduled
    # before the stop must not run on, nor arm a timer that would read the closed device.
    host = Host(US, isn=IsnGenerator(b"k" * 16), rng=random.Random(1))
    touched: list[str] = []

    class ClosedAfterStop(BatchDevice):
        def read_batch(self) -> list[bytes]:
            touched.append("read")
            return super().read_batch()

        def write(self, p: bytes) -> bool:
            touched.append("write")
            return True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        device = ClosedAfterStop()
        driver = Driver(host, device, loop, lambda events, accepting: None)
        driver.start()
        tcb = host.connect(PEER, 7, clock())  # schedules a step (the SYN)
        driver.flush()
        assert touched == ["write"]  # the SYN
        tcb.abort()  # schedules another
        driver.flush()
        driver.stop()
        device.close()
        touched.clear()
        host.connect(PEER, 8, clock())  # a user call after the stop: nothing scheduled
        await asyncio.sleep(0.05)
        assert touched == []
        assert host.on_wake is None

    asyncio.run(asyncio.wait_for(main(), 5))
