#!/usr/bin/env bash
# Install everything and run the demo: an HTTP server on 127.0.0.1:8080 behind
# legatus's TCP proxy on 127.0.0.1:10000 (examples/tcp-proxy.yaml), with the
# admin interface on 127.0.0.1:9901. Sends a few requests through the proxy and
# shows the stats they moved; keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

.venv/bin/python -m http.server 8080 --bind 127.0.0.1 --directory examples >/dev/null 2>&1 &
pids+=($!)
.venv/bin/legatus -c examples/tcp-proxy.yaml --concurrency 2 &
pids+=($!)

for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
echo
echo "== GET http://127.0.0.1:10000/ through legatus (tcp_proxy -> 127.0.0.1:8080):"
for _ in 1 2 3; do
  curl -fsS -o /dev/null -w "   HTTP %{http_code}, %{size_download} bytes\n" http://127.0.0.1:10000/
done
echo
echo "== Stats from the admin interface (curl 'http://127.0.0.1:9901/stats?filter=^(tcp|cluster\.backend\.upstream_cx_total)'):"
curl -fsS 'http://127.0.0.1:9901/stats?filter=^(tcp\.|cluster\.backend\.upstream_cx_total)'
echo
echo "legatus is running: proxy on 127.0.0.1:10000, admin on http://127.0.0.1:9901/ (Ctrl-C stops)."
wait "${pids[1]}"
