#!/usr/bin/env bash
# A hub killed under load and started again, its clients all coming back at once: how long they
# wait for their rooms, and what the hub's threads and memory do meanwhile.
#
# Usage: scripts/restart.sh [RUNS]   (default 3)
# Each run, on a fresh data directory:
#   1. fills 200 rooms: `synchub bench rooms` at 2 writes/s per client for 60 s, 1 000-byte
#      changes over 200 cells per client (about 140 MB written);
#   2. kills the hub with SIGKILL and starts it again on the same directory;
#   3. joins the same 1 000 clients to the same rooms all at once (`--rooms-of`,
#      `--concurrency 1000`), each room loading when its first client arrives, then writes at
#      1/s for 5 s;
#   4. samples the hub's threads and RSS every 0.1 s from its start.
# Prints one line per run: the bench's join latency (from asking to join to the answer), the
# time until every client had joined, the most threads and the largest RSS seen, and the ack
# p99 of the writes after. SYNCHUB is the binary (default target/release/synchub, built when
# missing); PORT the hub's port (default 18490); FILL the seconds of step 1. COLD=1 empties the
# kernel's page cache before the restart (root only), as after a reboot: the loads then read
# from the disk.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
bin=${SYNCHUB:-target/release/synchub}
port=${PORT:-18490}
fill=${FILL:-60}
[ -x "$bin" ] || cargo build --release --locked
set -a
# shellcheck source=../bench/hub.env
. bench/hub.env
set +a
work=$(mktemp -d "${TMPDIR:-/tmp}/synchub-restart.XXXXXX")
hub=
trap 'kill -9 $hub 2>/dev/null || true; rm -rf "$work"' EXIT

start_hub() {
  SYNCHUB_STORAGE_PATH="$work/data" SYNCHUB_SERVER_BIND="127.0.0.1:$port" \
    RUST_LOG=warn "$bin" serve >>"$work/hub.log" 2>&1 &
  hub=$!
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the hub did not start; its log:" >&2
  cat "$work/hub.log" >&2
  exit 1
}

figure() { # file expression: one figure of the bench's report
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"
}

for ((run = 1; run <= runs; run++)); do
  rm -rf "$work/data"
  start_hub
  "$bin" bench rooms --rooms 200 --clients 5 --rate 2 --keys 200 --pad-bytes 1000 \
    --duration "$fill" --url "ws://127.0.0.1:$port" --server-pid "$hub" 2>/dev/null |
    tail -n 1 >"$work/fill.json"
  rooms_of=$(figure "$work/fill.json" "r['run_id']")
  kill -9 "$hub"
  wait "$hub" 2>/dev/null || true
  size=$(du -sm "$work/data" | cut -f1)
  if [ -n "${COLD:-}" ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
  fi

  start_hub
  (
    while [ -d "/proc/$hub" ]; do
      echo "$(ls "/proc/$hub/task" 2>/dev/null | wc -l) $(awk '/VmRSS/ {print $2}' "/proc/$hub/status" 2>/dev/null)"
      sleep 0.1
    done
  ) >"$work/samples" 2>/dev/null &
  sampler=$!
  "$bin" bench rooms --rooms 200 --clients 5 --rate 1 --warmup 1 --duration 5 \
    --concurrency 1000 --rooms-of "$rooms_of" --url "ws://127.0.0.1:$port" \
    --server-pid "$hub" 2>/dev/null | tail -n 1 >"$work/rejoin.json"
  kill "$hub"
  wait "$hub" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  threads=$(sort -n "$work/samples" | tail -n 1 | cut -d' ' -f1)
  rss=$(sort -k2 -n "$work/samples" | tail -n 1 | cut -d' ' -f2)
  figure "$work/rejoin.json" "'run $run: $size MB of data; join p50 %.0f ms, mean %.0f ms, max %.0f ms; all joined in %.1f s; at most $threads threads, RSS $((rss / 1024)) MB; ack p99 after %.1f ms; errors %d' % (r['join_latency_ms']['p50'], r['join_latency_ms']['mean'], r['join_latency_ms']['max'], r['setup_secs'], r['ack_latency_ms']['p99'], r['errors'])"
done
