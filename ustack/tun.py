"""The TUN device: open or create it, read batches, write packets. No parsing.

pytun-pmd3 opens the device; on Linux its address setters are IPv6-only, so an
IPv4 address for the kernel side is configured with iproute2, and it opens the
fd blocking, so we set O_NONBLOCK ourselves. It has no TUNSETOFFLOAD: with
`offload=True` (the default) the device is opened with IFF_VNET_HDR and the offloads
are enabled with fcntl.ioctl; every packet read or written then starts with a
virtio-net header (`ustack.vnet`). This adapter is the only place that sees it: reads
give the link and the host `ustack.packet.Offloaded` packets (the IP packet, whether its
checksum is vouched for, a super-packet's segment size), writes take them (the IP
packet, its segmentation size) and frame them.
"""

import errno
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from collections import Counter

from pytun_pmd3 import TunTapDevice
from pytun_pmd3.linux import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TUN, IFF_VNET_HDR

from ustack import vnet
from ustack.packet import Packet
from ustack.stats import DropReason

TUN_PATH = "/dev/net/tun"
MAX_BATCH = 4096  # packets per wake-up; the reader callback fires again if more wait

# linux/if_tun.h: _IOW('T', 208, unsigned int) and _IOW('T', 216, int).
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01  # the kernel may hand us packets with partial checksums
TUN_F_TSO4 = 0x02  # ... and TCP/IPv4 super-packets of up to 64 KB
TUN_F_TSO6 = 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
OFFLOAD_NAMES = ("checksum", "TSO")
TX_QUEUE_LEN = 10000
MAX_QUEUES = 256  # linux/if_tun.h MAX_TAP_QUEUES
DEFAULT_KERNEL_ADDR6 = "fd77::1/64"  # ustack is fd77::2 (and fe80::2) on the same link
KERNEL_LINK_LOCAL6 = "fe80::1/64"
GSO_MAX = 65535  # an IPv4 super-packet is one datagram: its total length is 16 bits


class TunError(Exception):
    """The device cannot be used; the message is one sentence for the user."""


class _OffloadRefused(Exception):
    """The device takes no virtio-net header or offloads: opened again without."""


class TunDevice:
    def __init__(self, dev: TunTapDevice, name: str, mtu: int, created: bool,
                 offload: bool = False) -> None:
        self._dev = dev
        self.name = name
        self.mtu = mtu
        self.created = created  # we made it, so it vanishes when we close it
        # Packets carry a virtio-net header; the kernel sends and takes super-packets.
        self.offload = offload
        self.offload_refused: str | None = None  # why a device asked for offloads has none
        self.ipv6_refused: str | None = None  # why a device we made has no IPv6 address
        self.counters: Counter[str] = Counter()
        self._fd = dev.fileno()
        self._read_size = (max(mtu, GSO_MAX) + vnet.HDR_LEN if offload else mtu) + 64

    @classmethod
    def open(cls, name: str = "ustack0", *, kernel_addr: str = "10.77.0.1/24",
             mtu: int | None = None, offload: bool = True,
             multi_queue: bool = False,
             kernel_addr6: str | None = DEFAULT_KERNEL_ADDR6) -> "TunDevice":
        """Attach to TUN `name`, or create and configure it when it does not exist: the
        kernel's side gets `kernel_addr` and, unless None, the IPv6 `kernel_addr6` (where
        the namespace has IPv6 off, the device works without: `ipv6_refused` says why).

        `offload`: IFF_VNET_HDR with checksum and TSO offloads (see `ustack.vnet`) if the
        device takes them; one that refuses them is opened without, and its
        `offload_refused` says why."""
        if not os.path.exists(TUN_PATH):
            raise TunError(f"{TUN_PATH} does not exist: load the tun module (modprobe tun) "
                           "or give the container the device")
        if offload:
            try:
                return cls._open(name, kernel_addr, mtu, offload=True,
                                 multi_queue=multi_queue, kernel_addr6=kernel_addr6)
            except _OffloadRefused as e:
                refused = str(e)
        device = cls._open(name, kernel_addr, mtu, offload=False, multi_queue=multi_queue,
                           kernel_addr6=kernel_addr6)
        if offload:
            device.offload_refused = refused
        return device

    @classmethod
    def open_queues(cls, name: str, count: int, *, kernel_addr: str = "10.77.0.1/24",
                    mtu: int | None = None, offload: bool = True,
                    kernel_addr6: str | None = DEFAULT_KERNEL_ADDR6) -> list["TunDevice"]:
        """`count` queues of the multi-queue TUN `name` (IFF_MULTI_QUEUE), created and
        configured as `open` does when it does not exist: one file descriptor per queue,
        and the kernel hands each flow's packets to one queue (tun_automq_select_queue
        hashes the flow), so one process or worker per queue sees whole flows.

        A persistent device must have been created multi-queue (`ustack setup-tun
        --queues N`); one that was not is refused with that fix. A created device goes
        when its last queue is closed."""
        if not 1 <= count <= MAX_QUEUES:
            raise TunError(f"a TUN device has 1 to {MAX_QUEUES} queues, not {count}")
        first = cls.open(name, kernel_addr=kernel_addr, mtu=mtu, offload=offload,
                         multi_queue=True, kernel_addr6=kernel_addr6)
        queues = [first]
        try:
            for _ in range(count - 1):
                # Same flags as the first: the kernel refuses a queue whose virtio-net
                # header setting differs from the device's.
                queues.append(cls._open(name, kernel_addr, mtu, offload=first.offload,
                                        multi_queue=True))
        except BaseException:
            for queue in queues:  # none left attached, whatever stopped us
                queue.close()
            raise
        return queues

    @classmethod
    def _open(cls, name: str, kernel_addr: str, mtu: int | None,
              offload: bool, multi_queue: bool = False,
              kernel_addr6: str | None = None) -> "TunDevice":
        existed = _exists(name)
        flags = (IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
                 | (IFF_MULTI_QUEUE if multi_queue else 0))
        try:
            dev = _tun_open(name, flags)
        except OSError as e:
            # A device made with queues (`setup-tun --queues N`) takes only multi-queue
            # opens (EINVAL otherwise); opened as its one queue it gets every flow.
            one_queue = (_tun_open_or_none(name, flags | IFF_MULTI_QUEUE)
                         if e.errno == errno.EINVAL and existed and not multi_queue
                         else None)
            if one_queue is None:
                if offload and e.errno == errno.EINVAL:
                    # No IFF_VNET_HDR here (some sandboxes' TUN): try again without it.
                    raise _OffloadRefused("the device takes no virtio-net header") from None
                raise TunError(_open_error(name, e, existed, multi_queue)) from None
            dev = one_queue
        try:
            flags = fcntl.fcntl(dev.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(dev.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
            _set_offload(dev.fileno(), offload)
            ipv6_refused = None
            if existed:
                if mtu is not None and mtu != dev.mtu:
                    dev.mtu = mtu
            else:
                _configure(name, kernel_addr, mtu or 1500)
                if kernel_addr6 is not None:
                    ipv6_refused = _configure6(name, kernel_addr6)
            actual_mtu = dev.mtu
        except (OSError, TunError, _OffloadRefused) as e:
            dev.close()
            if isinstance(e, TunError | _OffloadRefused):
                raise
            raise TunError(f"cannot configure TUN device {name}: {e.strerror or e}") from None
        device = cls(dev, name, actual_mtu, created=not existed, offload=offload)
        device.ipv6_refused = ipv6_refused
        return device

    @property
    def offloads(self) -> tuple[str, ...]:
        """The offloads on: the TCP checksum and TSO (both ways, see `ustack.vnet`)."""
        return OFFLOAD_NAMES if self.offload else ()

    def fileno(self) -> int:
        return self._fd

    def read_batch(self) -> list[Packet]:
        """Every packet that is ready now (up to MAX_BATCH), without blocking."""
        packets: list[bytes] = []
        read, fd, size = os.read, self._fd, self._read_size
        try:
            for _ in range(MAX_BATCH):
                packets.append(read(fd, size))
        except BlockingIOError:
            pass
        except OSError as e:
            self.counters[f"rx_error_{_errno_name(e.errno)}"] += 1
        if not self.offload:
            return packets  # type: ignore[return-value]
        unframed: list[Packet] = []
        for frame in packets:
            packet = vnet.unframe(frame)
            if packet is None:
                self.counters[DropReason.VNET_TRUNCATED] += 1  # the stack's stats show it
            else:
                unframed.append(packet)
        return unframed

    def write(self, packet: Packet) -> bool:
        """Send one packet; a failure (EIO while down, ENOBUFS, EAGAIN) is counted. With
        offloads the virtio-net header goes first, in the same system call."""
        try:
            if self.offload:
                os.writev(self._fd, vnet.frame_header(packet))
            else:
                os.write(self._fd, packet)  # type: ignore[arg-type]
        except OSError as e:
            self.counters[f"tx_error_{_errno_name(e.errno)}"] += 1
            return False
        return True

    def close(self) -> None:
        self._dev.close()


def _tun_open(name: str, flags: int) -> TunTapDevice:
    """TunTapDevice(name, flags), leaving nothing behind when it fails. pytun-pmd3 closes
    its fd when TUNSETIFF fails but keeps the number, and the failed instance's finalizer
    closes that number again when it is collected: by then, if a second open reused the
    number (as a retry with other flags does), that is the new device's fd."""
    try:
        return TunTapDevice(name, flags)
    except OSError as e:
        failed = OSError(e.errno, e.strerror)
    # Out of the except block the failed instance has been collected; the error raised
    # here holds no reference to it.
    raise failed


def _tun_open_or_none(name: str, flags: int) -> TunTapDevice | None:
    """`_tun_open`, or None where it fails."""
    try:
        return _tun_open(name, flags)
    except OSError:
        return None


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "unknown"


def _set_offload(fd: int, offload: bool) -> None:
    """Offloads on, or (a persistent device may keep them from an earlier user) off."""
    try:
        if offload:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet.HDR_LEN))
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if offload else 0)
    except OSError as e:
        if offload:
            raise _OffloadRefused(f"the device refuses checksum and TSO offloads: "
                                  f"{e.strerror or e}") from None


def _exists(name: str) -> bool:
    # Asks this network namespace (sysfs may be mounted from another one).
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_error(name: str, e: OSError, existed: bool, multi_queue: bool = False) -> str:
    if e.errno in (errno.EPERM, errno.EACCES):
        if not os.access(TUN_PATH, os.R_OK | os.W_OK):
            mode = oct(os.stat(TUN_PATH).st_mode & 0o777)[2:]
            return (f"no permission to open {TUN_PATH} (mode {mode}): run as root, or have "
                    f"root make it usable as distributions ship it: chmod 0666 {TUN_PATH}")
        if existed:
            return (f"no permission to open TUN device {name}: it belongs to another user; "
                    "root can make it yours: sudo ustack setup-tun --down, then sudo ustack "
                    "setup-tun")
        return (f"no permission to create TUN device {name}: run ustack in a private "
                "network of its own, no root needed (ustack sandbox --serve echo:7 -- CMD), "
                "or have root make a device yours (sudo ustack setup-tun, or ip tuntap add "
                f"{name} mode tun user $USER)")
    if e.errno == errno.EBUSY:
        return (f"TUN device {name} is in use by another process; give this one a device "
                "and addresses of its own, e.g. --dev ustack1 --addr 10.78.0.2 "
                "--kernel-addr 10.78.0.1/24")
    if e.errno == errno.ENOENT:
        return f"{TUN_PATH} is missing: load the tun module (modprobe tun)"
    if e.errno == errno.EINVAL:
        if multi_queue:
            return (f"{name} exists but is not a multi-queue TUN device: remove it and "
                    f"create it with queues (sudo ustack setup-tun --down {name}, then "
                    f"sudo ustack setup-tun --queues N {name})")
        return f"{name} exists but is not a TUN device without packet information"
    return f"cannot open TUN device {name}: {e.strerror or e}"


def _configure(name: str, kernel_addr: str, mtu: int) -> None:
    """Give the kernel's side of a new device its address and bring it up (iproute2)."""
    ipaddress.ip_interface(kernel_addr)  # already validated by callers; fail loudly if not
    ip = shutil.which("ip")
    if ip is None:
        raise TunError("the ip command (iproute2) is needed to configure a new TUN device")
    for cmd in (
        [ip, "addr", "add", kernel_addr, "dev", name],
        # A deeper queue toward ustack than TUN's default 500: a burst of more packets (a
        # thousand clients closing at once) would be dropped before ustack can read it.
        [ip, "link", "set", "dev", name, "mtu", str(mtu), "txqueuelen", str(TX_QUEUE_LEN),
         "up"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1:] or ["failed"]
            raise TunError(f"cannot configure TUN device {name}: {' '.join(cmd[1:])}: "
                           f"{detail[0]}")


def _configure6(name: str, kernel_addr6: str) -> str | None:
    """The kernel side's IPv6 addresses on a new device: `kernel_addr6`, and the
    link-local `fe80::1/64` (a TUN may get none of its own, and ustack's `fe80::2` needs
    a link-local peer), without duplicate address detection (a TUN has one neighbour,
    ustack, which answers other addresses); why not, or None."""
    ip = shutil.which("ip")
    disabled = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    try:
        with open(disabled) as f:
            if f.read().strip() != "0":
                return "IPv6 is disabled in this network namespace"
    except OSError:  # no such entry: no IPv6 here, or the MTU is below 1280
        return "the device has no IPv6 (a kernel without it, or an MTU below 1280)"
    for addr in (kernel_addr6, KERNEL_LINK_LOCAL6):
        try:
            done = subprocess.run([ip or "ip", "-6", "addr", "add", addr, "dev", name,
                                   "nodad"], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"ip -6 addr add {addr}: {e}"
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1:] or ["failed"]
            return f"ip -6 addr add {addr}: {detail[0]}"
    return None


def device_addresses(name: str) -> list[str]:
    """The IPv4 addresses (with prefix) of the kernel's side of device `name`."""
    ip = shutil.which("ip")
    if ip is None:
        return []
    done = subprocess.run([ip, "-j", "-4", "addr", "show", "dev", name], capture_output=True,
                          text=True, timeout=10, check=False)
    try:
        links = json.loads(done.stdout) if done.returncode == 0 else []
    except ValueError:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in links
            for a in link.get("addr_info", ()) if "local" in a and "prefixlen" in a]


def route_problem(name: str, addr: str) -> str | None:
    """Why the kernel would not send packets for `addr` into device `name`, as a sentence
    with the fix; None when it would (or when iproute2 cannot tell)."""
    ip = shutil.which("ip")
    if ip is None:
        return None
    done = subprocess.run([ip, "-j", "route", "get", addr], capture_output=True, text=True,
                          timeout=10, check=False)
    dev = None
    if done.returncode == 0:
        try:
            routes = json.loads(done.stdout)
        except ValueError:
            return None
        dev = routes[0].get("dev") if routes else None
        if dev == name:
            return None
    where = f"its packets would go to {dev}" if dev else "it has no route"
    if dev == "lo":
        where = "it is one of the kernel's own addresses"
    have = ", ".join(device_addresses(name)) or "no IPv4 address"
    return (f"the kernel cannot reach {addr} through {name} ({where}; {name}'s kernel side "
            f"has {have}): give ustack an address inside that subnet with --addr, or route "
            f"it: ip route add {addr} dev {name}")

