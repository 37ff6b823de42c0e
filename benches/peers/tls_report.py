#!/usr/bin/env python3
"""Writes the section "Over HTTPS" of BENCHMARKS.md (to stdout) from a `benches/compare.sh --tls` run.

Usage: tls_report.py RESULTS_JSONL COMMAND COMMIT
RESULTS_JSONL holds one line per row, mode, round and server: the load generator's JSON plus
scenario (e.g. "S1-h2"), server, round, loadavg, negotiated, command. Nothing here is measured.
"""

import json
import subprocess
import sys
import time


def num(v, fmt="{:,.1f}"):
    return "–" if v is None else fmt.format(v)


def version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
    except OSError:
        return "?"


def main():
    results = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    command, commit = sys.argv[2], sys.argv[3]
    out = []
    w = out.append
    w("<!-- over-https:begin -->")
    w("## Over HTTPS (issue 17)")
    w("")
    w(f"One run of `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, ssegate at `{commit}` "
      f"(release build), Nchan on Debian `nginx` {version('nginx')} + `libnginx-mod-nchan` "
      f"{version('libnginx-mod-nchan')} (`benches/peers/nchan-tls.conf.in`: `listen ... ssl http2`, "
      "`ssl_protocols TLSv1.3`, `ssl_session_cache off`, `worker_processes auto`). Both serve the same "
      "self-signed P-256 certificate made for the run. Each SSE client opens its own TLS connection "
      "(`h1`: ALPN `http/1.1`; `h2`: ALPN `h2`, one stream per connection as a browser tab; `h2xN`: N "
      "EventSources sharing one HTTP/2 connection, where memory is per stream); the publisher posts over "
      "HTTP/1.1 on TLS. The client offers TLS 1.3 with the one suite TLS13_AES_128_GCM_SHA256.")
    w("")
    negotiated = sorted({(r["server"], r["scenario"].split("-", 1)[-1], r["negotiated"])
                         for r in results if r.get("negotiated")})
    if negotiated:
        w("Negotiated, as the load generator saw it on its first connection:")
        w("")
        for server, mode, n in negotiated:
            w(f"- {server}, {mode}: {n}")
        w("")
    w("Per row and round, each server freshly started: clients connected; deliveries received / expected; "
      "server CPU per delivery (user + system of all its processes while publishing, over deliveries); "
      "latency publish to arrival p50 / p99 in ms; resident memory per connection (connected minus idle, "
      "over clients); events missing / doubled; client errors and connection retries; the 1-minute load "
      "average when the run started.")
    w("")
    w("| row | round | server | connected | deliveries | CPU µs/delivery | latency ms p50 / p99 | RSS KiB/conn "
      "| missing / doubled | errors / retries | load |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "deliveries" not in r:
            w(f"| {r['scenario']} | {r.get('round', 1)} | {r['server']} | no result (see the run's logs) "
              "| | | | | | | |")
            continue
        lat = r.get("latency_ms") or {}
        w(f"| {r['scenario']} | {r.get('round', 1)} | {r['server']} | {r['connected']:,} / {r['clients']:,} "
          f"| {r['deliveries']:,} / {r['expected']:,} | {num(r.get('cpu_us_per_delivery'), '{:.2f}')} "
          f"| {num(lat.get('p50'))} / {num(lat.get('p99'))} | {num(r.get('rss_kib_per_connection'))} "
          f"| {r['missing']:,} / {r['doubled']:,} | {r.get('client_errors', 0):,} / {r.get('retries', 0):,} "
          f"| {r['loadavg'].split()[0]} |")
    w("")
    w("Side by side: ssegate / Nchan from the same round (≤ 1 is the issue's target), with both load averages.")
    w("")
    w("| row | round | CPU per delivery ssegate / Nchan | memory per connection ssegate / Nchan | load ssegate, Nchan |")
    w("|---|---|---|---|---|")
    by = {(r["scenario"], r.get("round", 1), r["server"]): r for r in results}
    for (scenario, rnd, server), a in by.items():
        b = by.get((scenario, rnd, "nchan"))
        if server != "ssegate" or not b:
            continue

        def ratio(key):
            x, y = a.get(key), b.get(key)
            if x is None or not y:
                return "–"
            return f"{x / y:.2f} ({x:.2f} / {y:.2f})"

        w(f"| {scenario} | {rnd} | {ratio('cpu_us_per_delivery')} | {ratio('rss_kib_per_connection')} "
          f"| {a['loadavg'].split()[0]}, {b['loadavg'].split()[0]} |")
    w("")
    w("Against the issue's target (\"over HTTPS, ssegate's CPU per delivery and memory per connection are at "
      "most Nchan's with TLS in the same run\"): the highest ssegate / Nchan ratio over the rounds.")
    w("")
    w("| row | CPU per delivery, worst round | memory per connection, worst round | met |")
    w("|---|---|---|---|")
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        worst = {}
        for key in ("cpu_us_per_delivery", "rss_kib_per_connection"):
            ratios = []
            for (s2, rnd, server), a in by.items():
                b = by.get((s2, rnd, "nchan"))
                if s2 == scenario and server == "ssegate" and b and a.get(key) is not None and b.get(key):
                    ratios.append(a[key] / b[key])
            worst[key] = max(ratios) if ratios else None
        known = [v for v in worst.values() if v is not None]
        met = "–" if not known else ("yes" if all(v <= 1 for v in known) else "**no**")
        w(f"| {scenario} | {num(worst['cpu_us_per_delivery'], '{:.2f}')} "
          f"| {num(worst['rss_kib_per_connection'], '{:.2f}')} | {met} |")
    w("")
    w("The load generator's arguments per row (`--url`, `--pid` and `--ca` added by the script):")
    w("")
    w("```")
    seen = set()
    for r in results:
        if (r["scenario"], r["server"]) not in seen:
            seen.add((r["scenario"], r["server"]))
            w(f"{r['scenario']:7} {r['server']:8} {r['command']}")
    w("```")
    w("<!-- over-https:end -->")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
