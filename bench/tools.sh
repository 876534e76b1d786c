#!/usr/bin/env bash
# What `make bench` needs beyond the rig: wrk, the load generator of bench/deploy.py's rejections
# (C, one thread, keep-alive). Installed with apt when missing and run as root on Debian;
# without it, bench/deploy.py falls back to its own asyncio client and says so.
set -euo pipefail

log_tag=bench
# shellcheck source=tests/rig/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../tests/rig/lib.sh"

if command -v wrk >/dev/null; then exit 0; fi
log "installing wrk"
# In a subshell: apt_install exits when it cannot install, and the benchmarks run without wrk.
(apt_install wrk) || log "wrk could not be installed: the asyncio client is used"
