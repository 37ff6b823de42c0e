#!/usr/bin/env python3
"""Summarises an Autobahn|Testsuite fuzzingclient report for ssegate's `GET /ws`.

The gateway is not an echo server, and it opens every connection with a `welcome` text frame, so
Autobahn's own verdicts say little as they stand. Each case is judged again from its JSON report:

- A case with an expected trace that holds a message (an echo of what the client sent; or, in
  section 9, whose expectation is an echo) is counted apart: "echo: not applicable, the gateway
  does not echo". (Where the echo is the OK trace and NON-STRICT is empty, as in 3.2: the gateway
  answers the text with an `error` frame, which matches neither.) Their close behaviour is still
  counted, for information.
- The others are judged as autobahntestsuite's `case/case.py` does (`Case.onConnectionLost`),
  after removing the leading `welcome` message from the received trace: the behaviour is the
  first expected outcome whose trace equals the received one (OK, NON-STRICT, INFORMATIONAL),
  else FAILED; the close behaviour comes from the recorded connection state (closed by the wrong
  endpoint: FAILED; required clean but not: UNCLEAN; a close code not expected: WRONG CODE; the
  client had to drop TCP: FAILED BY CLIENT; else OK). The overrides of individual cases are kept:
  cases that declare themselves INFORMATIONAL stay so, a wrong close code fails the case where the
  case says so (7.*), and so does closing from the wrong endpoint in the UTF-8 cases (6.*).

An applicable case passes when its behaviour is OK, NON-STRICT or INFORMATIONAL and its close
behaviour OK or INFORMATIONAL. With --strict-close it must also have ended with the whole closing
handshake (`wasClean`: close frames both ways, then the server closed TCP), which Autobahn does not
require where the connection is failed (a protocol error may just drop TCP); RFC 6455 §7.1.7 and
the gateway's contract prefer the close frame.

Usage: summarize.py REPORT_DIR... [--agent NAME] [--markdown FILE] [--strict-close]
A REPORT_DIR holds `index.json` and the per-case JSON files (`reports/servers`); several (from
fuzzing clients run side by side) are merged. Exit status: 0 if
every applicable case passes, 1 if one fails, 2 if the report cannot be read.
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

OK = "OK"
NON_STRICT = "NON-STRICT"
INFORMATIONAL = "INFORMATIONAL"
FAILED = "FAILED"
UNCLEAN = "UNCLEAN"
WRONG_CODE = "WRONG CODE"
FAILED_BY_CLIENT = "FAILED BY CLIENT"

PASSING = {OK, NON_STRICT, INFORMATIONAL}
CLOSE_PASSING = {OK, INFORMATIONAL}
# Autobahn tries the expected outcomes in its dict's order; where two would match the same trace,
# the better verdict is taken.
PRECEDENCE = [OK, NON_STRICT, INFORMATIONAL]

SECTIONS = OrderedDict(
    [
        ("1", "Framing"),
        ("2", "Pings/Pongs"),
        ("3", "Reserved bits"),
        ("4", "Opcodes"),
        ("5", "Fragmentation"),
        ("6", "UTF-8 handling"),
        ("7", "Close handling"),
        ("8", "Misc"),
        ("9", "Limits/performance"),
        ("10", "Auto-fragmentation"),
        ("12", "permessage-deflate"),
        ("13", "permessage-deflate"),
    ]
)

NEVER_OPENED = "The WebSocket opening handshake was never completed!"


def case_key(case_id):
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def is_welcome(item):
    """Whether a received trace item is the gateway's `welcome` frame. Autobahn keeps the first 64
    characters of a message; serde_json writes the keys in order, so the welcome starts with
    `{"client_id":` (or, with its keys in insertion order, `{"type":"welcome"`)."""
    if len(item) != 3 or item[0] != "message" or item[2] is not False or not isinstance(item[1], str):
        return False
    text = item[1]
    return text.startswith('{"client_id":') or text.startswith('{"type":"welcome"') or '"type":"welcome"' in text


def is_echo(report):
    """Whether the case expects the client's message back (an echo server's job)."""
    expected = report.get("expected") or {}
    if expected:
        return any(item[0] == "message" for trace in expected.values() for item in trace)
    # Section 9 judges itself in onMessage: it expects its messages back.
    return "echo" in report.get("expectation", "").lower()


def close_verdict(r):
    """`Case.onConnectionLost`'s close verdict, from the recorded connection state."""
    if r.get("resultClose") == NEVER_OPENED:
        return FAILED, NEVER_OPENED
    ec = r["expectedClose"]
    if ec["closedByMe"] != r["closedByMe"]:
        return FAILED, "The connection was failed by the wrong endpoint"
    if ec["requireClean"] and not r["wasClean"]:
        return UNCLEAN, "The spec requires the connection to be failed cleanly here"
    if r["remoteCloseCode"] is not None and r["remoteCloseCode"] not in ec["closeCode"]:
        return WRONG_CODE, "The close code should have been %s or empty" % ",".join(map(str, ec["closeCode"]))
    if not r["isServer"] and r["droppedByMe"]:
        return FAILED_BY_CLIENT, "It is preferred that the server close the TCP connection"
    return OK, "Connection was properly closed"


def judge(r):
    """Judges one case report again; returns a dict with the verdicts and why."""
    received = list(r.get("received") or [])
    discounted = bool(received) and is_welcome(received[0])
    if discounted:
        received = received[1:]
    expected = r.get("expected") or {}

    close, close_why = close_verdict(r)
    if r["behaviorClose"] == INFORMATIONAL:
        close, close_why = INFORMATIONAL, r.get("resultClose", "")
    elif close != r["behaviorClose"]:
        # The report's verdict comes from the live connection; a case that overrides it wins.
        print(
            "warning: %s: close verdict recomputed as %s, the report says %s; keeping the report's"
            % (r["id"], close, r["behaviorClose"]),
            file=sys.stderr,
        )
        close, close_why = r["behaviorClose"], r.get("resultClose", "")

    if r["behavior"] == INFORMATIONAL:
        # The case declares itself informational whatever happened (7.1.6, 7.13.*).
        behavior, why = INFORMATIONAL, r.get("result", "")
    elif expected:
        behavior, why = FAILED, "Actual events differ from any expected."
        for outcome in sorted(expected, key=lambda k: PRECEDENCE.index(k) if k in PRECEDENCE else len(PRECEDENCE)):
            if expected[outcome] == received:
                behavior, why = outcome, "Actual events match at least one expected."
                break
    else:
        # The case judges itself as messages arrive (section 9).
        behavior, why = r["behavior"], r.get("result", "")

    ec = r.get("expectedClose") or {}
    if ec.get("closedByWrongEndpointIsFatal") and ec.get("closedByMe") != r.get("closedByMe"):
        behavior, why = FAILED, "closed by the wrong endpoint: the peer did not fail the connection"
    if r["behaviorClose"] == WRONG_CODE and r.get("result") == r.get("resultClose"):
        behavior, why = FAILED, close_why

    return {
        "id": r["id"],
        "description": r.get("description", ""),
        "echo": is_echo(r),
        "discounted": discounted,
        "behavior": behavior,
        "why": why,
        "close": close,
        "close_why": close_why,
        "clean": bool(r.get("wasClean")),
        "unclean_why": r.get("wasNotCleanReason"),
        "remote_code": r.get("remoteCloseCode"),
        "expected": expected,
        "received": received,
        "expected_close": ec,
    }


def passes(v, strict_close):
    if v["behavior"] not in PASSING or v["close"] not in CLOSE_PASSING:
        return False
    return not strict_close or v["clean"] or v["close"] == INFORMATIONAL


def reason(v, strict_close):
    """Why an applicable case fails, in a line or two."""
    parts = []
    if v["behavior"] not in PASSING and v["why"] != v["close_why"]:
        if v["expected"]:
            traces = "; ".join("%s %s" % (k, json.dumps(t)) for k, t in sorted(v["expected"].items()))
            parts.append("%s: expected %s, received %s" % (v["why"], traces, json.dumps(v["received"])))
        else:
            parts.append(v["why"])
    if v["close"] not in CLOSE_PASSING:
        ec = v["expected_close"]
        parts.append(
            "close %s: %s (expected close by %s with %s; got code %s%s)"
            % (
                v["close"],
                v["close_why"],
                "the client" if ec.get("closedByMe") else "the gateway",
                "/".join(map(str, ec.get("closeCode", []))),
                v["remote_code"],
                "; " + v["unclean_why"] if v["unclean_why"] else "",
            )
        )
    elif strict_close and not v["clean"] and v["close"] != INFORMATIONAL:
        parts.append("no complete closing handshake: %s" % (v["unclean_why"] or "unclean"))
    return " | ".join(parts)


def load(report_dirs, agent):
    """The case reports of `agent` (the only one if None) in the report directories, by case id."""
    reports = {}
    for report_dir in report_dirs:
        with open(os.path.join(report_dir, "index.json")) as f:
            index = json.load(f)
        if agent is None:
            if len(index) != 1:
                raise ValueError("the report has agents %s: choose one with --agent" % sorted(index))
            agent = next(iter(index))
        cases = index[agent]
        for case_id in cases:
            with open(os.path.join(report_dir, cases[case_id]["reportfile"])) as f:
                reports[case_id] = json.load(f)
    return agent, [reports[c] for c in sorted(reports, key=case_key)]


def tally(verdicts, strict_close):
    """Counts per section, in section order, then the total."""
    rows = OrderedDict()
    for v in verdicts:
        section = v["id"].split(".")[0]
        row = rows.setdefault(
            section,
            OrderedDict(
                [("cases", 0), ("echo", 0), ("applicable", 0), (OK, 0), (NON_STRICT, 0), (INFORMATIONAL, 0),
                 ("failed", 0), ("unclean", 0)]
            ),
        )
        row["cases"] += 1
        if v["echo"]:
            row["echo"] += 1
            continue
        row["applicable"] += 1
        if not passes(v, strict_close):
            row["failed"] += 1
        else:
            row[v["behavior"]] += 1
        if not v["clean"] and v["close"] != INFORMATIONAL:
            row["unclean"] += 1
    total = OrderedDict((k, sum(r[k] for r in rows.values())) for k in next(iter(rows.values()), {}))
    return rows, total


def section_name(section):
    return "%s. %s" % (section, SECTIONS.get(section, "?"))


def print_table(rows, total):
    head = ["section", "cases", "echo n/a", "applicable", "OK", "NON-STRICT", "INFO", "FAILED", "unclean"]
    widths = [22, 6, 9, 11, 5, 11, 5, 7, 8]
    line = lambda cells: "".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head))
    for section, r in list(rows.items()) + [("total", total)]:
        name = "total" if section == "total" else section_name(section)
        print(line([name] + list(r.values())))


def markdown(rows, total, agent, strict_close):
    out = [
        "| Section | Cases | Echo (n/a) | Applicable | OK | Non-strict | Informational | Failed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for section, r in rows.items():
        out.append(
            "| %s | %d | %d | %d | %d | %d | %d | %d |"
            % (section_name(section), r["cases"], r["echo"], r["applicable"], r[OK], r[NON_STRICT], r[INFORMATIONAL],
               r["failed"])
        )
    out.append(
        "| **Total** | **%d** | **%d** | **%d** | **%d** | **%d** | **%d** | **%d** |"
        % (total["cases"], total["echo"], total["applicable"], total[OK], total[NON_STRICT], total[INFORMATIONAL],
           total["failed"])
    )
    out.append("")
    out.append(
        "Autobahn|Testsuite 0.8.2 fuzzingclient against `%s`'s `GET /ws`. \"Echo (n/a)\": cases whose expected "
        "trace is an echo of the client's message (the gateway does not echo). The gateway's leading `welcome` "
        "frame is discounted. A case passes with OK, NON-STRICT or INFORMATIONAL and a close behaviour of OK%s. "
        "Closes without the whole closing handshake among the applicable cases: %d." % (
            agent, " and the whole closing handshake" if strict_close else "", total["unclean"])
    )
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report_dir", nargs="+", help="the fuzzingclient's report directories (with index.json)")
    parser.add_argument("--agent", help="the agent (server) in the report; needed if there are several")
    parser.add_argument("--markdown", help="write a Markdown summary table to this file")
    parser.add_argument("--strict-close", action="store_true",
                        help="an applicable case must also end with the whole closing handshake")
    args = parser.parse_args()
    try:
        agent, reports = load(args.report_dir, args.agent)
    except (OSError, ValueError, KeyError) as e:
        print("cannot read the report in %s: %s" % (" ".join(args.report_dir), e), file=sys.stderr)
        return 2
    if not reports:
        print("the report in %s holds no cases" % " ".join(args.report_dir), file=sys.stderr)
        return 2

    verdicts = [judge(r) for r in reports]
    rows, total = tally(verdicts, args.strict_close)
    # Section 9 records no messages: only its own verdicts.
    missing_welcome = [v["id"] for v in verdicts if not v["discounted"] and not v["echo"]]
    print("Autobahn fuzzingclient, agent %s: %d cases" % (agent, len(verdicts)))
    if missing_welcome:
        print("(no leading welcome frame in %d cases: %s)" % (len(missing_welcome), " ".join(missing_welcome[:20])))
    print_table(rows, total)
    echo = [v for v in verdicts if v["echo"]]
    if echo:
        print(
            "echo cases, not judged: close behaviour OK or INFORMATIONAL in %d of %d"
            % (sum(v["close"] in CLOSE_PASSING for v in echo), len(echo))
        )
    failing = [v for v in verdicts if not v["echo"] and not passes(v, args.strict_close)]
    if failing:
        print("\nfailing cases (%d):" % len(failing))
        for v in failing:
            print("  %-8s %s / %s  %s" % (v["id"], v["behavior"], v["close"], v["description"].replace("<b>", "").replace("</b>", "").replace("<br>", " ")[:90]))
            print("           %s" % reason(v, args.strict_close))
    else:
        print("\nevery applicable case passes (%d of %d; %d echo cases not applicable)"
              % (total["applicable"], total["cases"], total["echo"]))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, total, agent, args.strict_close))
        print("markdown summary written to %s" % args.markdown)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
