#!/usr/bin/env bash
# System packages the test suite needs besides Python's: Debian's docker-compose (validates docker-compose.yaml
# without a Docker engine) and chromium (the browser tests). Installs what is missing with apt-get when run as root;
# otherwise says what to install. `make test` runs it first.
set -euo pipefail
need=()
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if (( ${#need[@]} == 0 )); then exit 0; fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "!! the tests need these system packages: ${need[*]}; install them (Debian: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "== installing system packages for the tests: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
