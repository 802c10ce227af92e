#!/usr/bin/env bash
# Issue 13's measurements (BENCHMARKS.md, "History and recovery (issue 13)"), side by side in
# one run, a fresh ws-gateway (bench/gateway.toml) for every measure; prints one line per
# result and a table of medians and per-round ratios at the end.
#
# Usage: bench/history.sh [ROUNDS=5] [SCENARIO...]          scenarios: fanout recover
#   fanout   three variants per round, the one that goes first rotating: history on (the
#            default, size 100) with plain subscribers; history off (WS_GATEWAY_HISTORY__SIZE=0)
#            with plain subscribers; history on with subscribers that ask for positions
#            (--recover: every push encoded a second time, with its offset and epoch). Each runs
#            FANOUT_SUBSCRIBERS (5000) x 50 pushes flat out, then x 40 pushes at 10/s.
#   recover  RECOVER_CLIENTS (1000) clients with positions cut at once, 50 pushes sent while
#            they are away, all reconnecting at once with `since` (ws-gateway-bench recover,
#            ROUNDS cycles on one process): local broker, then Redis (a redis-server on a free
#            port, started and stopped here).
# Raw JSON lines: target/bench/history.jsonl (overwritten). NO_BUILD=1 skips the release build
# (the binaries in target/release are used as they are).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
shift || true
SCENARIOS=${*:-fanout recover}
FANOUT_SUBSCRIBERS=${FANOUT_SUBSCRIBERS:-5000}
RECOVER_CLIENTS=${RECOVER_CLIENTS:-1000}

[ -n "${NO_BUILD:-}" ] || cargo build --release -p ws-gateway -p ws-gateway-bench --quiet
GW=target/release/ws-gateway
BENCH=target/release/ws-gateway-bench
OUT=target/bench
mkdir -p "$OUT"
: > "$OUT/history.jsonl"
WORK=$(mktemp -d /tmp/ws-history.XXXXXX)
PIDS=() # what this script started and has not stopped yet
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

GW_PID=""
start_gateway() { # start_gateway [VAR=VALUE...]: a fresh gateway on :5000 / :6000
  env "$@" "$GW" --config bench/gateway.toml 2>> "$WORK/gateway.log" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:6000/stat > /dev/null && return 0; sleep 0.1; done
  echo "the gateway did not start" >&2
  return 1
}
stop_gateway() {
  kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true
  PIDS=("${PIDS[@]/$GW_PID}")
}
record() { # record LABEL ROUND JSON: tags the tool's JSON line and keeps it
  python3 -c 'import json,sys; r=json.loads(sys.argv[3]); r["variant"]=sys.argv[1]; r["round"]=int(sys.argv[2]); print(json.dumps(r))' \
    "$1" "$2" "$3" | tee -a "$OUT/history.jsonl"
}

if [[ " $SCENARIOS " == *" fanout "* ]]; then
  variants=(on off on+recover)
  for round in $(seq 0 $((ROUNDS - 1))); do
    for k in 0 1 2; do
      variant=${variants[(round + k) % 3]}
      case $variant in
        on) env_vars=() flags=() ;;
        off) env_vars=(WS_GATEWAY_HISTORY__SIZE=0) flags=() ;;
        on+recover) env_vars=() flags=(--recover) ;;
      esac
      start_gateway "${env_vars[@]}"
      flat=$("$BENCH" fanout --pid "$GW_PID" --subscribers "$FANOUT_SUBSCRIBERS" --pushes 50 \
        --app "flat$round" "${flags[@]}" | tail -n 1)
      record "$variant" "$round" "$(sed 's/"mode":"fanout"/"mode":"fanout-flat"/' <<< "$flat")"
      rate=$("$BENCH" fanout --pid "$GW_PID" --subscribers "$FANOUT_SUBSCRIBERS" --pushes 40 \
        --rate 10 --app "rate$round" "${flags[@]}" | tail -n 1)
      record "$variant" "$round" "$(sed 's/"mode":"fanout"/"mode":"fanout-rate"/' <<< "$rate")"
      stop_gateway
    done
  done
fi

if [[ " $SCENARIOS " == *" recover "* ]]; then
  start_gateway
  "$BENCH" recover --pid "$GW_PID" --clients "$RECOVER_CLIENTS" --pushes 50 --rounds "$ROUNDS" \
    --app recover-local | grep '^{' | while read -r line; do
    record local "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["round"])' "$line")" "$line"
  done
  stop_gateway
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    > "$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
  start_gateway WS_GATEWAY_BROKER__KIND=redis "WS_GATEWAY_BROKER__URL=redis://127.0.0.1:$REDIS_PORT/"
  "$BENCH" recover --pid "$GW_PID" --broker-pid "$REDIS_PID" --clients "$RECOVER_CLIENTS" \
    --pushes 50 --rounds "$ROUNDS" --app recover-redis | grep '^{' | while read -r line; do
    record redis "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["round"])' "$line")" "$line"
  done
  stop_gateway
fi

python3 - "$OUT/history.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def med(xs): return statistics.median(xs) if xs else float("nan")
for mode in ("fanout-flat", "fanout-rate"):
    got = [r for r in rows if r["mode"] == mode]
    if not got:
        continue
    print(f"\n{mode}: median (per round)")
    by = {}
    for r in got:
        by.setdefault(r["variant"], {})[r["round"]] = r
    for key in ("deliveries_per_s", "server_cpu_per_delivery_us", "client_cpu_per_delivery_us", "latency_p99_ms"):
        line = f"  {key}:"
        for v in ("on", "off", "on+recover"):
            xs = [by.get(v, {})[k][key] for k in sorted(by.get(v, {}))]
            line += f"  {v} {med(xs):.2f} ({' / '.join(f'{x:.2f}' for x in xs)})"
        print(line)
        for a, b in (("on", "off"), ("on+recover", "on")):
            ratios = [by[a][k][key] / by[b][k][key] for k in sorted(by.get(a, {})) if k in by.get(b, {}) and by[b][k][key]]
            print(f"    {a}/{b} per round: {' / '.join(f'{x:.3f}' for x in ratios)}, median {med(ratios):.3f}")
    lost = sum(r["lost"] + r["reordered"] for r in got)
    print(f"  lost + reordered, all runs: {lost}; positioned deliveries: " +
          ", ".join(f"{v} {sum(r['positioned'] for r in got if r['variant'] == v)}" for v in ("on", "off", "on+recover")))
rec = [r for r in rows if r["mode"] == "recover"]
for broker in ("local", "redis"):
    got = [r for r in rec if r["variant"] == broker]
    if not got:
        continue
    print(f"\nrecover, {broker}: {got[0]['clients']} clients x {got[0]['missed_pushes']} missed pushes, median (per round)")
    for key in ("reply_p50_ms", "reply_p99_ms", "done_p50_ms", "done_p99_ms", "done_max_ms", "total_s", "server_cpu_per_client_us", "broker_cpu_per_client_us", "client_cpu_per_client_us"):
        xs = [r[key] for r in got if key in r]
        if xs:
            print(f"  {key}: {med(xs):.2f} ({' / '.join(f'{x:.2f}' for x in xs)})")
    print(f"  recovered {sum(r['recovered'] for r in got)}, complete {sum(r['complete'] for r in got)} of {sum(r['clients'] for r in got)}; missing {sum(r['missing'] for r in got)}, wrong {sum(r['wrong'] for r in got)}")
PY
