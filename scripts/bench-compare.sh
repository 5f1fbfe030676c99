#!/usr/bin/env bash
# Side-by-side benchmark: every scenario against synchub (a hub the bench starts itself) and
# against any other servers speaking the dialect, alternating A B C A B C … so that drift on a
# shared machine hits every server alike; prints the medians as a Markdown table.
#
# Usage: scripts/bench-compare.sh [-n RUNS] [-d DIALECT] [-s "SCENARIOS"] [-t] [NAME=ws://HOST:PORT@PID …]
#   -n  runs per scenario and server (default 3)
#   -d  dialect the clients speak (default relay)
#   -s  scenarios (default "writes rooms fanout conns catchup")
#   -t  also synchub-tls: the same self-started hub serving TLS (a self-signed certificate made
#       with openssl), driven over wss://
#   NAME=URL@PID  another server to compare with; its pid gives its CPU and memory figures.
# Extra bench options go in BENCH_ARGS, e.g. BENCH_ARGS="--duration 5".
# The raw JSON lines are kept in bench-results.jsonl at the top of the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
dialect=relay
scenarios="writes rooms fanout conns catchup"
tls=
while getopts "n:d:s:t" opt; do
  case $opt in
    n) runs=$OPTARG ;;
    d) dialect=$OPTARG ;;
    s) scenarios=$OPTARG ;;
    t) tls=1 ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
peers=("$@")

cargo build --release --locked --quiet
bin=target/release/synchub
out=bench-results.jsonl
: > "$out"
if [ -n "$tls" ]; then
  certs=$(mktemp -d)
  trap 'rm -rf "$certs"' EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -keyout "$certs/key.pem" -out "$certs/cert.pem" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE 2>/dev/null
fi

cpu_ticks() { # pid: its user + system CPU time so far, in clock ticks (0 once it is gone)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  # Fields 14 and 15; the command name (field 2) may hold spaces, so count from its end, as
  # the bench's own probe does.
  awk '{print $12 + $13}' <<<"${stat##*) }"
}

settle() { # pid: waits (up to 2 minutes) until the server is idle
  # A server that fell behind (relay-node under `rooms --rate 20`) goes on working through its
  # backlog after the bench has stopped; the next server's run would share the cores with it.
  local pid=$1 before after
  for ((t = 0; t < 240; t++)); do
    before=$(cpu_ticks "$pid")
    sleep 0.5
    after=$(cpu_ticks "$pid")
    # Under 2 ticks (20 ms) in half a second: idle.
    ((after - before < 2)) && return
  done
  echo "  pid $pid still busy after 2 minutes" >&2
}

run() { # name scenario [bench options]
  local name=$1 scenario=$2
  shift 2
  local line
  # shellcheck disable=SC2086
  line=$("$bin" bench "$scenario" --dialect "$dialect" ${BENCH_ARGS:-} "$@" 2>/dev/null | tail -n 1) || true
  printf '{"server":"%s","result":%s}\n' "$name" "${line:-null}" >> "$out"
  echo "  $name $scenario done" >&2
}

for scenario in $scenarios; do
  for ((i = 1; i <= runs; i++)); do
    run synchub "$scenario"
    if [ -n "$tls" ]; then
      SYNCHUB_SERVER_TLS_CERT=$certs/cert.pem SYNCHUB_SERVER_TLS_KEY=$certs/key.pem \
        run synchub-tls "$scenario" --ca "$certs/cert.pem"
    fi
    for peer in "${peers[@]}"; do
      name=${peer%%=*}
      spec=${peer#*=}
      run "$name" "$scenario" --url "${spec%@*}" --server-pid "${spec##*@}"
      settle "${spec##*@}"
    done
  done
done

python3 - "$out" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
servers = list(dict.fromkeys(r["server"] for r in rows))

def get(d, path):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d

figures = {
    "writes": [("acks/s", "acks_per_s", 0), ("ack p99 ms", "ack_latency_ms.p99", 1),
               ("server µs/ack", "server_cpu_us_per_ack", 1)],
    "rooms": [("offered/s", "offered_per_s", 0), ("acks/s", "acks_per_s", 0),
              ("ack p99 ms", "ack_latency_ms.p99", 1),
              ("delivery p99 ms", "delivery_latency_ms.p99", 1),
              ("server µs/ack", "server_cpu_us_per_ack", 1)],
    "fanout": [("deliveries/s", "deliveries_per_s", 0),
               ("delivery p99 ms", "delivery_latency_ms.p99", 1),
               ("server µs/delivery", "server_cpu_us_per_delivery", 2),
               ("missing", "missing", 0), ("duplicated", "duplicated", 0)],
    "conns": [("connects/s", "connects_per_s", 0), ("KiB/conn", "kib_per_connection", 1)],
    "catchup": [("changes/s", "changes_per_s", 0), ("complete", "complete", None)],
}

print("| scenario | figure | " + " | ".join(servers) + " |")
print("|---|---|" + "---|" * len(servers))
for scenario, figs in figures.items():
    results = [r for r in rows if r["result"] and r["result"].get("scenario") == scenario]
    if not results:
        continue
    for label, path, digits in figs:
        cells = []
        for s in servers:
            vals = [get(r["result"], path) for r in results if r["server"] == s]
            vals = [v for v in vals if v is not None]
            if not vals:
                cells.append("–")
            elif digits is None:
                cells.append(str(all(vals)).lower())
            else:
                cells.append(f"{statistics.median(vals):,.{digits}f}".replace(",", " "))
        print(f"| {scenario} | {label} | " + " | ".join(cells) + " |")
EOF
