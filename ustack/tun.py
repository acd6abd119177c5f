"""The TUN device: open or create it, read batches, write packets. No parsing.

pytun-pmd3 opens the device; on Linux its address setters are IPv6-only, so an
IPv4 address for the kernel side is configured with iproute2, and it opens the
fd blocking, so we set O_NONBLOCK ourselves. It has no TUNSETOFFLOAD: with
`offload=True` the device is opened with IFF_VNET_HDR and the offloads are enabled
with fcntl.ioctl; every packet read or written then starts with a virtio-net header
(`ustack.vnet`), which the host interprets.
"""

import errno
import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from collections import Counter

from pytun_pmd3 import TunTapDevice
from pytun_pmd3.linux import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR

from ustack import vnet

TUN_PATH = "/dev/net/tun"
MAX_BATCH = 4096  # packets per wake-up; the reader callback fires again if more wait

# linux/if_tun.h: _IOW('T', 208, unsigned int) and _IOW('T', 216, int).
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01  # the kernel may hand us packets with partial checksums
TUN_F_TSO4 = 0x02  # ... and TCP/IPv4 super-packets of up to 64 KB
TUN_F_TSO6 = 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
TX_QUEUE_LEN = 10000
GSO_MAX = 65535  # an IPv4 super-packet is one datagram: its total length is 16 bits


class TunError(Exception):
    """The device cannot be used; the message is one sentence for the user."""


class TunDevice:
    def __init__(self, dev: TunTapDevice, name: str, mtu: int, created: bool,
                 offload: bool = False) -> None:
        self._dev = dev
        self.name = name
        self.mtu = mtu
        self.created = created  # we made it, so it vanishes when we close it
        # Packets carry a virtio-net header; the kernel sends and takes super-packets.
        self.offload = offload
        self.counters: Counter[str] = Counter()
        self._fd = dev.fileno()
        self._read_size = (max(mtu, GSO_MAX) + vnet.HDR_LEN if offload else mtu) + 64

    @classmethod
    def open(cls, name: str = "ustack0", *, kernel_addr: str = "10.77.0.1/24",
             mtu: int | None = None, offload: bool = False) -> "TunDevice":
        """Attach to TUN `name`, or create and configure it when it does not exist.

        `offload`: IFF_VNET_HDR with checksum and TSO offloads (see `ustack.vnet`)."""
        if not os.path.exists(TUN_PATH):
            raise TunError(f"{TUN_PATH} does not exist: load the tun module (modprobe tun) "
                           "or give the container the device")
        existed = _exists(name)
        try:
            dev = TunTapDevice(name, IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0))
        except OSError as e:
            raise TunError(_open_error(name, e, existed)) from None
        try:
            flags = fcntl.fcntl(dev.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(dev.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
            _set_offload(dev.fileno(), offload)
            if existed:
                if mtu is not None and mtu != dev.mtu:
                    dev.mtu = mtu
            else:
                _configure(name, kernel_addr, mtu or 1500)
            actual_mtu = dev.mtu
        except (OSError, TunError) as e:
            dev.close()
            if isinstance(e, TunError):
                raise
            raise TunError(f"cannot configure TUN device {name}: {e.strerror or e}") from None
        return cls(dev, name, actual_mtu, created=not existed, offload=offload)

    def fileno(self) -> int:
        return self._fd

    def read_batch(self) -> list[bytes]:
        """Every packet that is ready now (up to MAX_BATCH), without blocking."""
        packets: list[bytes] = []
        read, fd, size = os.read, self._fd, self._read_size
        try:
            for _ in range(MAX_BATCH):
                packets.append(read(fd, size))
        except BlockingIOError:
            pass
        except OSError as e:
            self.counters[f"rx_error_{errno.errorcode.get(e.errno, e.errno)}"] += 1
        return packets

    def write(self, packet: bytes) -> bool:
        """Send one packet; a failure (EIO while down, ENOBUFS, EAGAIN) is counted."""
        try:
            os.write(self._fd, packet)
        except OSError as e:
            self.counters[f"tx_error_{errno.errorcode.get(e.errno, e.errno)}"] += 1
            return False
        return True

    def close(self) -> None:
        self._dev.close()


def _set_offload(fd: int, offload: bool) -> None:
    """Offloads on, or (a persistent device may keep them from an earlier user) off."""
    if offload:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet.HDR_LEN))
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if offload else 0)
    except OSError as e:
        if offload:
            raise TunError(f"the TUN device refuses checksum and TSO offloads ({e.strerror}): "
                           "run without --offload") from None


def _exists(name: str) -> bool:
    # Asks this network namespace (sysfs may be mounted from another one).
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_error(name: str, e: OSError, existed: bool) -> str:
    if e.errno in (errno.EPERM, errno.EACCES):
        how = ("ask root to create it for you with scripts/setup_tun.sh" if not existed
               else "it belongs to another user; recreate it with scripts/setup_tun.sh")
        return f"no permission to open TUN device {name}: run as root or {how}"
    if e.errno == errno.EBUSY:
        return f"TUN device {name} is in use by another process"
    if e.errno == errno.ENOENT:
        return f"{TUN_PATH} is missing: load the tun module (modprobe tun)"
    if e.errno == errno.EINVAL:
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
