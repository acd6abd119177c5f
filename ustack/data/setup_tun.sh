#!/usr/bin/env bash
# Create a persistent TUN device for ustack, owned by the calling user.
#
#   sudo ustack setup-tun [NAME] [HOST_CIDR] [HOST_CIDR6]  # ustack0 10.77.0.1/24 fd77::1/64
#   sudo ustack setup-tun --queues N [NAME] [HOST_CIDR]   # multi-queue, for N queues
#   sudo ustack setup-tun --down [NAME]          # remove it again
#   (from a checkout: sudo scripts/setup_tun.sh with the same arguments)
#
# The kernel side of the link gets HOST_CIDR, and HOST_CIDR6 where IPv6 is on; ustack then
# attaches to the device without root (`ustack serve --dev NAME`) and answers as 10.77.0.2
# and fd77::2. Re-running is harmless: an existing device and address are kept. When
# experimenting, do this inside a private network namespace (`sudo unshare -n bash`).
set -euo pipefail

prog=${USTACK_PROG:-setup_tun.sh}
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 2; }
usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0"
}

down=0
queues=1
case ${1-} in
    -h | --help) usage; exit 0 ;;
    --down) down=1; shift ;;
    --queues)
        [[ ${2-} =~ ^[1-9][0-9]{0,2}$ ]] && ((${2} <= 256)) \
            || die "--queues takes a number of queues from 1 to 256"
        queues=$2
        shift 2
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
esac
name=${1:-ustack0}
cidr=${2:-10.77.0.1/24}
cidr6=${3:-fd77::1/64}
if ((down)) && (($# > 1)); then die "--down takes only a device name"; fi
if (($# > 3)); then die "too many arguments (see --help)"; fi
[[ $cidr6 =~ ^[0-9A-Fa-f:]+/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$ && $cidr6 == *:*:* ]] \
    || die "'$cidr6' is not an IPv6 address with prefix length, e.g. fd77::1/64"

[[ $name =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "'$name' is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)"
ip4='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
[[ $cidr =~ ^$ip4\.$ip4\.$ip4\.$ip4/([0-9]|[12][0-9]|3[0-2])$ ]] \
    || die "'$cidr' is not an IPv4 address with prefix length, e.g. 10.77.0.1/24"

((EUID == 0)) || die "creating a TUN device needs root: sudo $prog $*"
command -v ip >/dev/null 2>&1 || die "the 'ip' command is missing (apt-get install iproute2)"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (modprobe tun)"

exists() { ip link show dev "$name" >/dev/null 2>&1; }
# Each test reads a command's whole output first: `cmd | grep -q` under pipefail fails
# at random when grep exits at its match before cmd has written the rest (SIGPIPE).
shows() { [[ $1 == *"$2"* ]]; }
is_tun() { shows "$(ip -d link show dev "$name" 2>/dev/null)" ' tun type tun '; }
is_multi_queue() { shows "$(ip -d link show dev "$name" 2>/dev/null)" ' multi_queue '; }

if ((down)); then
    if ! exists; then
        echo "$prog: no device $name; nothing to remove"
        exit 0
    fi
    is_tun || die "$name exists but is not a TUN device; not touching it"
    ip tuntap del dev "$name" mode tun
    echo "$prog: removed $name"
    exit 0
fi

owner=${SUDO_USER:-$(id -un)}
id -u "$owner" >/dev/null 2>&1 || die "unknown user '$owner'"

if exists; then
    is_tun || die "$name exists but is not a TUN device; choose another name"
    if ((queues > 1)) && ! is_multi_queue; then
        die "$name exists without multi_queue: remove it first ($prog --down $name)"
    fi
    echo "$prog: $name exists; keeping it"
    have=$(ip -d link show dev "$name" | sed -n 's/.* tun type tun .* user \([^ ]*\) .*/\1/p')
    if [[ -n $have && $have != "$owner" && $have != "$(id -u "$owner")" ]]; then
        echo "$prog: note: $name is owned by '$have', not '$owner' (--down and re-run to change)"
    fi
else
    if ((queues > 1)); then
        # The kernel attaches queues as they are opened; the device only needs the flag.
        ip tuntap add dev "$name" mode tun user "$owner" multi_queue
        echo "$prog: created multi-queue TUN $name owned by $owner (open up to 256 queues)"
    else
        ip tuntap add dev "$name" mode tun user "$owner"
        echo "$prog: created TUN $name owned by $owner"
    fi
fi

if shows "$(ip -4 -o addr show dev "$name")" " inet $cidr "; then
    echo "$prog: $name already has $cidr"
else
    ip addr add "$cidr" dev "$name"
    echo "$prog: $name has address $cidr"
fi
# IPv6 beside it, where the namespace has it on: HOST_CIDR6 and the link-local fe80::1/64
# (a TUN may get no link-local address of its own; ustack answers fe80::2), without
# duplicate address detection (the one neighbour on a TUN is ustack).
if [[ $(cat "/proc/sys/net/ipv6/conf/$name/disable_ipv6" 2>/dev/null || echo 1) == 0 ]]; then
    for a in "$cidr6" fe80::1/64; do
        if shows "$(ip -6 -o addr show dev "$name")" " inet6 $a "; then
            echo "$prog: $name already has $a"
        else
            ip -6 addr add "$a" dev "$name" nodad
            echo "$prog: $name has address $a"
        fi
    done
fi
# A deeper queue toward ustack than TUN's default 500: a burst of more packets than that
# (1000 clients closing at once) would otherwise be dropped before ustack can read it.
ip link set dev "$name" txqueuelen 10000 up

if [[ $owner != root ]] && ! runuser -u "$owner" -- test -r /dev/net/tun -a -w /dev/net/tun 2>/dev/null; then
    echo "$prog: warning: $owner cannot open /dev/net/tun (mode $(stat -c %a /dev/net/tun));" \
        "Debian's default is 0666: chmod 0666 /dev/net/tun" >&2
fi

echo "$prog: ready. Now run (as $owner): ustack serve --dev $name echo:7 http:80"
