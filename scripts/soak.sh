#!/usr/bin/env bash
# A long write flood against a hub of its own, sampled every 5 s: the data directory's size,
# the hub's RSS, acks per second and the slowest ack of the last second.
#
# Usage: scripts/soak.sh NAME SECONDS BENCH-ARGS...
#   scripts/soak.sh writes 1800 writes --in-flight 16 --subscribers 0 --keys 200 --pad-bytes 4000
#   scripts/soak.sh rooms 1800 rooms --rooms 10 --clients 5 --rate 20 --keys 200 --pad-bytes 4000
#
# Before the flood it runs the same load for 2 s and lets the hub go idle (100 s), the level the
# hub's memory after the flood is compared with.
# Writes target/soak/NAME.tsv (one row per sample) and prints a summary: the largest data
# directory and RSS, the growth of the data directory over the last 20 minutes of the run (or
# its second half, for shorter runs) and the bench's own report. SYNCHUB is the binary to run
# (default target/release/synchub, built when missing); PORT the hub's port (default 18480).
set -euo pipefail
cd "$(dirname "$0")/.."

name=${1:?name}
seconds=${2:?seconds}
shift 2
bin=${SYNCHUB:-target/release/synchub}
port=${PORT:-18480}
[ -x "$bin" ] || cargo build --release --locked
out=target/soak
mkdir -p "$out"
data=$(mktemp -d "${TMPDIR:-/tmp}/synchub-soak-$name.XXXXXX")
trap 'kill "$hub" 2>/dev/null || true; rm -rf "$data"' EXIT

# What `synchub bench` gives a hub it starts itself: the per-client limits lifted.
set -a
# shellcheck source=../bench/hub.env
. bench/hub.env
set +a
SYNCHUB_STORAGE_PATH="$data" \
SYNCHUB_SERVER_BIND="127.0.0.1:$port" \
RUST_LOG=warn "$bin" serve >"$out/$name.hub.log" 2>&1 &
hub=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
rss_mb() { awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$hub/status"; }
rss_cold=$(rss_mb)
# A hub that has never written holds little of its store's working set (caches and buffers
# are allocated at open but touched by the first writes), so the
# level the flood is compared with is that of a hub which has served a short burst of the same
# load and gone idle again (its rooms stopped, its store reopened); the cold figure is printed
# too.
"$bin" bench "$@" --url "ws://127.0.0.1:$port" --duration 2 --warmup 0 >/dev/null 2>&1
sleep 100
rss_before=$(rss_mb)

"$bin" bench "$@" --url "ws://127.0.0.1:$port" --server-pid "$hub" --duration "$seconds" \
  >"$out/$name.bench.txt" 2>"$out/$name.bench.log" &
bench=$!

printf 't_s\tdata_mb\trss_mb\tacks_per_s\tslowest_ack_ms\n' >"$out/$name.tsv"
start=$(date +%s)
while kill -0 "$bench" 2>/dev/null; do
  sleep 5
  kill -0 "$hub" 2>/dev/null || { echo "the hub exited" >&2; exit 1; }
  t=$(($(date +%s) - start))
  # The store deletes files while du walks the directory, which du reports as an error.
  data_kb=$(du -sk "$data" 2>/dev/null | cut -f1 || true)
  rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$hub/status")
  # The progress line is rewritten with carriage returns: its latest state is the last one.
  last=$(tr '\r' '\n' <"$out/$name.bench.log" | grep ' acks ' | tail -1 || true)
  acks=$(sed -n 's/.* acks *\([0-9]*\)\/s.*/\1/p' <<<"$last")
  slowest=$(sed -n 's/.*slowest *\([0-9.]*\) ms.*/\1/p' <<<"$last")
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$((data_kb / 1024))" "$((rss_kb / 1024))" \
    "${acks:-0}" "${slowest:-0}" >>"$out/$name.tsv"
done
wait "$bench" || true
# After the flood: the hub hands freed memory back every 5 s, its rooms compact and stop once
# idle for server.room_idle_timeout_s (60 s), and it reopens its store once that has gone
# unused for 30 s (so about 100 s after the flood).
sleep 15
rss_after=$(rss_mb)
sleep 75
rss_idle=$(rss_mb)
sleep 90
rss_rest=$(rss_mb)

awk -F'\t' -v total="$seconds" '
  NR == 1 { next }
  { t[NR] = $1; d[NR] = $2; r[NR] = $3; s[NR] = $5; n = NR
    if ($2 > dmax) dmax = $2; if ($3 > rmax) rmax = $3; if ($5 > smax) smax = $5 }
  END {
    from = total > 1500 ? total - 1200 : total / 2
    for (i = 2; i <= n; i++) if (t[i] >= from) { first = i; break }
    if (!first) first = n
    lmin = d[first]; lmax = d[first]
    for (i = first; i <= n; i++) { if (d[i] < lmin) lmin = d[i]; if (d[i] > lmax) lmax = d[i] }
    printf "samples %d; data dir max %d MB; RSS max %d MB; slowest ack of any second %.1f ms\n",
      n - 1, dmax, rmax, smax
    printf "from %d s on: data dir %d MB at %d s, %d MB at the end (min %d, max %d)\n",
      from, d[first], t[first], d[n], lmin, lmax
  }' "$out/$name.tsv"
echo "RSS at start ${rss_cold} MB; after a 2 s burst and 100 s idle ${rss_before} MB"
echo "RSS before the flood ${rss_before} MB, 15 s after it ${rss_after} MB, 90 s after it ${rss_idle} MB, 180 s after it ${rss_rest} MB"
grep '^  ' "$out/$name.bench.txt" || true
