#!/usr/bin/env bash
# The "under attack" benchmark of issue 12: runs each attack of benches/attack.rs against a fresh
# ssegate (and a fresh Nchan where the attack applies), on loopback only, and writes the
# "Under attack" section of BENCHMARKS.md (between its <!-- under-attack --> markers; the rest of
# the file is kept).
#
#   bash benches/attack.sh                     # every attack, the issue's sizes (about 10 minutes)
#   bash benches/attack.sh --quick             # smaller sizes and 5 s windows, to try changes
#   bash benches/attack.sh --only ws-ping-flood,slow-sse --targets ssegate --out /tmp/a.md
#
# Installs Nchan (Debian's nginx + libnginx-mod-nchan) with apt if it is missing (run as root).
# SSEGATE_BIN and ATTACK_BIN name prebuilt binaries instead of building them (SSEGATE_COMMIT then
# says what was measured). Stops only the processes it started, by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
peers="$repo/benches/peers"

quick=0
only=""
targets="ssegate,nchan"
out="$repo/BENCHMARKS.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="$2"; shift ;;
    --targets) targets="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done

# log, install_missing, build_bench, set_up, free_port, wait_port, fill, stop_all (and the
# exit trap, which ends only what this script started).
source benches/peers/lib.sh
started=()   # the PIDs this script started itself and has not yet stopped
adopted=()   # their children (nginx workers): killed only if they outlive them

# --- what it needs -------------------------------------------------------------------------
wanted=(jq python3)
[[ ",$targets," == *",nchan,"* ]] && wanted+=(nginx libnginx-mod-nchan)
install_missing "${wanted[@]}"
set_up ssegate-attack
if [ -z "${ATTACK_BIN:-}" ]; then ATTACK_BIN=$(build_bench attack); fi

# --- servers: start, stop ------------------------------------------------------------------
server_pids=""
url=""

start_ssegate() {  # start_ssegate DIR
  local dir=$1 port
  port=$(free_port)
  "$SSEGATE_BIN" serve --listen "127.0.0.1:$port" --demo false >"$dir/ssegate.out" 2>"$dir/ssegate.err" &
  started+=($!)
  server_pids=$!
  wait_port "$port" $! || { cat "$dir/ssegate.err" >&2; return 1; }
  url="http://127.0.0.1:$port"
}

start_nchan() {  # start_nchan DIR
  local dir=$1 port master children
  port=$(free_port)
  fill "$peers/nchan-attack.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$port" \
    NOFILE="$((nofile - 100))" CONNECTIONS="$((nofile - 200))"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx.out" 2>&1 &
  master=$!
  started+=("$master")
  wait_port "$port" "$master" || { cat "$dir/error.log" "$dir/nginx.out" >&2; return 1; }
  sleep 0.3
  children=$(pgrep -P "$master" | paste -sd, -)
  adopted+=(${children//,/ })
  server_pids="$master,$children"
  url="http://127.0.0.1:$port"
}

# --- the runs ------------------------------------------------------------------------------
run_one() {  # run_one ATTACK TARGET
  local attack=$1 target=$2 dir="$work/$1-$2" line args ok=1
  mkdir -p "$dir"
  case $target in
    ssegate) start_ssegate "$dir" || ok=0 ;;
    nchan) start_nchan "$dir" || ok=0 ;;
  esac
  args=(--attack "$attack" --target "$target")
  [ $quick = 1 ] && args+=(--quick)
  if [ $ok = 0 ]; then
    stop_all
    log "$attack $target: the server did not start (logs in $dir)"
    jq -nc --arg a "$attack" --arg t "$target" '{attack: $a, target: $t, error: "the server did not start"}' \
      | tee -a "$results" >&2
    return
  fi
  local load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  log "$attack $target (load $load)"
  # Bounded: the harness bounds each step itself (--limit-s); this is a last resort.
  line=$(timeout --foreground 420 "$ATTACK_BIN" "${args[@]}" --url "$url" --pid "$server_pids" \
    2>"$dir/attack.err" | tail -n 1) || true
  stop_all
  # What the server said when things went wrong (ssegate's warnings, a crash; nginx's errors).
  local warnings crash
  warnings=$(cat "$dir"/ssegate.err "$dir"/error.log 2>/dev/null \
    | grep -cE ' (WARN|ERROR) |\[(error|crit|alert|emerg)\]' || true)
  crash=$(cat "$dir"/ssegate.err "$dir"/error.log 2>/dev/null \
    | grep -m1 -E 'overflowed its stack|panicked|fatal runtime error|exited on signal' || true)
  if ! jq -e . >/dev/null 2>&1 <<<"$line"; then
    log "$attack $target: no result ($(tail -n 1 "$dir/attack.err"))"
    line='{"error": "no result"}'
  fi
  jq -c --arg a "$attack" --arg t "$target" --arg load "$load" --argjson warnings "$warnings" \
    --arg crash "$crash" --arg cmd "attack ${args[*]}" \
    '. + {attack: $a, target: $t, loadavg: $load, server_warnings: $warnings, server_crash: $crash, command: $cmd}' \
    <<<"$line" | tee -a "$results" >&2
  sleep 1
}

while read -r attack applies; do
  if [ -n "$only" ] && [[ ",$only," != *",$attack,"* ]]; then continue; fi
  for target in ${targets//,/ }; do
    [[ ",$applies," == *",$target,"* ]] || continue
    run_one "$attack" "$target"
  done
done < <("$ATTACK_BIN" --list)

# --- the report ----------------------------------------------------------------------------
args_line="bash benches/attack.sh"
[ $quick = 1 ] && args_line+=" --quick"
[ -n "$only" ] && args_line+=" --only $only"
[ "$targets" != "ssegate,nchan" ] && args_line+=" --targets $targets"
jq -n \
  --arg command "$args_line" \
  --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
  --arg cores "$(nproc)" \
  --arg mem "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)" \
  --arg commit "$commit" \
  --arg nginx "$(dpkg-query -W -f='${Version}' nginx 2>/dev/null || echo '?')" \
  --arg nchan "$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')" \
  --arg quick "$quick" \
  '$ARGS.named' >"$work/meta.json"
python3 "$peers/attack_report.py" "$work/meta.json" "$results" "$out"
log "wrote the Under attack section of $out (raw results in $results)"
