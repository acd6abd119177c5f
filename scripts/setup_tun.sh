#!/usr/bin/env bash
# Create a persistent TUN device for ustack, owned by the calling user (see --help).
# The script itself ships inside the package (`ustack setup-tun` runs the same one).
exec bash "$(dirname "$(readlink -f "$0")")/../ustack/data/setup_tun.sh" "$@"
