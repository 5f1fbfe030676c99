#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another, on the stable toolchain.
#   fuzz/run.sh [seconds per target, default 300] [target ...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(pocket_frames synckit_frames relay_frames pocket_merge synckit_merge relay_merge)
fi
python3 seeds.py
# `-s none`: no sanitizer, which would need a nightly compiler; `-a`: debug assertions, so an
# arithmetic overflow is a crash, not a silent wrap.
cargo fuzz build -s none -a
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${secs}s"
  if ! cargo fuzz run -s none -a "$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      2>&1 | grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)|panicked|SUMMARY|Test unit written'; then
    :
  fi
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "!! $t: crash inputs in fuzz/artifacts/$t"
    status=1
  fi
done
exit $status
