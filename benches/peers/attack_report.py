#!/usr/bin/env python3
"""Writes the "Under attack" section of BENCHMARKS.md from one run of benches/attack.sh.

Usage: attack_report.py META_JSON RESULTS_JSONL OUT_MD
META_JSON describes the run (date, machine, versions, command); RESULTS_JSONL holds one line per
attack and target (benches/attack.rs's JSON plus attack, target, loadavg, command). The section
replaces the one between the markers in OUT_MD (or is added at its end; OUT_MD is created if need
be), so the rest of the file (benches/compare.sh's tables) stays. Nothing here is measured.
"""

import json
import os
import sys

BEGIN = "<!-- under-attack:begin -->"
END = "<!-- under-attack:end -->"
TARGETS = {"ssegate": "ssegate", "nchan": "Nchan"}
# The bar for a victim during any attack.
VICTIM_MS = 50


def ms(v, fmt="{:,.1f}"):
    return "–" if v is None else fmt.format(v)


def pair(stats):
    stats = stats or {}
    return f"{ms(stats.get('p99'))} / {ms(stats.get('max'))}"


def quad(stats):
    stats = stats or {}
    return " / ".join(ms(stats.get(k)) for k in ("p50", "p90", "p99", "max"))


def mb(v):
    return "–" if v is None else f"{v:,.0f}"


def secs(v):
    return "–" if v is None else f"{v / 1000:,.1f} s" if v >= 1000 else f"{v:,.0f} ms"


def answer(status, code):
    return f"{status}" + (f" `{code}`" if code else "")


def what_happened(r):
    d = r.get("detail") or {}
    a = r.get("attack")
    out = []
    if a == "ws-ping-flood":
        out.append(f"{d.get('frames_sent', 0):,} frames sent, {d.get('answers_read', 0):,} answers read")
        if d.get("cut"):
            out.append(f"the server cut the flooders {d['cut']:,} times (they reconnected; first: "
                       + ", ".join(d.get("first_cuts") or []) + ")")
    elif a == "ws-huge-subscribe":
        frames = d.get("frames") or []
        if frames:
            out.append(f"{len(frames)} frame(s) of {frames[0].get('topics', 0):,} topics answered: "
                       + ", ".join(f"{f.get('answer')} after {secs(f.get('ms'))}" for f in frames))
    elif a == "ws-many-patterns":
        out.append(f"{d.get('patterns_accepted', 0):,} of {d.get('patterns_sent', 0):,} patterns accepted "
                   f"in {d.get('subscribe_s')} s ({d.get('frames', 0)} frames, {d.get('frames_refused', 0)} "
                   f"refused; last answer: {d.get('last_answer')})")
        base = (r.get("baseline") or {}).get("publish_ms") or {}
        now = r.get("publish_ms") or {}
        if base.get("p50") is not None and now.get("p50") is not None:
            out.append(f"victim publish p50 {base['p50']:.2f} ms before, {now['p50']:.2f} ms after")
    elif a in ("resume-never-read", "resume-never-read-ws"):
        statuses = d.get("statuses") or []
        ok = sum(1 for s in statuses if s in (200, 101))
        out.append(f"{ok} of {d.get('resumers', 0)} resumed ({d.get('history_events', 0):,} events of "
                   f"{d.get('event_bytes', 0) // 1024} KB in history); {d.get('still_open_at_end', 0)} still "
                   f"open at the end")
        if d.get("told_to_reset"):
            out.append(f"**{d['told_to_reset']} told to reset** (the id had left history: no replay)")
        if d.get("still_registered_at_end") is not None:
            out.append(f"{d['still_registered_at_end']} still registered")
    elif a in ("publish-many-topics", "publish-many-topics-retain"):
        out.append(f"{d.get('body_bytes', 0) / 1000:,.0f} KB, {d.get('topics', 0):,} topics: "
                   f"{answer(d.get('status'), d.get('error_code'))} after {secs(d.get('publish_ms'))}")
    elif a == "patch-copy-bomb":
        out.append(f"{d.get('body_bytes', 0)} bytes, {d.get('copy_ops', 0)} copy ops: "
                   f"{answer(d.get('status'), d.get('error_code'))} after {secs(d.get('publish_ms'))}")
    elif a == "deep-nesting":
        out.append(f"depth {d.get('depth_reached', 0):,} in {d.get('requests', 0)} requests")
        refused = d.get("refused")
        if refused:
            code = ((refused.get("answer") or {}).get("error") or {}).get("code")
            out.append(f"refused at depth {refused.get('at_depth', 0):,}: {answer(refused.get('status'), code)}")
        snap = d.get("snapshot") or {}
        out.append(f"then `GET /snapshot`: {snap.get('status', 'no answer')}"
                   + (f" ({snap['bytes']:,} bytes)" if snap.get("bytes") else ""))
    elif a == "poll-sessions":
        first = d.get("first_refusal")
        out.append(f"{d.get('sessions_opened', 0):,} sessions opened in {d.get('flood_s')} s"
                   + (f", refused ({first.get('answer')}) from {first.get('after_s')} s on" if first else ", none refused"))
        out.append(f"then a new long-poll client gets {d.get('new_client_other_address')} "
                   f"(from the attacker's address: {d.get('new_client_same_address')})")
    elif a == "slow-sse":
        closed = d.get("socket_closed_s")
        out.append(f"{d.get('burst_events', 0):,} events of 2 KB in {d.get('burst_s')} s; socket "
                   + (f"closed {closed} s after the burst began" if closed is not None
                      else f"still open {d.get('waited_s'):.0f} s after the burst"))
        if d.get("client_dropped_s") is not None:
            out.append(f"client unregistered after {d['client_dropped_s']} s")
    elif a == "ws-fragments":
        out.append(f"{d.get('opened', 0)} of {d.get('connections', 0)} connections each sent "
                   f"{d.get('fragment_bytes_each', 0) / 1048576:.2f} MiB of a message never finished; "
                   f"{d.get('closed_by_server', 0)} closed by the server")
    elif a == "fanout-health":
        out.append(f"{d.get('connected', 0):,} of {d.get('clients', 0):,} clients; see below")
    if d.get("error"):
        out.append(f"harness: {d['error']}")
    if r.get("victim_stream_ended"):
        out.append(f"victim's stream ended: {r['victim_stream_ended']}")
    after = r.get("healthz_after") or {}
    if r.get("survived") and after and after.get("status") != 200:
        out.append("no `/healthz` answer within 30 s after the attack")
    elif r.get("survived") and (after.get("ms") or 0) > 1000:
        out.append(f"`/healthz` took {after['ms'] / 1000:.1f} s to answer after the attack")
    if r.get("server_crash"):
        out.append(f"server: \"{r['server_crash'][:100]}\"")
    errors = sum((r.get("publish_errors") or {}).values())
    if errors:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted((r.get("publish_errors") or {}).items()))
        out.append(f"victim publishes without a 200: {kinds}")
    if r.get("missing"):
        out.append(f"{r['missing']} victim events never delivered")
    return "; ".join(out)


def met(r):
    p = (r.get("publish_ms") or {}).get("p99")
    d = (r.get("delivery_ms") or {}).get("p99")
    if p is None or d is None:
        return "–"
    ok = r.get("survived") and p < VICTIM_MS and d < VICTIM_MS and not sum((r.get("publish_errors") or {}).values())
    return "yes" if ok else "**no**"


def section(meta, results):
    quick = meta.get("quick") == "1"
    lines = []
    w = lines.append
    w(BEGIN)
    w("## Under attack")
    w("")
    w(f"One run of `{meta['command']}` on {meta['date']}"
      + (" (**quick mode: smaller attacks and 5 s windows**, not the issue's sizes)." if quick else ".")
      + f" ssegate at commit `{meta['commit']}` (release build, `--demo false`, default limits); Nchan: "
      f"Debian `nginx` {meta['nginx']} + `libnginx-mod-nchan` {meta['nchan']} "
      "(`benches/peers/nchan-attack.conf.in`). "
      f"{meta['cores']} cores ({meta['cpu']}), {meta['mem']}, shared by the server, the attackers and the "
      "victim (and by other work: see the load column).")
    w("")
    w("Each row is one run of `benches/attack.rs` against a fresh server. A **victim** from 127.0.0.1 "
      "(on a thread of its own) subscribes with SSE to the topic `victim`, publishes an event to it "
      "every 50 ms over a kept-alive connection (sent on schedule even while earlier ones wait, so a "
      "stall shows in every request it delays) and sends `GET /healthz` every 50 ms; the "
      "**attacker** comes from 127.0.0.2-127.0.0.8. Round trips and delivery latencies (send time in "
      "the event) are taken during the attack window (10 s, or until the attack's steps are done, "
      "60 s at most); set-up (history, retained state, subscriptions, connections) is not in it. "
      "RSS is the server's VmRSS (all its processes), sampled every 100 ms: before the run, and its "
      "peak from the start of the window. *survived*: every server process still there after the "
      f"attack (a late `/healthz` answer is noted). *victim < {VICTIM_MS} ms*: the issue's bar, "
      f"publish and delivery p99 under {VICTIM_MS} ms with every publish answered 200, and survived. "
      "Attacks made of ssegate's own protocol (WebSocket JSON frames, retained state, patches, "
      "long-poll sessions) run against ssegate only.")
    w("")
    w("| attack | target | victim publish ms p99 / max | delivery ms p99 / max | `/healthz` ms p99 / max "
      "| RSS MB before → peak | survived | victim < 50 ms | what happened | load |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rss = r.get("rss_mb") or {}
        if "publish_ms" not in r:
            w(f"| {r.get('attack')} | {TARGETS.get(r.get('target'), r.get('target'))} | no result "
              f"({r.get('error', 'see the logs')}) | | | | | | | |")
            continue
        w(f"| {r['attack']} | {TARGETS.get(r['target'], r['target'])} | {pair(r.get('publish_ms'))} "
          f"| {pair(r.get('delivery_ms'))} | {pair(r.get('healthz_ms'))} "
          f"| {mb(rss.get('before'))} → {mb(rss.get('peak'))} | {'yes' if r.get('survived') else '**no**'} "
          f"| {met(r)} | {what_happened(r)} | {(r.get('loadavg') or '').split(' ')[0]} |")
    fans = [r for r in results if r.get("attack") == "fanout-health" and r.get("detail")]
    if fans:
        w("")
        d0 = fans[0]["detail"]
        w(f"### Fan-out of 5 events/s to {d0.get('clients', 0):,} SSE clients")
        w("")
        w("While every client of one topic gets 5 events/s: the victim's `GET /healthz`, and a new "
          "client's time from connecting to its `welcome` (Nchan: to its `200`), one new client every "
          "100 ms. The issue's target for ssegate: p99 ≤ 10 ms for both. In ms, p50 / p90 / p99 / max.")
        w("")
        w("| target | connected | `/healthz` | new client's welcome | fan-out delivery | fan-out publish |")
        w("|---|---|---|---|---|---|")
        for r in fans:
            d = r["detail"]
            w(f"| {TARGETS.get(r['target'], r['target'])} | {d.get('connected', 0):,} / {d.get('clients', 0):,} "
              f"| {quad(r.get('healthz_ms'))} | {quad(d.get('welcome_ms'))} | {quad(d.get('fan_delivery_ms'))} "
              f"| {quad(d.get('fan_publish_ms'))} |")
    w("")
    w("Before each attack the victim ran alone for 2 s; its figures then (the `baseline` field of each "
      "JSON line, in the raw results) show what the attack changed.")
    w("")
    w("### Commands")
    w("")
    w(f"`{meta['command']}` starts a fresh server per row (ssegate: `ssegate serve --listen 127.0.0.1:PORT "
      "--demo false`; Nchan: `nginx -p DIR` with `benches/peers/nchan-attack.conf.in`) and runs "
      "`cargo bench --bench attack -- ARGS --url URL --pid PIDS` with:")
    w("")
    w("```")
    for r in results:
        w(f"{r.get('command', '')}")
    w("```")
    w(END)
    return "\n".join(lines) + "\n"


def main():
    meta = json.load(open(sys.argv[1]))
    results = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    path = sys.argv[3]
    text = section(meta, results)
    old = open(path).read() if os.path.exists(path) else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + text
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
