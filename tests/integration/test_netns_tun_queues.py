"""A multi-queue TUN, the device step of `--workers` (issue 18): `TunDevice.open_queues`
opens one file descriptor per queue, the kernel hands every packet of a flow to one
queue and spreads flows over them, and a persistent device made without queues is
refused with the fix."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from .support import REPO, USTACK_ADDR

pytestmark = pytest.mark.netns

SETUP_TUN = REPO / "scripts" / "setup_tun.sh"
FLOWS = 16

# In the namespace: open two queues, send one UDP datagram on each of FLOWS flows (source
# ports) to ustack's address, and say which queue got which flow.
SPREAD = textwrap.dedent(f"""
    import json, select, socket, sys, time
    from ustack.packet import ip_of
    from ustack.tun import TunDevice
    offload = sys.argv[1] == "offload"
    if sys.argv[2:] == ["one"]:  # the device's one open queue, without asking for queues
        queues = [TunDevice.open("ustack0", offload=offload)]
    else:
        queues = TunDevice.open_queues("ustack0", 2, offload=offload)
    def send(port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("10.77.0.1", port))
            s.sendto(b"x", ("{USTACK_ADDR}", 9))
    # A persistent device whose queues were all closed lost its carrier; until the
    # kernel's link watch brings it back (up to a second) packets are dropped. Probe.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        send(39999)
        if select.select(queues, [], [], 0.2)[0]:
            break
    time.sleep(0.1)
    for queue in queues:
        queue.read_batch()
    for port in range(40000, 40000 + {FLOWS}):
        for _ in range(2):  # twice: both datagrams of a flow must reach the same queue
            send(port)
    seen = [[] for _ in range(2)]
    deadline = time.monotonic() + 5
    while sum(map(len, seen)) < 2 * {FLOWS} and time.monotonic() < deadline:
        select.select(queues, [], [], 0.2)
        for got, queue in zip(seen, queues):
            for packet in queue.read_batch():
                ip = bytes(ip_of(packet))
                port = int.from_bytes(ip[20:22], "big")
                if ip[9] == 17 and port >= 40000:  # UDP, one of the flows: its port
                    got.append(port)
    print(json.dumps({{"seen": seen, "created": [q.created for q in queues],
                      "offload": [q.offload for q in queues]}}))
""")


@pytest.mark.parametrize("offload", ["offload", "plain"])
def test_each_flow_reaches_one_queue_and_the_flows_spread(netns, offload):
    done = netns.run([sys.executable, "-c", SPREAD, offload], timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    seen = result["seen"]
    assert sorted(seen[0] + seen[1]) == sorted(2 * list(range(40000, 40000 + FLOWS)))
    assert not set(seen[0]) & set(seen[1]), seen  # no flow split across queues
    assert seen[0] and seen[1], seen  # 16 flows all on one queue: 1 chance in 32,768
    assert result["created"] == [True, False]
    assert result["offload"] == [offload == "offload"] * 2


def test_a_persistent_device_is_made_multi_queue_by_setup_tun(netns):
    made = netns.run(["bash", str(SETUP_TUN), "--queues", "2"], timeout=20)
    assert made.returncode == 0, made.stderr.decode()
    assert b"multi-queue" in made.stdout
    done = netns.run([sys.executable, "-c", SPREAD, "offload"], timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["created"] == [False, False]
    # `ustack serve` on it opens one queue (as a multi-queue open: the kernel refuses
    # any other on such a device), which then gets every flow.
    done = netns.run([sys.executable, "-c", SPREAD, "offload", "one"], timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    seen = json.loads(done.stdout)["seen"]
    assert sorted(seen[0]) == sorted(2 * list(range(40000, 40000 + FLOWS))) and not seen[1]


def test_a_device_without_queues_is_refused_with_the_fix(netns):
    made = netns.run(["bash", str(SETUP_TUN)], timeout=20)
    assert made.returncode == 0, made.stderr.decode()
    done = netns.run([sys.executable, "-c", textwrap.dedent("""
        from ustack.tun import TunDevice, TunError
        try:
            TunDevice.open_queues("ustack0", 2)
        except TunError as e:
            print(e)
    """)], timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert "not a multi-queue TUN device" in done.stdout.decode()
    assert "setup-tun --queues N" in done.stdout.decode()
    # And the script will not turn it into one behind the user's back.
    again = netns.run(["bash", str(SETUP_TUN), "--queues", "2"], timeout=20)
    assert again.returncode == 2 and b"without multi_queue" in again.stderr
