#!/usr/bin/env bash
# The side-by-side fan-out benchmark of issue 7: runs scenarios S1-S7 against ssegate, Nchan
# (Debian's nginx + libnginx-mod-nchan) and Pushpin (Debian's pushpin) with one load generator
# (benches/loadgen.rs), one fresh server per scenario, on loopback only, and writes BENCHMARKS.md.
#
#   bash benches/compare.sh              # the full run (about 20 minutes on 2 cores)
#   bash benches/compare.sh --quick      # a tenth of the clients, to try changes
#   bash benches/compare.sh --only S1,S6 --servers ssegate,nchan --out /tmp/b.md
#   bash benches/compare.sh --tls h1,h2 --only S1,S6 --servers ssegate,nchan --rounds 2
#
# --tls MODES (h1, h2, h2xN: HTTP/2 with N EventSources per connection) runs each scenario over
# HTTPS once per mode (rows S1-h1, S1-h2, ...), with a P-256 certificate made for the run, ssegate
# with --tls-cert/--tls-key and Nchan with benches/peers/nchan-tls.conf.in; it writes (or replaces)
# only the section "Over HTTPS" of --out. --rounds N repeats every row, the servers in reverse
# order every other round, so that each ssegate figure has an Nchan figure measured next to it.
#
# Installs the peers with apt if they are missing (run as root). SSEGATE_BIN and LOADGEN_BIN
# name prebuilt binaries instead of building them (SSEGATE_COMMIT then says what was measured).
# Stops only the processes it started, by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
peers="$repo/benches/peers"

quick=0
only=""
servers="ssegate,nchan,pushpin"
out="$repo/BENCHMARKS.md"
tls_modes=""
rounds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="$2"; shift ;;
    --servers) servers="$2"; shift ;;
    --out) out="$2"; shift ;;
    --tls) tls_modes="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done

# log, install_missing, build_bench, set_up, free_port, wait_port, fill, stop_all (and the
# exit trap, which ends only what this script started).
source benches/peers/lib.sh
started=()   # the PIDs this script started itself and has not yet stopped
adopted=()   # their children (nginx workers, Pushpin's services): killed only if they outlive them

# --- what it needs -------------------------------------------------------------------------
install_missing nginx libnginx-mod-nchan pushpin curl jq python3
set_up ssegate-compare
if [ -z "${LOADGEN_BIN:-}" ]; then LOADGEN_BIN=$(build_bench loadgen); fi
if [ -n "$tls_modes" ]; then
  # A self-signed end-entity certificate for 127.0.0.1 (no CA extensions: the load generator
  # verifies it as the server's own), P-256 as both servers use it.
  openssl req -x509 -config <(printf '[req]\ndistinguished_name=dn\n[dn]\n') -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1,DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -addext keyUsage=digitalSignature -addext extendedKeyUsage=serverAuth \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
fi

# --- servers: start, measure, stop ---------------------------------------------------------
server_pids=""   # comma list the load generator measures
backend_pid=""
url=""
publish_url=""

start_ssegate() {  # start_ssegate DIR CLIENTS (over HTTPS when $tls is set)
  local dir=$1 port
  port=$(free_port)
  "$SSEGATE_BIN" serve --listen "127.0.0.1:$port" --demo false --max-connections $(($2 + 500)) \
    ${tls:+--tls-cert "$work/cert.pem" --tls-key "$work/key.pem"} \
    >"$dir/ssegate.out" 2>"$dir/ssegate.err" &
  started+=($!)
  server_pids=$!
  wait_port "$port" $! || { cat "$dir/ssegate.err" >&2; return 1; }
  url="http${tls:+s}://127.0.0.1:$port"
  publish_url=""
}

start_nchan() {  # start_nchan DIR CLIENTS EVENTS
  local dir=$1 port master
  port=$(free_port)
  mkdir -p "$dir"
  # Accepting is not balanced between the workers, so one may get every connection.
  fill "$peers/nchan${tls:+-tls}.conf.in" "$dir/nginx.conf" DIR="$dir" PORT="$port" \
    NOFILE="$((nofile - 100))" CONNECTIONS="$((nofile - 200))" BUFFER="$(($3 + 100))" \
    CERT="$work/cert.pem" KEY="$work/key.pem"
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx.out" 2>&1 &
  master=$!
  started+=("$master")
  wait_port "$port" "$master" || { cat "$dir/error.log" "$dir/nginx.out" >&2; return 1; }
  sleep 0.3
  adopt_children "$master"
  server_pids="$master,$children"
  url="http${tls:+s}://127.0.0.1:$port"
  publish_url=""
}

adopt_children() {  # adopt_children PID: sets $children (comma list) and stops them at the end too
  children=$(pgrep -P "$1" | paste -sd, -)
  adopted+=(${children//,/ })
}

start_pushpin() {  # start_pushpin DIR CLIENTS
  local dir=$1 port control backend runner zurl_pid conns=$(($2 + 1000))
  port=$(free_port); control=$(free_port); backend=$(free_port)
  mkdir -p "$dir/run" "$dir/log"
  fill "$peers/pushpin.conf.in" "$dir/pushpin.conf" DIR="$dir" PORT="$port" \
    CONTROL_PORT="$control" CONNECTIONS="$conns"
  fill "$peers/zurl.conf.in" "$dir/zurl.conf" DIR="$dir" CONNECTIONS="$conns"
  echo "* 127.0.0.1:$backend,over_http" >"$dir/routes"
  python3 "$peers/grip_backend.py" "$backend" >"$dir/backend.log" 2>&1 &
  backend_pid=$!
  started+=("$backend_pid")
  zurl --config="$dir/zurl.conf" >"$dir/zurl.log" 2>&1 &
  zurl_pid=$!
  started+=("$zurl_pid")
  pushpin --config="$dir/pushpin.conf" >"$dir/pushpin.log" 2>&1 &
  runner=$!
  started+=("$runner")
  wait_port "$backend" "$backend_pid" && wait_port "$port" "$runner" && wait_port "$control" "$runner" \
    || { tail -n 20 "$dir/pushpin.log" "$dir"/log/*.log >&2; return 1; }
  sleep 0.5
  adopt_children "$runner"
  server_pids="$runner,$children,$zurl_pid"
  url="http://127.0.0.1:$port"
  publish_url="http://127.0.0.1:$control"
}

# --- scenarios -----------------------------------------------------------------------------
# name transport clients topics events rate drain_s servers-it-runs-on
scale=1
[ $quick = 1 ] && scale=10
scenarios=(
  "S1 sse $((1000 / scale)) 1 200 50 20 all"
  "S2 sse $((10000 / scale)) 1 100 5 20 all"
  "S3 sse $((10000 / scale)) 1 1000 100 150 all"
  "S4 sse $((10000 / scale)) 100 2000 200 20 all"
  "S5 ws $((10000 / scale)) 1 100 5 20 all"
  "S6 sse $((15000 / scale)) 1 0 1 5 all"
  "S7 sse $((19000 / scale)) 1 100 5 20 ssegate"
)

run_one() {  # run_one SCENARIO SERVER TRANSPORT CLIENTS TOPICS EVENTS RATE DRAIN (TLS mode in $tls)
  local name=$1 server=$2 transport=$3 clients=$4 topics=$5 events=$6 rate=$7 drain=$8
  local dir="$work/$name-$server${round:+-r$round}" load line args tls_args=()
  mkdir -p "$dir"
  backend_pid=""
  local ok=1
  case $server in
    ssegate) start_ssegate "$dir" "$clients" || ok=0 ;;
    nchan) start_nchan "$dir" "$clients" "$events" || ok=0 ;;
    pushpin) start_pushpin "$dir" "$clients" || ok=0 ;;
  esac
  if [ $ok = 0 ]; then
    stop_all
    log "$name $server: the server did not start (logs in $dir)"
    jq -nc --arg s "$name" --arg srv "$server" '{scenario: $s, server: $srv, loadavg: "", command: "server did not start"}' \
      | tee -a "$results" >&2
    return
  fi
  args=(--target "$server" --transport "$transport" --clients "$clients" --topics "$topics"
    --events "$events" --rate "$rate" --drain-s "$drain" --connect-s 120 --retries 20 --self-cpu)
  if [ -n "$tls" ]; then
    args+=(--tls "${tls%%x*}")
    if [[ $tls == *x* ]]; then args+=(--streams-per-conn "${tls#*x}"); fi
    tls_args=(--ca "$work/cert.pem")
  fi
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  log "$name $server: ${args[*]} (load $load)"
  # Bounded: connecting (120 s) + publishing + draining, plus a margin.
  line=$(timeout --foreground $((180 + events / ${rate%.*} + drain)) "$LOADGEN_BIN" "${args[@]}" \
    "${tls_args[@]}" --url "$url" --pid "$server_pids" ${publish_url:+--publish-url "$publish_url"} \
    ${backend_pid:+--backend-pid "$backend_pid"} 2>"$dir/loadgen.err" | tail -n 1) || true
  stop_all
  # What went wrong, for the notes: client errors, streams the server ended, and the server's
  # own warnings (with the most frequent one, numbers blanked).
  local errors ended warnings top
  errors=$(grep -E '^client [0-9]+: ' "$dir/loadgen.err" | grep -vc 'events missing' || true)
  ended=$(grep -c 'the server ended the stream' "$dir/loadgen.err" || true)
  warnings=$(cat "$dir"/ssegate.err "$dir"/error.log "$dir"/log/*.log "$dir"/zurl.log 2>/dev/null \
    | grep -E ' (WARN|ERROR) |\[(WARN|ERR|error|crit|alert|emerg)\]' || true)
  top=$(sed -E 's/^\S+ \S+ \S+ //; s/[0-9a-f]+-[0-9a-f-]+/ID/g; s/[0-9]+/N/g' <<<"$warnings" | sort | uniq -c \
    | sort -rn | head -n 1 | sed -E 's/^ *[0-9]+ //')
  warnings=$(grep -c . <<<"$warnings" || true)
  if ! jq -e . >/dev/null 2>&1 <<<"$line"; then
    log "$name $server: no result ($(tail -n 1 "$dir/loadgen.err"))"
    line='{}'
  fi
  jq -c --arg s "$name" --arg srv "$server" --arg load "$load" --argjson errors "$errors" --argjson ended "$ended" \
    --argjson warnings "$warnings" --arg top "$top" --arg cmd "loadgen ${args[*]}" --arg round "${round:-1}" \
    --arg negotiated "$(sed -n 's/^tls: //p' "$dir/loadgen.err" | head -n 1)" \
    '. + {scenario: $s, server: $srv, loadavg: $load, client_errors: $errors, streams_ended: $ended,
      server_warnings: $warnings, top_warning: $top, command: $cmd, round: ($round | tonumber)}
      + (if $negotiated == "" then {} else {negotiated: $negotiated} end)' \
    <<<"$line" | tee -a "$results" >&2
  sleep 1
}

tls=""
round=""
if [ -n "$tls_modes" ]; then
  # Over HTTPS: every scenario once per TLS mode and round, the servers in reverse order every
  # other round.
  for ((round = 1; round <= rounds; round++)); do
    order=${servers//,/ }
    (( round % 2 )) || order=$(tr ' ' '\n' <<<"$order" | tac | paste -sd' ' -)
    for sc in "${scenarios[@]}"; do
      read -r name transport clients topics events rate drain on <<<"$sc"
      if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
      [ "$transport" = sse ] || continue
      for tls in ${tls_modes//,/ }; do
        for server in $order; do
          [ "$server" = pushpin ] && continue  # not set up over TLS here
          if [ "$on" != all ] && [ "$on" != "$server" ]; then continue; fi
          run_one "$name-$tls" "$server" "$transport" "$clients" "$topics" "$events" "$rate" "$drain"
        done
      done
    done
  done
  quick_arg=""
  if [ $quick = 1 ]; then quick_arg=" --quick"; fi
  python3 "$peers/tls_report.py" "$results" "bash benches/compare.sh${quick_arg} --tls $tls_modes${only:+ --only $only} --servers $servers --rounds $rounds" \
    "$(git -C "$repo" log -1 --format=%h 2>/dev/null || echo unknown)" >"$work/https.md"
  # Replace the section "Over HTTPS" of --out (or add it at the end); the rest stays as it is.
  touch "$out"
  python3 - "$out" "$work/https.md" <<'PY'
import sys
path, section = sys.argv[1], open(sys.argv[2]).read()
text = open(path).read()
begin, end = "<!-- over-https:begin -->", "<!-- over-https:end -->"
if begin in text and end in text:
    text = text[: text.index(begin)] + section.strip() + text[text.index(end) + len(end):]
elif "<!-- under-attack:begin -->" in text:
    at = text.index("<!-- under-attack:begin -->")
    text = text[:at] + section.strip() + "\n\n" + text[at:]
else:
    text = text.rstrip() + "\n\n" + section.strip() + "\n"
open(path, "w").write(text)
PY
  log "wrote the section Over HTTPS of $out (raw results in $results)"
  exit 0
fi

for sc in "${scenarios[@]}"; do
  read -r name transport clients topics events rate drain on <<<"$sc"
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  for server in ${servers//,/ }; do
    if [ "$on" != all ] && [ "$on" != "$server" ]; then continue; fi
    run_one "$name" "$server" "$transport" "$clients" "$topics" "$events" "$rate" "$drain"
  done
done

# --- the report ----------------------------------------------------------------------------
args_line="bash benches/compare.sh"
[ $quick = 1 ] && args_line+=" --quick"
[ -n "$only" ] && args_line+=" --only $only"
[ "$servers" != "ssegate,nchan,pushpin" ] && args_line+=" --servers $servers"
jq -n \
  --arg command "$args_line" \
  --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
  --arg cores "$(nproc)" \
  --arg mem "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)" \
  --arg kernel "$(uname -r)" \
  --arg os "$(. /etc/os-release && echo "$PRETTY_NAME")" \
  --arg commit "$commit" \
  --arg nginx "$(dpkg-query -W -f='${Version}' nginx)" \
  --arg nchan "$(dpkg-query -W -f='${Version}' libnginx-mod-nchan)" \
  --arg pushpin "$(dpkg-query -W -f='${Version}' pushpin)" \
  --arg condure "$(dpkg-query -W -f='${Version}' condure 2>/dev/null || echo '?')" \
  --arg zurl "$(dpkg-query -W -f='${Version}' zurl)" \
  --arg nofile "$nofile" \
  --arg quick "$quick" \
  '$ARGS.named' >"$work/meta.json"
python3 "$peers/report.py" "$work/meta.json" "$results" >"$work/BENCHMARKS.md"
# Keep the sections "Over HTTPS" (compare.sh --tls, and the notes written by hand after it) and
# "Under attack" (benches/attack.sh).
for section in over-https over-https-notes under-attack; do
  if [ -f "$out" ] && grep -q "<!-- $section:begin -->" "$out"; then
    { echo; sed -n "/<!-- $section:begin -->/,/<!-- $section:end -->/p" "$out"; } >>"$work/BENCHMARKS.md"
  fi
done
cp "$work/BENCHMARKS.md" "$out"
log "wrote $out (raw results in $results)"
