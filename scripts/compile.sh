#!/usr/bin/env bash
# The optional compiled build of ustack's sans-IO core. mypyc compiles the same annotated
# Python (ustack/tcp, ustack/host, the IP layer, checksums) into C extension modules that
# sit beside the .py files and are imported in their place; everything else stays Python.
# `ustack --version` and the start-up line of `ustack serve` say which core runs.
#
#   scripts/compile.sh [DIR]          compile the core of the checkout at DIR (default: this one)
#   scripts/compile.sh --clean [DIR]  remove the compiled modules again (pure Python)
#
# Needs the venv of scripts/test.sh (mypy ships mypyc), a C compiler and Python's headers;
# as root on Debian it installs gcc and python3-dev when they are missing.
set -euo pipefail

# shellcheck source=_bootstrap.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"

clean=0
if [[ ${1-} == --clean ]]; then
    clean=1
    shift
fi
dir=$(cd "${1:-$USTACK_ROOT}" && pwd)
if [[ ! -f $dir/ustack/tcp/tcb.py ]]; then
    echo "compile.sh: $dir is not a ustack checkout (no ustack/tcp/tcb.py)" >&2
    exit 2
fi

remove_built() {
    find "$dir/ustack" -name '*.so' -delete
    find "$dir" -maxdepth 1 -name '*__mypyc*.so' -delete
}

if ((clean)); then
    remove_built
    echo "compile.sh: removed the compiled core from $dir" >&2
    exit 0
fi

ustack_bootstrap
if ! command -v gcc >/dev/null 2>&1 \
    || [[ ! -f $("$USTACK_PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h ]]; then
    _ustack_apt_install gcc python3-dev || {
        echo "compile.sh: a C compiler and Python's headers are needed (gcc, python3-dev)" >&2
        exit 2
    }
fi

remove_built
cd "$dir"
# The sans-IO core and the network layer: what runs per segment.
modules=(ustack/tcp/*.py ustack/host/*.py ustack/ip.py ustack/ip6.py ustack/icmp6.py ustack/pmtu.py
         ustack/checksum.py ustack/packet.py ustack/stats.py)
log=$dir/build/compile.log
mkdir -p "$dir/build"
echo "compile.sh: compiling ${#modules[@]} modules with mypyc (about a minute)" >&2
# mypyc reads the mypy settings of pyproject.toml and writes its C sources to build/.
if ! "$USTACK_VENV/bin/mypyc" "${modules[@]}" >"$log" 2>&1; then
    tail -n 20 "$log" >&2 || true
    echo "compile.sh: mypyc failed; its whole output is in $log" >&2
    exit 1
fi
"$USTACK_PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import ustack
assert ustack.compiled_core(), "the compiled modules are not the ones imported"' "$dir"
echo "compile.sh: done; ustack in $dir now runs the compiled core" >&2
