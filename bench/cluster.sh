#!/usr/bin/env bash
# Issue 10's cluster measurements (BENCHMARKS.md, "Cluster (issue 10)"), side by side in one
# run: starts its own redis-server and nats-server on free ports, fresh ws-gateway nodes for
# every measure, runs each scenario ROUNDS times (the broker that goes first rotating), prints
# one line per result and at the end a table of medians; stops everything it started on exit.
#
# Usage: bench/cluster.sh [ROUNDS=3] [SCENARIO...]      scenarios: hop fanout push scale
#   hop     push-to-delivery latency, 1k subscribers x 100 pushes at 20/s: local, redis, nats on
#           one node, and redis, nats with the subscribers on a second node (push to A, subs on B);
#           then the same with 1 subscriber x 200 pushes (the hop alone, without the fan-out)
#   fanout  18k subscribers x 50 pushes flat out: one node (local, redis, nats) vs 3 nodes x 6k
#           (redis, nats), pushes to the first node; then 20 pushes at 4/s (a rate every set-up
#           keeps up with, so that no set-up coalesces frames into fewer writes than another);
#           and redis 3+1: the 3 x 6k nodes plus a fourth without subscribers taking the pushes
#   push    POST /push over 50 keep-alive connections for 5 s, no subscriber: local, redis, nats
#   scale   SCALE_NODES nodes x SCALE_PER_NODE subscribers (default 5 x 15000), held by as many
#           client processes, one push to the first node (redis, nats): time to the last
#           delivery, loss, RSS per connection per node
# Environment: SCALE_NODES, SCALE_PER_NODE (at most ~17000: a node and a generator process each
# hold one open file per connection, under the limit of 20000), FANOUT_SUBSCRIBERS (18000).
# A scale run also prints the machine's memory in use at its peak; the end, the nodes' warnings.
# Raw JSON lines: target/bench/cluster.jsonl (overwritten).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
shift || true
SCENARIOS=${*:-hop fanout push scale}
SCALE_NODES=${SCALE_NODES:-5}
SCALE_PER_NODE=${SCALE_PER_NODE:-15000}
FANOUT_SUBSCRIBERS=${FANOUT_SUBSCRIBERS:-18000}

cargo build --release -p ws-gateway -p ws-gateway-bench --quiet
GW=target/release/ws-gateway
BENCH=target/release/ws-gateway-bench
OUT=target/bench
mkdir -p "$OUT"
: > "$OUT/cluster.jsonl"
WORK=$(mktemp -d /tmp/ws-cluster.XXXXXX)

BROKER_PIDS=()                           # the broker servers this script started
NODE_PIDS=() NODE_ADDRS=() NODE_STATS=() # the nodes of the current measure
WATCH_PID=""                             # the memory watch of a scale run
cleanup() {
  local status=$? pid
  if [ "$status" -ne 0 ] && [ -s "$WORK/nodes.log" ]; then
    echo "failed; the nodes' last log lines:" >&2
    grep -v ' INFO ' "$WORK/nodes.log" | tail -n 20 >&2 || true
  fi
  for pid in $WATCH_PID "${NODE_PIDS[@]}" "${BROKER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in $WATCH_PID "${NODE_PIDS[@]}" "${BROKER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N free TCP ports on 127.0.0.1, below the ephemeral range (so no client socket takes them).
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
want, found = int(sys.argv[1]), []
for port in random.sample(range(20000, 32000), 2000):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        found.append(port)
    except OSError:
        pass
    finally:
        s.close()
    if len(found) == want:
        break
print(" ".join(map(str, found)))
PY
}

wait_tcp() { # wait_tcp PORT: until something accepts on it (10 s at most)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

read -r REDIS_PORT NATS_PORT < <(free_ports 2)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 10000 > "$WORK/redis.log" 2>&1 &
REDIS_PID=$!
BROKER_PIDS+=("$REDIS_PID")
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" --store_dir "$WORK/nats" > "$WORK/nats.log" 2>&1 &
NATS_PID=$!
BROKER_PIDS+=("$NATS_PID")
wait_tcp "$REDIS_PORT"
wait_tcp "$NATS_PORT"
echo "redis-server pid $REDIS_PID on :$REDIS_PORT, nats-server pid $NATS_PID on :$NATS_PORT" >&2

# Node configurations: bench/gateway.toml's limits plus a [broker]. The one-node 18k fan-out
# needs 18k connections under the 20000 open files: max_connections 18500 with 512 handshakes
# per listener instead of 1024 (the gateway would otherwise lower max_connections to 17792).
write_config() { # write_config FILE KIND MAX_CONNECTIONS MAX_HANDSHAKES
  {
    printf '[limits]\nmax_connections = %s\nmax_handshakes = %s\n' "$3" "$4"
    case $2 in
      redis) printf '[broker]\nkind = "redis"\nurl = "redis://127.0.0.1:%s/"\n' "$REDIS_PORT" ;;
      nats) printf '[broker]\nkind = "nats"\nurl = "nats://127.0.0.1:%s"\n' "$NATS_PORT" ;;
      local) printf '[broker]\nkind = "local"\n' ;;
    esac
  } > "$1"
}
for kind in local redis nats; do
  write_config "$WORK/$kind.toml" "$kind" 17500 1024
  write_config "$WORK/$kind-18k.toml" "$kind" 18500 512
done
broker_pid() { case $1 in redis) echo "$REDIS_PID" ;; nats) echo "$NATS_PID" ;; *) echo "" ;; esac; }

start_nodes() { # start_nodes CONFIG COUNT: fresh nodes; fills NODE_PIDS, NODE_ADDRS, NODE_STATS
  NODE_PIDS=() NODE_ADDRS=() NODE_STATS=()
  local ports i
  read -r -a ports < <(free_ports $(($2 * 2)))
  for i in $(seq 0 $(($2 - 1))); do
    "$GW" --config "$1" --listen "127.0.0.1:${ports[2 * i]}" \
      --stat-listen "127.0.0.1:${ports[2 * i + 1]}" 2>> "$WORK/nodes.log" &
    NODE_PIDS+=("$!")
    NODE_ADDRS+=("127.0.0.1:${ports[2 * i]}")
    NODE_STATS+=("127.0.0.1:${ports[2 * i + 1]}")
  done
  for i in $(seq 0 $(($2 - 1))); do
    # The cluster view answers once the node reads the broker (the local one: at once).
    for _ in $(seq 100); do
      curl -sf "http://${NODE_STATS[i]}/stat?scope=cluster" > /dev/null && break
      sleep 0.1
    done
  done
}

stop_nodes() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  NODE_PIDS=()
}

join() { local IFS=,; echo "$*"; }

run() { # run LABEL MODE ARGS...: one measure, one line on stdout, the JSON kept
  local label=$1 mode=$2 json
  shift 2
  json=$("$BENCH" "$mode" "$@" | tail -n 1)
  python3 bench/cluster_table.py line "$label" "$json" "$OUT/cluster.jsonl"
}

quiet_check() { # the machine's busy share over one second, and who is busy
  local a b
  read -r -a a < <(head -n 1 /proc/stat)
  sleep 1
  read -r -a b < <(head -n 1 /proc/stat)
  local total=0 idle=$((b[4] + b[5] - a[4] - a[5])) i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo "machine busy $((100 - 100 * idle / (total > 0 ? total : 1)))% over 1 s, load $(cut -d' ' -f1-3 /proc/loadavg);" \
    "busiest: $(top -b -n 2 -d 0.5 -o %CPU | awk '/^ *PID/ { block++; next } block == 2 && NF > 11 { print $9 "% " $12 }' | head -n 3 | paste -sd ',')" >&2
}

rotate() { # rotate ROUND WORDS...: the words, shifted by ROUND
  local round=$1
  shift
  local words=("$@") n=$# i
  for i in $(seq 0 $((n - 1))); do echo "${words[$(((i + round) % n))]}"; done
}

hop() { # hop ROUND
  local setup kind nodes app broker
  for setup in $(rotate "$1" local-1 redis-1 nats-1 redis-2 nats-2); do
    kind=${setup%-*} nodes=${setup#*-} app="hop$1$kind$nodes"
    broker=$(broker_pid "$kind")
    start_nodes "$WORK/$kind.toml" "$nodes"
    # Pushes to the first node; the subscribers on the last (the same one when alone).
    run "hop/$kind/$nodes" fanout --addr "${NODE_ADDRS[0]}" --addrs "${NODE_ADDRS[-1]}" \
      --stat-addrs "${NODE_STATS[-1]}" --pids "$(join "${NODE_PIDS[@]}")" \
      ${broker:+--broker-pid "$broker"} --subscribers 1000 --pushes 100 --rate 20 --app "$app"
    run "hop1/$kind/$nodes" fanout --addr "${NODE_ADDRS[0]}" --addrs "${NODE_ADDRS[-1]}" \
      --stat-addrs "${NODE_STATS[-1]}" --pids "$(join "${NODE_PIDS[@]}")" \
      ${broker:+--broker-pid "$broker"} --subscribers 1 --pushes 200 --rate 20 --app "${app}one"
    stop_nodes
  done
}

fanout() { # fanout ROUND
  local setup kind nodes app broker config
  for setup in $(rotate "$1" local-1 redis-1 nats-1 redis-3 nats-3 redis-3+1); do
    kind=${setup%-*} nodes=${setup#*-} app="fan$1$kind${nodes/+/i}"
    broker=$(broker_pid "$kind")
    if [ "$nodes" = 1 ]; then config="$WORK/$kind-18k.toml"; else config="$WORK/$kind.toml"; fi
    if [ "$nodes" = 3+1 ]; then
      # 3 nodes x 6k and a fourth node without subscribers that takes the pushes (its CPU is
      # counted too): does the pushed node's own fan-out slow the pushes down?
      start_nodes "$config" 4
      run "fanout/$kind/$nodes" fanout --addr "${NODE_ADDRS[0]}" \
        --addrs "$(join "${NODE_ADDRS[@]:1}")" --stat-addrs "$(join "${NODE_STATS[@]:1}")" \
        --pids "$(join "${NODE_PIDS[@]}")" --broker-pid "$broker" \
        --subscribers "$FANOUT_SUBSCRIBERS" --pushes 50 --app "$app"
      stop_nodes
      continue
    fi
    start_nodes "$config" "$nodes"
    run "fanout/$kind/$nodes" fanout --addr "${NODE_ADDRS[0]}" --addrs "$(join "${NODE_ADDRS[@]}")" \
      --stat-addrs "$(join "${NODE_STATS[@]}")" --pids "$(join "${NODE_PIDS[@]}")" \
      ${broker:+--broker-pid "$broker"} --subscribers "$FANOUT_SUBSCRIBERS" --pushes 50 --app "$app"
    run "fanrate/$kind/$nodes" fanout --addr "${NODE_ADDRS[0]}" --addrs "$(join "${NODE_ADDRS[@]}")" \
      --stat-addrs "$(join "${NODE_STATS[@]}")" --pids "$(join "${NODE_PIDS[@]}")" \
      ${broker:+--broker-pid "$broker"} --subscribers "$FANOUT_SUBSCRIBERS" --pushes 20 --rate 4 \
      --app "${app}r"
    stop_nodes
  done
}

push() { # push ROUND
  local kind broker
  for kind in $(rotate "$1" local redis nats); do
    broker=$(broker_pid "$kind")
    start_nodes "$WORK/$kind.toml" 1
    run "push/$kind/1" push --addr "${NODE_ADDRS[0]}" --pids "${NODE_PIDS[0]}" \
      ${broker:+--broker-pid "$broker"} --connections 50 --seconds 5 --app "push$1$kind"
    stop_nodes
  done
}

mem_available_kib() { awk '/^MemAvailable:/ { print $2 }' /proc/meminfo; }

scale() { # scale ROUND
  local kind broker total=$((SCALE_NODES * SCALE_PER_NODE)) before lowest
  for kind in $(rotate "$1" redis nats); do
    broker=$(broker_pid "$kind")
    before=$(mem_available_kib)
    # The machine's memory at its fullest: nodes, clients and the kernel's sockets together.
    mem_available_kib > "$WORK/lowest"
    (
      set +e
      while sleep 0.5; do
        now=$(mem_available_kib)
        [ "$now" -lt "$(cat "$WORK/lowest")" ] && echo "$now" > "$WORK/lowest"
      done
    ) &
    WATCH_PID=$!
    start_nodes "$WORK/$kind.toml" "$SCALE_NODES"
    run "scale/$kind/$SCALE_NODES" fanout --addr "${NODE_ADDRS[0]}" --addrs "$(join "${NODE_ADDRS[@]}")" \
      --stat-addrs "$(join "${NODE_STATS[@]}")" --pids "$(join "${NODE_PIDS[@]}")" \
      --broker-pid "$broker" --subscribers "$total" --pushes 1 --procs "$SCALE_NODES" \
      --app "scale$1$kind"
    stop_nodes
    kill "$WATCH_PID"
    wait "$WATCH_PID" 2>/dev/null || true
    WATCH_PID=""
    lowest=$(cat "$WORK/lowest")
    echo "scale  $kind: machine memory in use at the peak: $(((before - lowest) / 1024)) MiB more than before" \
      "($(((before - lowest) * 1024 / total)) B per connection, both ends and the kernel's share)"
  done
}

for scenario in $SCENARIOS; do
  case $scenario in
    hop | fanout | push | scale) ;;
    *) echo "unknown scenario $scenario (hop, fanout, push, scale)" >&2; exit 2 ;;
  esac
done
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    quiet_check
    echo "round $round: $scenario" >&2
    "$scenario" "$round"
  done
done
python3 bench/cluster_table.py table "$OUT/cluster.jsonl"
# Anything the nodes complained about (their logs go away with the work directory).
echo
echo "nodes' warnings and errors: $(grep -c -E ' (WARN|ERROR) ' "$WORK/nodes.log" || true)"
grep -E ' (WARN|ERROR) ' "$WORK/nodes.log" | sed -E 's/^[^ ]+ +//; s/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -n 10 || true
