#!/usr/bin/env bash
# Two ssegate builds side by side: the scenarios of BENCHMARKS.md (S1-S5 by default) against
# binary A and binary B, alternating A, B, B, A per round so that drift in the machine's load
# falls on both. Prints one line per run: scenario, which binary, CPU µs per delivery, p99 ms.
#   bash benches/ab.sh OLD_BIN NEW_BIN [ROUNDS] [SCENARIOS...]   e.g. ... 2 S1 S4
# Settings for B only, as the environment variables every flag also reads:
# B_ENV="SSEGATE_DATA_DIR=/tmp/x" (A gets none). Loopback only; each run starts its own server on
# a free port and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/peers/lib.sh
a=$1 b=$2 rounds=${3:-1}
shift $(( $# >= 3 ? 3 : $# ))
scenarios=("${@:-S1 S2 S3 S4 S5}")
read -r -a scenarios <<<"${scenarios[*]}"
loadgen=${LOADGEN_BIN:-$(build_bench loadgen)}
args_of() {
  case $1 in
    S1) echo "--transport sse --clients 1000 --topics 1 --events 200 --rate 50 --drain-s 20" ;;
    S2) echo "--transport sse --clients 10000 --topics 1 --events 100 --rate 5 --drain-s 20" ;;
    S3) echo "--transport sse --clients 10000 --topics 1 --events 1000 --rate 100 --drain-s 150" ;;
    S4) echo "--transport sse --clients 10000 --topics 100 --events 2000 --rate 200 --drain-s 20" ;;
    S5) echo "--transport ws --clients 10000 --topics 1 --events 100 --rate 5 --drain-s 20" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}
run() { # scenario label bin env
  local line
  # shellcheck disable=SC2046,SC2086
  line=$(env $4 "$loadgen" --bin "$3" $(args_of "$1") --connect-s 120 --retries 20 2>/dev/null | tail -n 1) || true
  printf '%s %s cpu_us=%s p99_ms=%s\n' "$1" "$2" \
    "$(jq -r '.cpu_us_per_delivery' <<<"$line" 2>/dev/null || echo '?')" \
    "$(jq -r '.latency_ms.p99' <<<"$line" 2>/dev/null || echo '?')"
}
for ((r = 1; r <= rounds; r++)); do
  for s in "${scenarios[@]}"; do
    if (( r % 2 )); then run "$s" A "$a" ""; run "$s" B "$b" "${B_ENV:-}"
    else run "$s" B "$b" "${B_ENV:-}"; run "$s" A "$a" ""; fi
  done
done
