#!/usr/bin/env bash
# Autobahn|Testsuite's fuzzingclient (cases 1.*-7.*, 9.*, 10.*) against `GET /ws` of the release
# binary, then a summary that discounts the gateway's leading `welcome` frame and counts the cases
# that expect an echo apart (see summarize.py). Exits non-zero if an applicable case fails.
#
# Needs Python 2.7 (autobahntestsuite 0.8.2 runs on nothing newer): found with `pyenv versions`
# or as `python2.7` on PATH; without it this prints why and exits 0 (tests/ws_close.rs covers the
# same closing and error paths with raw frames). The package is installed once, with pip, under
# target/autobahn/site. Python 3 runs the summariser.
#
# Environment: AUTOBAHN_OUT (default target/autobahn: site, spec, reports, summary.md),
# AUTOBAHN_TIMEOUT (seconds for the whole fuzzing run, default 900),
# AUTOBAHN_CASES (case patterns; groups separated by ';' run at once, each by its own wstest;
# default "1.1.*;1.2.* 10.*;6.*;2.* 3.* 4.* 5.* 7.* 9.*": cases 1.*-7.*, 9.*, 10.*),
# AUTOBAHN_STRICT_CLOSE=1 (an applicable case must also end with the whole closing handshake).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

out=${AUTOBAHN_OUT:-target/autobahn}
limit=${AUTOBAHN_TIMEOUT:-900}
cases=${AUTOBAHN_CASES:-"1.1.*;1.2.* 10.*;6.*;2.* 3.* 4.* 5.* 7.* 9.*"}
version=0.8.2

# A Python 2.7 interpreter: pyenv's newest 2.7, else python2.7 on PATH.
py2=
if command -v pyenv >/dev/null 2>&1; then
  v=$(pyenv versions --bare 2>/dev/null | grep -E '^2\.7(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
  if [[ -n $v && -x "$(pyenv root)/versions/$v/bin/python" ]]; then
    py2="$(pyenv root)/versions/$v/bin/python"
  fi
fi
if [[ -z $py2 ]] && command -v python2.7 >/dev/null 2>&1; then
  py2=$(command -v python2.7)
fi
if [[ -z $py2 ]] || ! "$py2" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
  echo "autobahn: skipped: no Python 2.7 interpreter (pyenv versions, python2.7), which autobahntestsuite $version needs"
  exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "autobahn: python3 is needed for the summary" >&2; exit 1; }

mkdir -p "$out"
out=$(cd "$out" && pwd)
site="$out/site"
if [[ ! -d $site/autobahntestsuite-$version.dist-info ]]; then
  echo "autobahn: installing autobahntestsuite==$version into $site"
  rm -rf "$site"
  "$py2" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$site" "autobahntestsuite==$version" >"$out/pip.log" 2>&1 ||
    { echo "autobahn: pip install failed, see $out/pip.log" >&2; tail -n 20 "$out/pip.log" >&2; exit 1; }
fi

bin=target/release/ssegate
[[ -x $bin ]] || cargo build --release --locked

# The gateway on a free port; its first line says where.
log="$out/server.log"
"$bin" serve --listen 127.0.0.1:0 --demo false >"$log" 2>&1 &
server=$!
runs=()
# Stops what this script started, by PID: the fuzzing clients (timeout passes it on), the gateway.
stop() {
  kill "${runs[@]}" "$server" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's|^listening on http://||p' "$log" | head -n 1)
  [[ -n $addr ]] && break
  kill -0 "$server" 2>/dev/null || { echo "autobahn: the gateway exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $addr ]] || { echo "autobahn: the gateway printed no address in 10 s" >&2; exit 1; }

# Several fuzzing clients at once, each with its own cases and report: most of the run is waiting
# (an echo case waits up to 10 s for an echo that never comes), not work.
IFS=';' read -ra groups <<<"$cases"
rm -rf "$out/reports"
dirs=()
for i in "${!groups[@]}"; do
  dir="$out/reports/servers-$i"
  spec="$out/fuzzingclient-$i.json"
  # shellcheck disable=SC2086 # a group is a space-separated list of patterns
  python3 - "$spec" "ws://$addr/ws" "$dir" ${groups[$i]} <<'PY'
import json, sys
spec, url, outdir, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(spec, "w") as f:
    json.dump({"outdir": outdir, "servers": [{"agent": "ssegate", "url": url}],
               "cases": cases, "exclude-cases": [], "exclude-agent-cases": {}}, f, indent=2)
PY
  # wstest writes a few files into its working directory: run it in $out.
  (cd "$out" && exec timeout "$limit" "$py2" "$root/tests/autobahn/wstest.py" "$site" -m fuzzingclient -s "$spec" \
    >"$out/wstest-$i.log" 2>&1) &
  runs+=($!)
  dirs+=("$dir")
done
echo "autobahn: fuzzingclient against ws://$addr/ws, ${#groups[@]} at once: $cases (each at most ${limit}s)"
started=$SECONDS
failed=0
for i in "${!runs[@]}"; do
  status=0
  wait "${runs[$i]}" || status=$?
  if ((status != 0)) || [[ ! -f ${dirs[$i]}/index.json ]]; then
    why="exit status $status"
    ((status == 124)) && why="timed out after ${limit}s"
    echo "autobahn: wstest for ${groups[$i]} failed ($why); log:" >&2
    tail -n 20 "$out/wstest-$i.log" >&2
    failed=1
  fi
done
echo "autobahn: wstest took $((SECONDS - started))s (logs in $out/wstest-*.log)"
((failed == 0)) || exit 1
strict=()
[[ ${AUTOBAHN_STRICT_CLOSE:-0} == 1 ]] && strict=(--strict-close)
python3 tests/autobahn/summarize.py "${dirs[@]}" "${strict[@]}" --markdown "$out/summary.md"
