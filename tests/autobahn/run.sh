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
# AUTOBAHN_CASES (space-separated case patterns, default "1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*").
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

out=${AUTOBAHN_OUT:-target/autobahn}
limit=${AUTOBAHN_TIMEOUT:-900}
cases=${AUTOBAHN_CASES:-"1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*"}
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
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's|^listening on http://||p' "$log" | head -n 1)
  [[ -n $addr ]] && break
  kill -0 "$server" 2>/dev/null || { echo "autobahn: the gateway exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $addr ]] || { echo "autobahn: the gateway printed no address in 10 s" >&2; exit 1; }

reports="$out/reports/servers"
rm -rf "$reports"
spec="$out/fuzzingclient.json"
python3 - "$spec" "ws://$addr/ws" "$reports" $cases <<'PY'
import json, sys
spec, url, outdir, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(spec, "w") as f:
    json.dump({"outdir": outdir, "servers": [{"agent": "ssegate", "url": url}],
               "cases": cases, "exclude-cases": [], "exclude-agent-cases": {}}, f, indent=2)
PY

echo "autobahn: fuzzingclient against ws://$addr/ws, cases: $cases (at most ${limit}s)"
started=$SECONDS
# wstest writes its reports into its working directory's relatives: run it in $out.
status=0
(cd "$out" && timeout "$limit" "$py2" "$root/tests/autobahn/wstest.py" "$site" -m fuzzingclient -s "$spec" >"$out/wstest.log" 2>&1) ||
  status=$?
echo "autobahn: wstest took $((SECONDS - started))s (exit status $status, log in $out/wstest.log)"
if [[ ! -f $reports/index.json ]]; then
  echo "autobahn: no report written" >&2
  tail -n 20 "$out/wstest.log" >&2
  exit 1
fi
python3 tests/autobahn/summarize.py "$reports" --markdown "$out/summary.md"
