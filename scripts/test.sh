#!/usr/bin/env bash
# The whole test suite: lint, unit, property, fuzz and integration tests.
#
#   scripts/test.sh [PYTEST ARGS...]
#   scripts/test.sh --compiled [PYTEST ARGS...]
#
# --compiled runs the suite on the compiled core instead (scripts/compile.sh, mypyc), in
# a copy of the checkout so that this one stays pure Python; a test checks that the
# compiled modules are the ones under test.
#
# On a fresh Debian machine run as root: installs what it needs (apt packages, a .venv in
# the repo with ustack and its test extras), then runs `ruff check`, `mypy` and `pytest`.
# The integration tests make their own private network namespaces; without root they skip
# (with USTACK_REQUIRE_NETNS=1, as under CI, such a skip is a failure).
set -euo pipefail

# shellcheck source=_bootstrap.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
compiled=0
if [[ ${1-} == --compiled ]]; then
    compiled=1
    shift
fi

ustack_bootstrap
cd "$USTACK_ROOT"

if ((!compiled)); then  # the same source either way: checked once
    echo "+ ruff check ustack tests tools examples" >&2
    "$USTACK_VENV/bin/ruff" check ustack tests tools examples

    echo "+ mypy (config in pyproject.toml)" >&2
    "$USTACK_VENV/bin/mypy"
fi

if ((compiled)); then
    tree=$(mktemp -d /tmp/ustack-compiled.XXXXXX)
    trap 'rm -rf "$tree"' EXIT
    tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.so' \
        --exclude=__pycache__ -cf - . | tar -xf - -C "$tree"
    "$USTACK_ROOT/scripts/compile.sh" "$tree"
    cd "$tree"
    # The copy's package, compiled, before the checkout's (installed editable).
    export PYTHONPATH=$tree USTACK_EXPECT_COMPILED=1
    echo "+ pytest $* (compiled core, in $tree)" >&2
else
    echo "+ pytest $*" >&2
fi
# A hard bound on the whole run, well inside CI's 30 minutes.
status=0
# CI runs the pure suite (about 5 minutes), then the compiled one (about 5, and a minute
# to build it): the two bounds, the build and the setup stay inside CI's 30 minutes.
limit=$((compiled ? 9 : 12))
timeout --signal=INT --kill-after=60 "${limit}m" "$USTACK_PY" -m pytest "$@" || status=$?
if ((status == 124)); then
    echo "test.sh: pytest did not finish within $limit minutes" >&2
fi
exit "$status"
