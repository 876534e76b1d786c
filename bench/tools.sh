#!/usr/bin/env bash
# What `make bench` needs beyond the rig: wrk, the load generator of bench/deploy.py's rejections
# (C, one thread, keep-alive). Installed with apt when missing and run as root on Debian;
# without it, bench/deploy.py falls back to its own asyncio client and says so.
set -euo pipefail

if command -v wrk >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "bench: no wrk, and cannot install it here (needs root on Debian): the asyncio client is used"
  exit 0
fi
echo "bench: installing wrk"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq wrk >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null ||
    echo "bench: wrk could not be installed: the asyncio client is used"
fi
