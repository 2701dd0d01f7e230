#!/usr/bin/env bash
# Install what legatus and its tests need on a fresh Debian machine with Python 3.11:
# the system tools the tests drive (curl, procps, redis-server for the rate limit
# service, h2load from nghttp2-client for HTTP/2), then a virtualenv in .venv with legatus
# and its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in curl ps redis-server h2load; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
  pkgs=()
  for tool in "${need[@]}"; do
    case $tool in
      ps) pkgs+=(procps) ;;
      redis-server) pkgs+=(redis-server) ;;
      h2load) pkgs+=(nghttp2-client) ;;
      *) pkgs+=("$tool") ;;
    esac
  done
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${pkgs[@]}"
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
