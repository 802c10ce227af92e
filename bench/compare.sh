#!/usr/bin/env bash
# Re-runs the whole ws-gateway vs nginx+Nchan comparison of BENCHMARKS.md on this machine:
# builds, starts both servers, runs every measure RUNS times alternating the servers, and
# prints the table of medians with ratios. Needs Debian's nginx and libnginx-mod-nchan:
#   apt-get install -y nginx libnginx-mod-nchan
# Usage: bench/compare.sh [RUNS=3]   (results also land in target/bench/results.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=target/bench
mkdir -p "$OUT" /tmp/ws-bench-nginx
: > "$OUT/results.jsonl"

[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
  echo "nginx with the Nchan module is missing: apt-get install -y nginx libnginx-mod-nchan" >&2
  exit 1
}

cargo build --release --bin ws-gateway -p ws-gateway --quiet
cargo build --release -p ws-gateway-bench --quiet
BENCH=target/release/ws-gateway-bench

GW_PID=""
stop_servers() {
  if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; GW_PID=""; fi
  if [ -f /tmp/ws-bench-nginx/nginx.pid ]; then
    kill "$(cat /tmp/ws-bench-nginx/nginx.pid)" 2>/dev/null || true
    for _ in $(seq 50); do [ -f /tmp/ws-bench-nginx/nginx.pid ] || break; sleep 0.1; done
  fi
}
trap stop_servers EXIT

# A fresh server for every run: RSS growth is only meaningful on a process that has not
# already grown its heap in an earlier run.
start_server() { # start_server TARGET -> sets SERVER_PID
  if [ "$1" = gateway ]; then
    target/release/ws-gateway --config bench/gateway.toml 2>> "$OUT/gateway.log" &
    GW_PID=$!
    SERVER_PID=$GW_PID
    for _ in $(seq 100); do curl -sf http://127.0.0.1:6000/stat > /dev/null && break; sleep 0.1; done
  else
    nginx -c "$PWD/bench/nchan.conf" -p /tmp/ws-bench-nginx/
    for _ in $(seq 100); do curl -sf http://127.0.0.1:8090/nchan_status > /dev/null && break; sleep 0.1; done
    SERVER_PID=$(pgrep -f "nginx: worker process" | head -n 1)
  fi
}

run() { # run TARGET MODE ARGS...
  local target=$1 mode=$2; shift 2
  local common
  if [ "$target" = gateway ]; then
    common=(--target gateway --addr 127.0.0.1:5000 --stat-addr 127.0.0.1:6000 --pid "$SERVER_PID")
  else
    common=(--target nchan --addr 127.0.0.1:8090 --stat-addr 127.0.0.1:8090 --pid "$SERVER_PID")
  fi
  "$BENCH" "$mode" "${common[@]}" "$@" | tail -n 1 | python3 -c '
import json, sys
row = json.loads(sys.stdin.read()); row["label"] = sys.argv[1]; print(json.dumps(row))' "$LABEL" >> "$OUT/results.jsonl"
}

for run_no in $(seq "$RUNS"); do
  # Alternate which server goes first, so that neither always runs on a warmer machine.
  if [ $((run_no % 2)) -eq 1 ]; then order="gateway nchan"; else order="nchan gateway"; fi
  for target in $order; do
    echo "run $run_no: $target" >&2
    start_server "$target"
    LABEL=conns10k   run "$target" conns --connections 10000 --concurrency 200 --app c$run_no
    LABEL=fanout10k  run "$target" fanout --subscribers 10000 --pushes 50 --app f$run_no
    LABEL=latency1k  run "$target" fanout --subscribers 1000 --pushes 100 --rate 20 --app l$run_no
    LABEL=latency10k run "$target" fanout --subscribers 10000 --pushes 40 --rate 20 --app m$run_no
    LABEL=push50     run "$target" push --connections 50 --seconds 10 --app p$run_no
    stop_servers
  done
done

python3 bench/table.py "$OUT/results.jsonl"
