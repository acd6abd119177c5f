#!/usr/bin/env bash
# The ustack demo: the kernel's own nc, curl and ping talk to ustack through a real TUN.
#
#   scripts/demo.sh          (as root, e.g. sudo scripts/demo.sh)
#
# Installs what it needs (apt packages, a .venv in the repo), then makes a private network
# namespace (deleted at exit), runs `ustack serve echo:7 http:80` in it and drives it with
# the kernel's clients. Nothing leaves that namespace. Exits non-zero if any step fails.
set -euo pipefail

# shellcheck source=_bootstrap.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"

if ((EUID != 0)); then
    echo "demo.sh: needs root for the network namespace and TUN device: sudo $0" >&2
    exit 2
fi
ustack_bootstrap

NS=ustack-demo-$$
WORK=$(mktemp -d)
SERVE_PID=
LISTEN_PID=
failures=0

cleanup() {
    local pid
    for pid in $SERVE_PID $LISTEN_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            # bounded wait, then force
            for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a command inside the demo namespace.
nsx() { ip netns exec "$NS" "$@"; }
if [[ -t 1 ]]; then B=$'\033[1m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'; else B='' G='' R='' N=''; fi
# Show a command the way a user would type it inside the namespace.
show() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
ok() { printf '%sok: %s%s\n' "$G" "$*" "$N"; }
bad() { printf '%sFAILED: %s%s\n' "$R" "$*" "$N"; failures=$((failures + 1)); }

ip netns add "$NS"
ip -n "$NS" link set lo up
echo "Private network namespace $NS; every command below runs inside it."
echo "ustack will be 10.77.0.2; the kernel's side of its TUN device ustack0 is 10.77.0.1/24."

show "ustack serve --trace echo:7 http:80 &"
ip netns exec "$NS" "$USTACK_PY" -m ustack serve --trace echo:7 http:80 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 150); do
    grep -q '^ustack: serving' "$WORK/serve.log" 2>/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '^ustack: serving' "$WORK/serve.log"; then
    cat "$WORK/serve.log" >&2
    echo "demo.sh: ustack did not start" >&2
    exit 1
fi
grep '^ustack: serving' "$WORK/serve.log"

show "printf 'hello\\n' | nc -N 10.77.0.2 7"
before=$(wc -l <"$WORK/serve.log")
out=$(printf 'hello\n' | nsx timeout 10 nc -N 10.77.0.2 7) || true
printf '%s\n' "$out"
if [[ $out == hello ]]; then ok "echoed"; else bad "echo returned '$out'"; fi
sleep 0.2  # the last ACK
echo "ustack's ladder of that connection (the kernel closed first: CLOSE_WAIT, LAST_ACK):"
ladder=$(tail -n "+$((before + 1))" "$WORK/serve.log")
printf '%s\n' "$ladder"
if [[ $ladder == *LAST_ACK* ]]; then
    ok "ladder shows the passive close"
else
    bad "no LAST_ACK in the ladder"
fi

show "curl -s http://10.77.0.2/"
out=$(nsx timeout 10 curl -s http://10.77.0.2/) || true
printf '%s\n' "$out"
if [[ $out == "hello from ustack" ]]; then ok "HTTP answered"; else bad "unexpected reply"; fi

show "curl -s http://10.77.0.2/bytes/1000000 | sha256sum"
got=$(nsx timeout 30 curl -s http://10.77.0.2/bytes/1000000 | sha256sum | cut -d' ' -f1) || true
want=$("$USTACK_PY" -c '
import hashlib
print(hashlib.sha256((bytes(range(256)) * 3907)[:1000000]).hexdigest())')
printf '%s  -\n' "$got"
printf '%s  (expected: byte i = i %% 256, computed locally)\n' "$want"
if [[ $got == "$want" ]]; then ok "1 MB intact"; else bad "checksum differs"; fi

show "ping -c 3 10.77.0.2"
if nsx timeout 15 ping -c 3 10.77.0.2; then ok "ping answered by ustack"; else bad "ping failed"; fi

show "kill -TERM <ustack serve>"
kill -TERM "$SERVE_PID"
status=0
for _ in $(seq 30); do
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -KILL "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
    bad "ustack serve still running 3 s after SIGTERM"
else
    wait "$SERVE_PID" || status=$?
    if ((status == 0)); then ok "ustack serve exited 0"; else bad "ustack serve exited $status"; fi
fi
SERVE_PID=

echo
echo "Now ustack opens the connection: a kernel listener (nc -l) on port 5000, and"
echo "ustack connect talks to it from 10.77.0.2 (it makes its own TUN device again)."
show "echo 'hello from the kernel' | nc -N -l 5000 &"
printf 'hello from the kernel\n' >"$WORK/kernel.txt"
# The kernel answers at once but closes its side a second later, so ustack closes first.
{ cat "$WORK/kernel.txt"; sleep 1; } | ip netns exec "$NS" timeout 20 nc -N -l 5000 \
    >"$WORK/listener.out" &
LISTEN_PID=$!
sleep 0.3
show "echo 'hello from ustack' | ustack connect --trace 10.77.0.1 5000"
echo "(its ladder goes to stderr; ustack closes first: FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT)"
status=0
out=$(printf 'hello from ustack\n' \
    | nsx timeout 20 "$USTACK_PY" -m ustack connect --trace 10.77.0.1 5000 2>"$WORK/connect.log") \
    || status=$?
cat "$WORK/connect.log"
printf '%s\n' "$out"
if grep -q "TIME_WAIT" "$WORK/connect.log"; then
    ok "ladder shows the active close"
else
    bad "no TIME_WAIT in ustack connect's ladder"
fi
wait "$LISTEN_PID" || true
LISTEN_PID=
echo "(the kernel listener received: $(cat "$WORK/listener.out"))"
if ((status == 0)) && [[ $out == "hello from the kernel" ]] \
    && [[ $(cat "$WORK/listener.out") == "hello from ustack" ]]; then
    ok "a line each way; ustack connect exited 0"
else
    bad "ustack connect exited $status"
fi

echo
if ((failures)); then
    echo "demo: $failures step(s) FAILED"
    exit 1
fi
echo "demo: all steps passed"
