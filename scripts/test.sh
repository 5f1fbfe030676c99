#!/usr/bin/env bash
# The whole test suite: installs what the tests need when it is missing, then runs them.
# Usage: ./scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v cc >/dev/null || need_apt+=(gcc)
# jemalloc, the hub's allocator, is built from source with make.
command -v make >/dev/null || need_apt+=(make)
command -v python3 >/dev/null || need_apt+=(python3)
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The TLS test of tests/interop makes its certificate with it.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# The dashboard test drives Debian's Chromium headless.
command -v chromium >/dev/null || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

# Rust: default-members covers the root package and actors/, so this runs every crate's tests.
cargo build --locked
cargo test --locked "$@"

# Real clients against the binary built above: the published SyncKit SDK, and the dashboard in
# headless Chromium (its screenshot lands in target/dashboard.png).
(
  cd tests/interop
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund
  fi
  node --test
)
