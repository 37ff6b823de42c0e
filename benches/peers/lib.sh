# Helpers shared by benches/compare.sh and benches/attack.sh (sourced, not run). The caller keeps
# the PIDs it starts in the array `started` and their children in `adopted`; `stop_all` (also on
# exit) ends exactly those.

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
