#!/usr/bin/env bash
# Install everything and run the demo: an HTTP server on 127.0.0.1:8080 behind
# legatus's HTTP connection manager on 127.0.0.1:10000 (examples/http-proxy.yaml:
# a route to the server, a direct response, a redirect, an access log on stdout),
# with the admin interface on 127.0.0.1:9901. Sends a few requests through the
# proxy and shows the stats they moved; keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

.venv/bin/python -m http.server 8080 --bind 127.0.0.1 --directory examples >/dev/null 2>&1 &
pids+=($!)
.venv/bin/legatus -c examples/http-proxy.yaml --concurrency 2 &
pids+=($!)

for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
echo
echo "== Requests through legatus (access log lines follow each):"
for path in / /healthz /old/index.html /missing.html; do
  curl -sS -o /dev/null -w "   GET $path -> HTTP %{http_code}, %{size_download} bytes %{redirect_url}\n" \
    "http://127.0.0.1:10000$path"
done
sleep 1
echo
echo "== Stats from the admin interface (curl -g 'http://127.0.0.1:9901/stats?filter=...'):"
curl -fsSg 'http://127.0.0.1:9901/stats?filter=^(http\.ingress_http\.(downstream_rq_[0-9]xx|rq_direct_response)|cluster\.backend\.upstream_(cx|rq)_total)'
echo
echo "legatus is running: proxy on 127.0.0.1:10000, admin on http://127.0.0.1:9901/ (Ctrl-C stops)."
wait "${pids[1]}"
