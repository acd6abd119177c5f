# shellcheck shell=bash
# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).
#
# ustack_bootstrap:
#   1. installs the Debian packages the demo and the tests use, when a tool is missing and
#      we are root (one quiet `apt-get update`, then only the missing packages);
#   2. creates the virtualenv $USTACK_VENV (default: .venv in the repo), or reuses it;
#   3. installs ustack into it editable with its test extras (skipped when pyproject.toml
#      has not changed since the last install).
# Afterwards $USTACK_PY is the venv's python and $USTACK_VENV/bin holds ustack, pytest, ruff.

USTACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USTACK_VENV=${USTACK_VENV:-$USTACK_ROOT/.venv}
USTACK_PY=$USTACK_VENV/bin/python

_ustack_log() { printf '[setup] %s\n' "$*" >&2; }

# Print the Debian packages whose tools are missing, one per line.
_ustack_missing_packages() {
    if ! command -v python3 >/dev/null 2>&1 \
        || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        echo python3-venv
    fi
    command -v ip >/dev/null 2>&1 || echo iproute2
    # The tests and the demo use OpenBSD netcat's -N (shut down writing after stdin EOF).
    command -v nc.openbsd >/dev/null 2>&1 || echo netcat-openbsd
    command -v curl >/dev/null 2>&1 || echo curl
    command -v socat >/dev/null 2>&1 || echo socat
    command -v ping >/dev/null 2>&1 || echo iputils-ping
    # The integration tests read captures back with tcpdump (checksums, options).
    command -v tcpdump >/dev/null 2>&1 || echo tcpdump
    command -v nft >/dev/null 2>&1 || echo nftables
    command -v tshark >/dev/null 2>&1 || echo tshark
    return 0
}

_ustack_apt_install() {
    if ((EUID != 0)) || ! command -v apt-get >/dev/null 2>&1; then
        _ustack_log "missing packages: $* (install them, or run this script as root on Debian)"
        return 2
    fi
    _ustack_log "installing: $*"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z ${_USTACK_APT_UPDATED-} ]]; then
        apt-get update -qq </dev/null >/dev/null || { _ustack_log "apt-get update failed"; return 2; }
        _USTACK_APT_UPDATED=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null \
        || { _ustack_log "apt-get install $* failed"; return 2; }
}

# Note: callers use `|| return`, which turns off `set -e` inside these functions, so every
# step that can fail is checked explicitly.
_ustack_install_packages() {
    local -a missing
    mapfile -t missing < <(_ustack_missing_packages)
    ((${#missing[@]} == 0)) && return 0
    _ustack_apt_install "${missing[@]}" || return
    mapfile -t missing < <(_ustack_missing_packages)
    if ((${#missing[@]} != 0)); then
        _ustack_log "still missing after apt-get install: ${missing[*]}"
        return 2
    fi
}

_ustack_make_venv() {
    if ! "$USTACK_PY" -m pip --version >/dev/null 2>&1; then
        _ustack_log "creating virtualenv $USTACK_VENV"
        rm -rf "$USTACK_VENV"
        if ! python3 -m venv "$USTACK_VENV" >/dev/null 2>&1; then
            # Debian splits venv/ensurepip into python3-venv.
            rm -rf "$USTACK_VENV"
            _ustack_apt_install python3-venv || return
            python3 -m venv "$USTACK_VENV" || { _ustack_log "python3 -m venv failed"; return 2; }
        fi
    fi
    local stamp=$USTACK_VENV/.ustack-install-stamp want
    want=$(sha256sum "$USTACK_ROOT/pyproject.toml" | cut -d' ' -f1) || return 2
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] \
        && "$USTACK_PY" -c 'import ustack, pytest' >/dev/null 2>&1 \
        && [[ -x $USTACK_VENV/bin/ruff ]]; then
        return 0
    fi
    _ustack_log "installing ustack (editable, with test extras) into $USTACK_VENV"
    rm -f "$stamp"
    "$USTACK_PY" -m pip install -q --disable-pip-version-check -e "${USTACK_ROOT}[test]" \
        </dev/null || { _ustack_log "pip install failed"; return 2; }
    printf '%s\n' "$want" >"$stamp"
}

ustack_bootstrap() {
    _ustack_install_packages || return
    _ustack_make_venv || return
}
