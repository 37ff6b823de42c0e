#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from one run of benches/compare.sh.

Usage: report.py META_JSON RESULTS_JSONL
META_JSON describes the run (date, machine, versions, command); RESULTS_JSONL holds one line
per scenario and server: the load generator's JSON plus scenario, server, loadavg, command.
Nothing here is measured: every figure comes from those two files.
"""

import json
import sys

# What each scenario is for; its size is taken from the run (--quick makes it smaller).
SCENARIOS = {
    "S1": "",
    "S2": " (latency)",
    "S3": " (saturation: deliveries/s)",
    "S4": ", round-robin",
    "S5": "",
    "S6": " (memory per connection)",
    "S7": ", in one ssegate process",
}


def title(r, purpose):
    kind = "WebSocket" if r.get("transport") == "ws" else "SSE"
    topics = "one topic" if r.get("topics") == 1 else f"{r.get('topics', 0):,} topics"
    if not r.get("events"):
        return f"{r.get('clients', 0):,} idle {kind} clients{purpose}"
    return (f"{r.get('clients', 0):,} {kind} clients, {topics}, {r['events']:,} events at "
            f"{r['rate']:g}/s{purpose}")
SERVERS = [("ssegate", "ssegate"), ("nchan", "Nchan"), ("pushpin", "Pushpin")]


def num(v, fmt="{:,.1f}"):
    return "–" if v is None else fmt.format(v)


def row(r):
    lat = r.get("latency_ms") or {}
    cpu = num(r.get("cpu_us_per_delivery"), "{:.2f}")
    if r.get("backend_cpu_us_per_delivery") is not None:
        cpu += f" (+{r['backend_cpu_us_per_delivery']:.2f} backend)"
    if "deliveries" not in r:
        return "| no result (see the run's logs) | | | | | | | | | |"
    deliveries = f"{r['deliveries']:,} / {r['expected']:,}"
    notes = []
    if r.get("retries"):
        notes.append(f"{r['retries']:,} connection retries")
    if r.get("streams_ended"):
        notes.append(f"{r['streams_ended']:,} streams ended by the server")
    if r.get("client_errors", 0) > r.get("streams_ended", 0):
        notes.append(f"{r['client_errors'] - r.get('streams_ended', 0):,} clients failed")
    if r.get("server_warnings"):
        notes.append(f"{r['server_warnings']:,} server warnings, mostly \"{r.get('top_warning', '')[:90]}\"")
    return (
        f"| {r['connected']:,} / {r['clients']:,} | {deliveries} | {num(r.get('deliveries_per_s'), '{:,.0f}')} | {cpu} "
        f"| {num(lat.get('p50'), '{:.1f}')} / {num(lat.get('p99'), '{:.1f}')} / {num(lat.get('max'), '{:.1f}')} "
        f"| {num(r.get('rss_kib_per_connection'))} | {r['missing']:,} / {r['doubled']:,} "
        f"| {num(r.get('loadgen_cpu_us_per_delivery'), '{:.2f}')} | {r['loadavg'].split()[0]} | {'; '.join(notes)} |"
    )


def main():
    meta = json.load(open(sys.argv[1]))
    results = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    by = {(r["scenario"], r["server"]): r for r in results}
    quick = meta["quick"] == "1"
    out = []
    w = out.append

    w("# Benchmarks: ssegate side by side with Nchan and Pushpin")
    w("")
    w(f"One run of `{meta['command']}` on {meta['date']}"
      + (" (**quick mode: a tenth of the clients**, not the issue's scenarios)." if quick else "."))
    w("Every figure below comes from that run; run the command again to reproduce them.")
    w("")
    w("## Machine and versions")
    w("")
    w(f"- {meta['cores']} cores ({meta['cpu']}), {meta['mem']}, Linux {meta['kernel']}, {meta['os']}; "
      f"open files per process: {meta['nofile']}.")
    w("- Server and load generator share the same cores over loopback. The machine is shared with other "
      "work, so the tables give the 1-minute load average when each run started (it also still counts "
      "the scenario before); figures move by tens of percent between runs, more under load.")
    w(f"- ssegate at commit `{meta['commit']}` (release build, `--demo false`).")
    w(f"- Nchan: Debian `nginx` {meta['nginx']} + `libnginx-mod-nchan` {meta['nchan']}, `worker_processes auto`.")
    w(f"- Pushpin: Debian `pushpin` {meta['pushpin']} (condure {meta['condure']}, zurl {meta['zurl']}), "
      "`message_rate`/`message_hwm` raised, behind the backend `benches/peers/grip_backend.py`.")
    w("")
    w("## Results")
    w("")
    w("Per scenario and server: clients connected; deliveries received / expected; deliveries per second "
      "(from the first publish until the last delivery, or until the drain limit); server CPU per delivery "
      "(user + system time of all the server's processes during publishing, over deliveries; Pushpin's "
      "backend is counted on its own); latency from publish to arrival, p50 / p99 / max in ms; resident "
      "memory per connection (all the server's processes, connected minus idle, over clients); events "
      "missing / doubled; the load generator's own CPU per delivery (it runs on the same cores, so it "
      "is part of every latency and of the saturation rate); the 1-minute load average when the run "
      "started; and what went wrong (clients that had to reconnect, streams the server ended, the "
      "server's own warnings).")
    for name, purpose in SCENARIOS.items():
        rows = [(label, by.get((name, key))) for key, label in SERVERS if (name, key) in by]
        if not rows:
            continue
        sized = next((r for _, r in rows if "clients" in r), {})
        w("")
        w(f"### {name}: {title(sized, purpose)}")
        w("")
        w("| server | connected | deliveries | deliveries/s | CPU µs/delivery | latency ms p50 / p99 / max "
          "| RSS KiB/conn | missing / doubled | load gen. µs/delivery | load | notes |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in rows:
            w(f"| {label} " + row(r))

    w("")
    w("## Against the issue's targets (ssegate / Nchan)")
    w("")
    w("| check | target | measured | met |")
    w("|---|---|---|---|")

    def get(s, srv, key, sub=None):
        r = by.get((s, srv))
        if not r or key not in r:
            return None
        v = r[key]
        return v.get(sub) if sub else v

    def check(label, target, value, ok):
        met = "–" if ok is None else ("yes" if ok else "**no**")
        w(f"| {label} | {target} | {value} | {met} |")

    for s in ("S1", "S2", "S4", "S5"):
        a, b = get(s, "ssegate", "cpu_us_per_delivery"), get(s, "nchan", "cpu_us_per_delivery")
        ratio = a / b if a is not None and b else None
        check(f"{s} CPU per delivery, ssegate/Nchan", "≤ 0.6",
              "–" if ratio is None else f"{ratio:.3f} ({a:.2f} / {b:.2f} µs)", None if ratio is None else ratio <= 0.6)
    a, b = get("S3", "ssegate", "deliveries_per_s"), get("S3", "nchan", "deliveries_per_s")
    ratio = a / b if a is not None and b else None
    check("S3 deliveries/s, ssegate/Nchan", "≥ 2",
          "–" if ratio is None else f"{ratio:.3f} ({a:,.0f} / {b:,.0f})", None if ratio is None else ratio >= 2)
    for s in ("S2", "S4"):
        p = get(s, "ssegate", "latency_ms", "p99")
        check(f"{s} p99 latency, ssegate", "≤ 5 ms", num(p, "{:.1f} ms"), None if p is None else p <= 5)
    m = get("S6", "ssegate", "rss_kib_per_connection")
    n = get("S6", "nchan", "rss_kib_per_connection")
    check("S6 memory per idle connection, ssegate", "≤ 6 KiB",
          num(m, "{:.1f} KiB") + ("" if n is None else f" (Nchan {n:.1f} KiB)"), None if m is None else m <= 6)
    r = by.get(("S7", "ssegate"))
    if r and "connected" in r:
        ok = r["connected"] == r["clients"] and r["deliveries"] == r["expected"]
        check("S7 all clients served, ssegate", "all", f"{r['connected']:,} / {r['clients']:,} connected, "
              f"{r['deliveries']:,} / {r['expected']:,} delivered", ok)
    mine = [r for r in results if r["server"] == "ssegate" and "missing" in r]
    if mine:
        lost = sum(r["missing"] for r in mine)
        twice = sum(r["doubled"] for r in mine)
        check("missing / doubled, ssegate, all scenarios", "0 / 0", f"{lost:,} / {twice:,}", lost == 0 and twice == 0)

    w("")
    w("## Commands")
    w("")
    w(f"The whole comparison: `{meta['command']}`. Each row is one run of the load generator "
      "(`cargo bench --bench loadgen -- ARGS`) against a freshly started server, with `--url`, `--pid` "
      "(all the server's PIDs) and for Pushpin `--publish-url` and `--backend-pid` added by the script:")
    w("")
    w("```")
    for r in results:
        w(f"{r['scenario']} {r['server']:8} {r['command']}")
    w("```")
    w("")
    w("## How each server is set up")
    w("")
    w("- **ssegate**: `ssegate serve --listen 127.0.0.1:PORT --demo false --max-connections CLIENTS+500`. "
      "Subscribes at `/stream?topic=` and `/ws?topic=` and counts a client once its `welcome` arrives; "
      "publishes with `POST /publish`.")
    w("- **Nchan**: `benches/peers/nchan.conf.in`, `nginx -p DIR` in the foreground, master and workers "
      "measured. Subscribes at `/sub/<topic>` (EventSource, or WebSocket with `Upgrade`) and counts a client "
      "once its `200` arrives; publishes by POSTing the event's JSON to `/pub/<topic>` with "
      "`X-EventSource-Event: tick`. `nchan_message_buffer_length` is the run's event count + 100 and "
      "`nchan_subscriber_first_message oldest`, so no subscriber misses an event while it registers.")
    w("- **Pushpin**: `benches/peers/pushpin.conf.in` and `zurl.conf.in`; the runner (`pushpin`), "
      "`condure`, `pushpin-proxy`, `pushpin-handler` and `zurl` are measured, the Python backend "
      "(`benches/peers/grip_backend.py`, which answers each GET with `Grip-Hold: stream` and "
      "`Grip-Channel: <topic>`, and each WebSocket-over-HTTP `OPEN` with a `subscribe` control message) "
      "is reported on its own. Clients connect through Pushpin's HTTP port (`/stream?topic=`, `/ws?topic=`) "
      "and count once the `200` (or the WebSocket handshake) arrives; events are published with "
      "`POST /publish` on the control port, with both an `http-stream` and a `ws-message` format.")
    w("- The load generator spreads its clients over source addresses 127.0.0.1-127.0.0.8, waits until "
      "all are connected (or 120 s), waits 0.5 s, then publishes at the given rate and waits for the last "
      "deliveries up to the drain limit (20 s; 150 s for S3).")
    w("")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
