#!/usr/bin/env bash
# A/B of two ws-gateway binaries, as BENCHMARKS.md's "steps" table was measured: ROUNDS rounds,
# alternating which binary goes first, a fresh process each time; conns 10k, fanout 10k x 50,
# then push requests over 50 keep-alive connections for 5 s.
# Usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-3}
cargo build --release -p ws-gateway-bench --quiet
BENCH=target/release/ws-gateway-bench
for round in $(seq "$ROUNDS"); do
  # Alternate which binary goes first: the second run of a round pays for the first one's
  # sockets still in TIME_WAIT and runs on a warmer machine, which alone moves a result by 10 %.
  if [ $((round % 2)) -eq 1 ]; then order=("$OLD" "$NEW"); else order=("$NEW" "$OLD"); fi
  for binary in "${order[@]}"; do
    "$binary" --config bench/gateway.toml 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:6000/stat > /dev/null && break; sleep 0.1; done
    conns=$("$BENCH" conns --pid "$pid" --connections 10000 --app "c$round" | tail -n 1)
    fanout=$("$BENCH" fanout --pid "$pid" --subscribers 10000 --pushes 50 --app "f$round" | tail -n 1)
    push=$("$BENCH" push --pid "$pid" --connections 50 --seconds 5 --app "p$round" | tail -n 1)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c '
import json, sys
c, f, p = (json.loads(arg) for arg in sys.argv[1:4])
print("%s: rss/conn %.0f B, set-up %.0f/s %.1f us | fan-out %.0f/s %.2f us/delivery p99 %.0f ms lost %d | push %.0f/s %.1f us" % (
    sys.argv[4], c["rss_per_conn_bytes"], c["conns_per_s"], c["server_cpu_per_setup_us"],
    f["deliveries_per_s"], f["server_cpu_per_delivery_us"], f["latency_p99_ms"], f["lost"],
    p["requests_per_s"], p["server_cpu_per_request_us"]))' "$conns" "$fanout" "$push" "$binary"
  done
done
