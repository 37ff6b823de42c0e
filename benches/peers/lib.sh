# Helpers shared by benches/compare.sh and benches/attack.sh (sourced, not run). The caller keeps
# the PIDs it starts in the array `started` and their children in `adopted`; `stop_all` (also on
# exit) ends exactly those.

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

install_missing() {  # install_missing PKG...: installs with apt those not installed yet
  local need=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

build_bench() {  # build_bench NAME: builds benches/NAME.rs and prints the executable's path
  log "building benches/$1.rs"
  local bin
  bin=$(cargo bench --locked --no-run --bench "$1" 2>&1 \
    | sed -n "s/.*Executable benches\/$1.rs (\(.*\))\$/\1/p" | tail -n 1)
  [ -x "$bin" ] || { echo "could not build benches/$1.rs" >&2; return 1; }
  echo "$bin"
}

# set_up PREFIX: the gateway binary (SSEGATE_BIN, built unless given), the commit measured
# (`commit`), as many open files as allowed up to 20,000 (`nofile`: a process here may hold no
# more), and a fresh work dir /tmp/PREFIX.XXXXXX (`work`) with an empty `results` file.
set_up() {
  if [ -z "${SSEGATE_BIN:-}" ]; then
    log "building the release gateway"
    cargo build --release --locked --bin ssegate >&2
    SSEGATE_BIN="$repo/target/release/ssegate"
  fi
  commit="${SSEGATE_COMMIT:-$(git -C "$repo" log -1 --format=%h 2>/dev/null || echo unknown)}"
  if [ -z "${SSEGATE_COMMIT:-}" ] && [ -n "$(git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes under src/)"
  fi
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -gt 20000 ]; then hard=20000; fi
  ulimit -n "$hard"
  nofile=$(ulimit -n)
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  results="$work/results.jsonl"
  : >"$results"
  log "work dir $work, open files $nofile"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {  # wait_port PORT PID: until PORT accepts, while PID lives (10 s at most)
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

fill() {  # fill TEMPLATE OUT KEY=VALUE...: replace @KEY@ placeholders
  local tpl=$1 dst=$2 expr=()
  shift 2
  for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${expr[@]}" "$tpl" >"$dst"
}

stop_all() {
  local pid
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${started[@]}" "${adopted[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${started[@]}" "${adopted[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  started=()
  adopted=()
}
trap 'stop_all' EXIT
trap 'exit 130' INT TERM
