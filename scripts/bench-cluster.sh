#!/usr/bin/env bash
# Cluster benchmark on one machine: a fresh redis-server and 1, 2 or 3 synchub nodes on
# loopback ports, the bench spreading its clients over the nodes round-robin. Each node count
# runs RUNS times per scenario, alternating with the others so drift hits them alike; prints
# the medians as a Markdown table. Server CPU and memory are summed over the nodes and Redis.
#
# Usage: scripts/bench-cluster.sh [-n RUNS] [-d DIALECT] [-s "SCENARIOS"] [-c "NODE COUNTS"]
#                                 [-b "BINARIES"]
#   -n  runs per scenario and node count (default 3)
#   -d  dialect the clients speak (default relay)
#   -s  scenarios (default "writes rooms fanout")
#   -c  node counts (default "1 2 3"); 0 is a single node without Redis, for reference
#   -b  synchub binaries to compare, alternating in every round (default: this tree's release
#       build); the table then has a row per binary and node count
#   -r  the Redis the nodes order through: "single" (default), "cluster" (a Redis Cluster of
#       three primaries, no replicas), or "both", alternating; the table then has a row per kind
# Extra bench options go in BENCH_ARGS. The raw JSON lines go to bench-cluster.jsonl.
# Ports 7400-7403 and 7410-7412 (with their cluster bus ports, +10000) must be free; the
# nodes' data and logs go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=3
dialect=relay
scenarios="writes rooms fanout"
counts="1 2 3"
bins=""
redises=single
while getopts "n:d:s:c:b:r:" opt; do
  case $opt in
    n) runs=$OPTARG ;;
    d) dialect=$OPTARG ;;
    s) scenarios=$OPTARG ;;
    c) counts=$OPTARG ;;
    b) bins=$OPTARG ;;
    r) redises=$OPTARG ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
  esac
done
[[ $redises == both ]] && redises="single cluster"

if [[ -z $bins ]]; then
  cargo build --release --locked --quiet
  bins=$PWD/target/release/synchub
fi
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

# start N: a fresh Redis of kind $redis (unless N is 0) and N nodes (one without Redis for 0);
# prints "--url … --server-pid …" for the bench.
start() {
  local n=$1 args="" i port url="" seeds=""
  rm -rf "${work:?}"/n* "$work"/r* "$work"/*.aof "$work"/appendonlydir
  if ((n > 0)) && [[ $redis == single ]]; then
    # The persistence the README asks of a production Redis: AOF, fsync every second.
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes \
      --appendfsync everysec --dir "$work" --maxmemory-policy noeviction \
      >"$work/redis.log" 2>&1 &
    echo $! >>"$pids"
    # Redis's CPU and memory count as the cluster's.
    args="--server-pid $!"
    until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
    url=redis://127.0.0.1:$redis_port
  elif ((n > 0)); then
    for port in 7410 7411 7412; do
      mkdir -p "$work/r$port"
      redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$work/r$port/nodes.conf" --save "" --appendonly yes \
        --appendfsync everysec --dir "$work/r$port" --maxmemory-policy noeviction \
        >"$work/r$port/redis.log" 2>&1 &
      echo $! >>"$pids"
      args="$args --server-pid $!"
      seeds="$seeds,127.0.0.1:$port"
    done
    for port in 7410 7411 7412; do
      until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    done
    redis-cli --cluster create 127.0.0.1:7410 127.0.0.1:7411 127.0.0.1:7412 \
      --cluster-replicas 0 --cluster-yes >"$work/create.log" 2>&1
    for port in 7410 7411 7412; do
      until redis-cli -p "$port" cluster info 2>/dev/null | grep -q "cluster_state:ok"; do
        sleep 0.1
      done
    done
    url=redis+cluster://${seeds#,}
  fi
  for ((i = 1; i <= (n > 0 ? n : 1); i++)); do
    port=$((redis_port + i))
    mkdir -p "$work/n$i"
    (
      cd "$work/n$i"
      export SYNCHUB_SERVER_BIND=127.0.0.1:$port SYNCHUB_STORAGE_PATH=$work/n$i/db
      export RUST_LOG=error
      # What `synchub bench` gives a hub it starts itself: the per-client limits lifted.
      set -a
      # shellcheck source=../bench/hub.env
      . "$root/bench/hub.env"
      set +a
      if [[ -n $url ]]; then export SYNCHUB_CLUSTER_REDIS_URL=$url; fi
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
      for redis in $redises; do
        # Without Redis there is one kind only.
        if ((n == 0)) && [[ $redis != "${redises%% *}" ]]; then continue; fi
        for bin in $bins; do
          args=$(start "$n")
          # shellcheck disable=SC2086
          line=$("$bin" bench "$scenario" --dialect "$dialect" ${BENCH_ARGS:-} $args 2>/dev/null | tail -n 1) || true
          kind=$redis
          ((n == 0)) && kind=none
          printf '{"bin":"%s","redis":"%s","nodes":%s,"result":%s}\n' "$(basename "$bin")" \
            "$kind" "$n" "${line:-null}" >> "$out"
          echo "  $scenario with $n node(s), $kind Redis, $(basename "$bin") done" >&2
          stop_all
        done
      done
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
    several = len(dict.fromkeys(r["bin"] for r in rows)) > 1
    print(("| binary " if several else "") + "| nodes | Redis | " + " | ".join(c[0] for c in cols)
          + " | Redis round trips/change |")
    print("|---" * (len(cols) + 3 + several) + "|")
    for b, n, k in dict.fromkeys((r["bin"], r["nodes"], r.get("redis", "single")) for r in rows):
        mine = [r["result"] for r in rows if r["nodes"] == n and r["bin"] == b and r["result"]
                and r.get("redis", "single") == k and get(r, "result.scenario") == scenario]
        if not mine:
            continue
        cells = []
        for _, path, digits in cols + [("", "cluster.redis_round_trips_per_change", 2)]:
            vals = [v for v in (get(m, path) for m in mine) if isinstance(v, (int, float))]
            cells.append(f"{statistics.median(vals):,.{digits}f}" if vals else "–")
        label, kind = ("1", "none") if n == 0 else (str(n), {"single": "1 Redis",
                       "cluster": "Redis Cluster (3 primaries)"}.get(k, k))
        print((f"| {b} " if several else "") + f"| {label} | {kind} | " + " | ".join(cells) + " |")
PY
