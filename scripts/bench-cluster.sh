#!/usr/bin/env bash
# Cluster benchmark on one machine: a fresh redis-server and 1, 2 or 3 synchub nodes on
# loopback ports, the bench spreading its clients over the nodes round-robin. Each node count
# runs RUNS times per scenario, alternating with the others so drift hits them alike; prints
# the medians as a Markdown table. Server CPU and memory are summed over the nodes and Redis.
#
# Usage: scripts/bench-cluster.sh [-n RUNS] [-d DIALECT] [-s "SCENARIOS"] [-c "NODE COUNTS"]
#   -n  runs per scenario and node count (default 3)
#   -d  dialect the clients speak (default relay)
#   -s  scenarios (default "writes rooms fanout")
#   -c  node counts (default "1 2 3"); 0 is a single node without Redis, for reference
# Extra bench options go in BENCH_ARGS. The raw JSON lines go to bench-cluster.jsonl.
# Ports 7400-7403 must be free; the nodes' data and logs go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
dialect=relay
scenarios="writes rooms fanout"
counts="1 2 3"
while getopts "n:d:s:c:" opt; do
  case $opt in
    n) runs=$OPTARG ;;
    d) dialect=$OPTARG ;;
    s) scenarios=$OPTARG ;;
    c) counts=$OPTARG ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --quiet
bin=$PWD/target/release/synchub
out=bench-cluster.jsonl
: > "$out"
work=$(mktemp -d)
redis_port=7400
pids=$work/pids

stop_all() {
  [[ -f $pids ]] || return 0
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$pids"
  while read -r pid; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  done <"$pids"
  rm -f "$pids"
}
trap 'stop_all; rm -rf "$work"' EXIT

# start N: a fresh Redis (unless N is 0) and N nodes (one without Redis for 0); prints
# "--url … --server-pid …" for the bench.
start() {
  local n=$1 args="" i port
  rm -rf "${work:?}"/n* "$work"/*.aof "$work"/appendonlydir
  if ((n > 0)); then
    # The persistence the README asks of a production Redis: AOF, fsync every second.
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes \
      --appendfsync everysec --dir "$work" --maxmemory-policy noeviction \
      >"$work/redis.log" 2>&1 &
    echo $! >>"$pids"
    # Redis's CPU and memory count as the cluster's.
    args="--server-pid $!"
    until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
  fi
  for ((i = 1; i <= (n > 0 ? n : 1); i++)); do
    port=$((redis_port + i))
    mkdir -p "$work/n$i"
    (
      cd "$work/n$i"
      export SYNCHUB_SERVER_BIND=127.0.0.1:$port SYNCHUB_STORAGE_PATH=$work/n$i/db
      export SYNCHUB_AUTH_REQUIRED=false RUST_LOG=error
      if ((n > 0)); then export SYNCHUB_CLUSTER_REDIS_URL=redis://127.0.0.1:$redis_port; fi
      exec "$bin" serve >"$work/n$i.log" 2>&1
    ) &
    echo $! >>"$pids"
    args="$args --url ws://127.0.0.1:$port --server-pid $!"
  done
  for ((i = 1; i <= (n > 0 ? n : 1); i++)); do
    port=$((redis_port + i))
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
  done
  echo "$args"
}

for scenario in $scenarios; do
  for ((r = 1; r <= runs; r++)); do
    for n in $counts; do
      args=$(start "$n")
      # shellcheck disable=SC2086
      line=$("$bin" bench "$scenario" --dialect "$dialect" ${BENCH_ARGS:-} $args 2>/dev/null | tail -n 1) || true
      printf '{"nodes":%s,"result":%s}\n' "$n" "${line:-null}" >> "$out"
      echo "  $scenario with $n node(s) done" >&2
      stop_all
    done
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def get(d, path):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d

figures = {
    "writes": [("acks/s", "acks_per_s", 0), ("ack p99 ms", "ack_latency_ms.p99", 1),
               ("server µs/ack", "server_cpu_us_per_ack", 1)],
    "rooms": [("acks/s", "acks_per_s", 0), ("ack p99 ms", "ack_latency_ms.p99", 1),
              ("delivery p99 ms", "delivery_latency_ms.p99", 1),
              ("server µs/ack", "server_cpu_us_per_ack", 1)],
    "fanout": [("deliveries/s", "deliveries_per_s", 0),
               ("delivery p99 ms", "delivery_latency_ms.p99", 1),
               ("missing", "missing", 0), ("duplicated", "duplicated", 0)],
}
for scenario in dict.fromkeys(get(r, "result.scenario") for r in rows if r["result"]):
    cols = figures.get(scenario, [])
    print(f"\n{scenario}\n")
    print("| nodes | " + " | ".join(c[0] for c in cols) + " | Redis round trips/change |")
    print("|---" * (len(cols) + 2) + "|")
    for n in dict.fromkeys(r["nodes"] for r in rows):
        mine = [r["result"] for r in rows if r["nodes"] == n and r["result"]
                and get(r, "result.scenario") == scenario]
        if not mine:
            continue
        cells = []
        for _, path, digits in cols + [("", "cluster.redis_round_trips_per_change", 2)]:
            vals = [v for v in (get(m, path) for m in mine) if isinstance(v, (int, float))]
            cells.append(f"{statistics.median(vals):,.{digits}f}" if vals else "–")
        label = "1 (no Redis)" if n == 0 else str(n)
        print(f"| {label} | " + " | ".join(cells) + " |")
PY
