#!/usr/bin/env bash
# What --data-dir costs (issue 16), side by side with the memory broker: each comparison runs the
# two one after the other, alternating, so both see the same machine. Prints one JSON line per
# run (with the 1-minute load average first) for the BENCHMARKS.md section "Durable history".
#
#   bash benches/durable.sh              # 3 rounds, 10 s per publish run (about 6 minutes)
#   bash benches/durable.sh --runs 1 --seconds 3
#
# Rows: single publishes at 1,000/s (round trip p50/p99), batches of 100 from 16 and from 64
# publishers back to back (events/s), S1 of BENCHMARKS.md (1,000 SSE clients, 200 events at 50/s: server CPU per
# delivery), and a restart after kill -9 on a full default history (10,000 events).
# Loopback only; stops only the servers it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done

bin=target/release/ssegate
cargo build --release --locked -q
cargo bench --locked -q --bench durable --no-run 2>/dev/null
cargo bench --locked -q --bench loadgen --no-run 2>/dev/null

work=$(mktemp -d /tmp/ssegate-durable-bench.XXXXXX)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

load() { cut -d' ' -f1 /proc/loadavg; }
durable() { cargo bench --locked -q --bench durable -- "$@" 2>/dev/null | tail -n 1; }

# S1 against a server started here (with or without a data dir): the load generator measures the
# server's CPU through its PID.
s1() {
  local out="$work/server.out"
  : >"$out"
  "$bin" serve --listen 127.0.0.1:0 --demo false --max-connections 1500 "$@" >"$out" 2>/dev/null &
  server=$!
  for _ in $(seq 1 200); do grep -q '^listening on ' "$out" && break; sleep 0.05; done
  local url
  url=$(sed -n 's/^listening on //p' "$out")
  cargo bench --locked -q --bench loadgen -- --url "$url" --pid "$server" --target ssegate --transport sse \
    --clients 1000 --topics 1 --events 200 --rate 50 --drain-s 20 --connect-s 120 --retries 20 --self-cpu \
    2>/dev/null | tail -n 1
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

for run in $(seq 1 "$runs"); do
  for broker in memory data-dir; do
    dir=()
    if [ "$broker" = data-dir ]; then dir=(--data-dir "$work/rtt-$run"); fi
    echo "load $(load) $(durable rtt --rate 1000 --seconds "$seconds" "${dir[@]}")"
  done
  for concurrency in 16 64; do
    for broker in memory data-dir; do
      dir=()
      if [ "$broker" = data-dir ]; then dir=(--data-dir "$work/batch-$run-$concurrency"); fi
      echo "load $(load) $(durable batch --batch 100 --concurrency "$concurrency" --seconds "$seconds" "${dir[@]}")"
    done
  done
  for broker in memory data-dir; do
    dir=()
    if [ "$broker" = data-dir ]; then dir=(--data-dir "$work/s1-$run"); fi
    echo "load $(load) S1 $broker $(s1 "${dir[@]}")"
  done
  echo "load $(load) $(durable restart --events 10000 --data-dir "$work/restart-$run")"
done
