#!/usr/bin/env python3
"""Helpers and the verdict of the compose end-to-end test (tests/compose/e2e.sh).
Standard library only. It reads files or stdin and never talks to Docker.

  check.py entries VENDOR      < stats.json     accepted entries of VENDOR at the intake
  check.py hosts FIELD         < entries.json   distinct values of FIELD among entries
  check.py metric NAME [L=V..] < metrics.prom   sum of the samples of NAME with those labels
  check.py scraped-at          < gateway.prom   when the scraper took that scrape (unix ms)
  check.py youngest LEDGER_DIR                  the host whose running agent started last
  check.py verify DIR                           the verdict over what e2e.sh collected in DIR

What `verify` proves, and why it can:

* What was produced is known exactly: the demo agent writes every line it
  prints into a ledger (DIR/ledger/<host>-<boot>.jsonl), after printing it.
* No agent container is ever killed: a gateway is SIGKILLed, one replica is
  cut from the network for 30 s, and agents crash by exiting (the shim then
  drains with a 60 s timeout, longer than any outage). The shim keeps every
  unacked line, the gateway acks only what is on disk. So every ledger line
  must arrive: "lost" must be 0. (Lines still unacked when a whole replica
  container is SIGKILLed cannot be proven delivered; this test never does
  that.)
* Received lines are matched to the ledger as multisets of (host, stream,
  line): a line received more often than written is a duplicate (at-least-
  once delivery allows them; they are counted and reported, and the metrics
  check accounts for them); a line never written is "unexpected" (a fault).
* Independently of the ledger, every record's first line carries
  `seq=N boot=B`: per (host, boot) the received seqs must be 1..max.
* The killed gateway's backlog: the shims spread over the gateways by
  rendezvous hashing, and the gateway serving the most replicas is the one
  killed (`victim` in run.json). While every vendor refuses (the intake
  answers 503, moto is cut off the network), it is scraped and killed. Its
  acked-minus-delivered lines had only one copy, on its disk (acked lines
  leave the shims' buffers). At least that many lines read before the kill
  must arrive after its restart, and the restarted gateway's own counter
  must reach that number.
* Failover: a replica's lines written while that gateway was down that
  arrived before it came back can only have gone through the other one.
"""

import json
import os
import re
import sys
from collections import Counter, defaultdict

SERVICE = "cloud.livekit.io"
SHIM_PREFIX = "agent-shim: "
CRASH_EVENT = "agent-shim: agent exited with code 1"
SEQ_TEXT = re.compile(r"\bseq=(\d+) boot=([0-9a-f]+)\b")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
VENDORS = ("datadog", "cloudwatch", "sentry", "newrelic")
INTAKE_VENDORS = ("datadog", "sentry", "newrelic")
SENTRY_LEVELS = {"trace", "debug", "info", "warn", "error", "fatal"}


# ---------------------------------------------------------------- helpers --

def prom_samples(text):
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            yield name, dict(LABEL.findall(labels or "")), float(value)
        except ValueError:
            continue


def prom_sum(text, name, **labels):
    return sum(
        value
        for sample, have, value in prom_samples(text)
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def seq_of(message):
    """(seq, boot) of a record's first line, or None."""
    match = SEQ_TEXT.search(message)
    if match:
        return int(match.group(1)), match.group(2)
    if message.startswith("{"):
        try:
            value = json.loads(message)
        except ValueError:
            return None
        if isinstance(value, dict) and isinstance(value.get("seq"), int) and isinstance(value.get("boot"), str):
            return value["seq"], value["boot"]
    return None


def read_json(path):
    """The JSON in `path`, or (None, why) when it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, f"{os.path.basename(path)} was not collected"
    except ValueError as err:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(300).strip()
        return None, f"{os.path.basename(path)} is not JSON ({err}): {head!r}"


def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


# ------------------------------------------------------------ the ledger --

class Ledger:
    """What the demo agents wrote, from their ledgers."""

    def __init__(self, directory):
        self.lines = Counter()  # (host, stream, text) -> times written
        self.records = []  # (host, boot, seq, t_ms, stream, text)
        self.written = []  # (host, t_ms, key) of every line
        self.crashes = Counter()  # host -> exits with code 1
        self.exits = Counter()  # exit code -> count
        self.boots = {}  # (host, boot) -> last seq written
        self.unfinished = []  # ledgers without an exit record
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".jsonl"):
                continue
            host, _, boot = name[: -len(".jsonl")].rpartition("-")
            self._read(os.path.join(directory, name), host, boot)

    def _read(self, path, host, boot):
        last_seq = 0
        exited = False
        with open(path, encoding="utf-8") as f:
            for raw in f:
                entry = json.loads(raw)
                if "exit" in entry:
                    exited = True
                    self.exits[entry["exit"]] += 1
                    if entry["exit"] == 1:
                        self.crashes[host] += 1
                    continue
                key = (host, entry["s"], entry["m"])
                self.lines[key] += 1
                self.written.append((host, entry["t"], key))
                tagged = seq_of(entry["m"])
                if tagged and tagged[1] == boot:
                    last_seq = max(last_seq, tagged[0])
                    self.records.append((host, boot, tagged[0], entry["t"], entry["s"], entry["m"]))
        self.boots[(host, boot)] = last_seq
        if not exited:
            self.unfinished.append(f"{host}-{boot}")

    @property
    def hosts(self):
        return {host for host, _ in self.boots}

    def total(self):
        return sum(self.lines.values())


# ------------------------------------------------------ vendor adapters --

class Received:
    """One received line, the same shape for every vendor."""

    __slots__ = ("host", "stream", "message", "timestamp", "arrived", "shim_marked", "problems")

    def __init__(self, host, stream, message, timestamp, arrived, shim_marked, problems):
        self.host = host
        self.stream = stream
        self.message = message
        self.timestamp = timestamp
        self.arrived = arrived
        self.shim_marked = shim_marked
        self.problems = problems

    @property
    def key(self):
        return (self.host, self.stream, self.message)

    @property
    def from_shim(self):
        return isinstance(self.message, str) and self.message.startswith(SHIM_PREFIX)


def intake_arrivals(requests):
    return {r["id"]: r.get("arrived_unix_ms") for r in requests or []}


def datadog_lines(entries, arrivals, agent_id):
    for e in entries:
        v = e.get("value", {})
        problems = []
        if v.get("ddsource") != agent_id:
            problems.append(f"ddsource={v.get('ddsource')!r}, expected {agent_id!r}")
        if v.get("service") != SERVICE:
            problems.append(f"service={v.get('service')!r}, expected {SERVICE!r}")
        if not isinstance(v.get("timestamp"), int):
            problems.append(f"timestamp={v.get('timestamp')!r} is not integer ms")
        origin = (v.get("logdrain") or {}).get("origin") if isinstance(v.get("logdrain"), dict) else None
        yield Received(v.get("host"), v.get("stream"), v.get("message"), v.get("timestamp"),
                       arrivals.get(e.get("request_id")), origin == "shim", problems)


def sentry_attribute(log, name):
    """The value of a Sentry log attribute ({name: {"value": v, "type": t}})."""
    attributes = log.get("attributes") if isinstance(log.get("attributes"), dict) else {}
    attribute = attributes.get(name)
    return attribute.get("value") if isinstance(attribute, dict) else None


def sentry_lines(entries, arrivals, agent_id):
    for e in entries:
        v = e.get("value", {})

        def attr(name, log=v):
            return sentry_attribute(log, name)

        problems = []
        if attr("logger") != agent_id:
            problems.append(f"attribute logger={attr('logger')!r}, expected {agent_id!r}")
        for name in ("environment", "sentry.environment"):
            if attr(name) != "production":
                problems.append(f"attribute {name}={attr(name)!r}, expected 'production'")
        if v.get("level") not in SENTRY_LEVELS:
            problems.append(f"level={v.get('level')!r}")
        timestamp = v.get("timestamp")
        ts = int(round(timestamp * 1000)) if isinstance(timestamp, (int, float)) else None
        yield Received(attr("server_name"), attr("stream"), v.get("body"), ts,
                       arrivals.get(e.get("request_id")), None, problems)


def newrelic_lines(entries, arrivals, agent_id):
    for e in entries:
        v = e.get("value", {})
        problems = []
        if v.get("service_name") != agent_id:
            problems.append(f"service_name={v.get('service_name')!r}, expected {agent_id!r}")
        if v.get("source") != SERVICE:
            problems.append(f"source={v.get('source')!r}, expected {SERVICE!r}")
        yield Received(v.get("hostname"), v.get("stream"), v.get("message"), v.get("timestamp"),
                       arrivals.get(e.get("request_id")), None, problems)


def cloudwatch_lines(events, agent_id):
    group = f"livekit/{agent_id}"
    for ev in events:
        problems = []
        if ev.get("group") != group:
            problems.append(f"logGroupName={ev.get('group')!r}, expected {group!r}")
        message = stream = None
        try:
            body = json.loads(ev.get("message", ""))
            message, stream = body["message"], body["stream"]
        except (ValueError, TypeError, KeyError):
            problems.append(f'message is not {{"message": ..., "stream": ...}}: {ev.get("message", "")[:80]!r}')
        yield Received(ev.get("stream"), stream, message, ev.get("timestamp"),
                       ev.get("ingestionTime"), None, problems)


# --------------------------------------------------------------- verdict --

class Verdict:
    def __init__(self):
        self.results = []

    def check(self, name, ok, detail):
        self.results.append((name, bool(ok), detail))

    def print(self):
        print("\nchecks:")
        for name, ok, detail in self.results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
        passed = sum(1 for _, ok, _ in self.results if ok)
        failed = len(self.results) - passed
        print(f"\ncompose-e2e: {passed} passed, {failed} failed")
        return failed == 0


def examples(items, n=3):
    items = list(items)
    shown = "; ".join(str(i) for i in items[:n])
    return shown + (f"; ... ({len(items)} in all)" if len(items) > n else "")


def delivered_by_gateways(metrics, vendor):
    return sum(prom_sum(text, "logdrain_delivered_lines_total", destination=vendor)
               for text in metrics.values() if text is not None)


def verify_vendor(v, vendor, received, accepted, ledger, run, metrics, figures):
    """All checks of one vendor over its received lines."""
    agent_lines = [r for r in received if not r.from_shim]
    shim_lines = [r for r in received if r.from_shim]
    got = Counter(r.key for r in agent_lines)
    lost = {k: n - got[k] for k, n in ledger.lines.items() if got[k] < n}
    duplicated = {k: got[k] - n for k, n in ledger.lines.items() if got[k] > n}
    unexpected = {k: n for k, n in got.items() if k not in ledger.lines}
    lost_n, dup_n, unexp_n = sum(lost.values()), sum(duplicated.values()), sum(unexpected.values())
    crash_events = {(r.host, r.timestamp) for r in shim_lines if r.message == CRASH_EVENT}
    crashes_seen = Counter(host for host, _ in crash_events)
    figures[vendor] = {
        "accepted": accepted, "agent_lines": len(agent_lines), "shim_lines": len(shim_lines),
        "lost": lost_n, "duplicated": dup_n, "unexpected": unexp_n,
        "crash_events": len(crash_events),
    }

    bad = [(r.host, r.problems) for r in received if r.problems]
    bad += [(r.host, "stream=%r" % r.stream) for r in received if r.stream not in ("stdout", "stderr")]
    if vendor == "datadog":
        bad += [(r.host, f"shim line without logdrain.origin=shim: {r.message!r}")
                for r in shim_lines if not r.shim_marked]
        bad += [(r.host, f"logdrain.origin=shim on an agent line: {r.message!r}")
                for r in agent_lines if r.shim_marked]
    v.check(f"{vendor}: every entry has the contract's fields", not bad and received,
            f"{len(received)} entries checked" if not bad else f"{len(bad)} bad: {examples(bad)}")

    hosts = {r.host for r in received}
    replicas = set(run["replica_hosts"])
    v.check(f"{vendor}: one distinct host per replica", hosts == replicas and len(replicas) == 3,
            f"hosts {sorted(map(str, hosts))}, replicas {sorted(replicas)}")

    v.check(f"{vendor}: no agent line lost", ledger.total() > 0 and lost_n == 0,
            f"{ledger.total() - lost_n} of {ledger.total()} written lines arrived"
            + (f"; missing: {examples(_describe_lost(lost, ledger))}" if lost_n else ""))
    v.check(f"{vendor}: no line that no agent wrote", unexp_n == 0,
            "none" if not unexp_n else f"{unexp_n}: {examples(unexpected)}")

    seqs = defaultdict(set)
    for r in agent_lines:
        tagged = seq_of(r.message) if isinstance(r.message, str) else None
        if tagged:
            seqs[(r.host, tagged[1])].add(tagged[0])
    gaps = []
    for (host, boot), got_seqs in sorted(seqs.items()):
        missing = set(range(1, max(got_seqs) + 1)) - got_seqs
        if missing:
            gaps.append(f"{host}/{boot}: {len(missing)} missing below {max(got_seqs)} (first {min(missing)})")
    v.check(f"{vendor}: seqs contiguous from 1 per (replica, boot)", seqs and not gaps,
            f"{len(seqs)} boots, no gap" if not gaps else examples(gaps))

    expected = ledger.crashes
    v.check(f"{vendor}: every crash arrived as '{CRASH_EVENT}'",
            sum(expected.values()) > 0 and crashes_seen == expected,
            f"{sum(crashes_seen.values())} crash events for {sum(expected.values())} crashes"
            + (" (no agent crashed during the run: lower DEMO_LIFETIME)" if not expected else "")
            + (f"; per host seen {dict(crashes_seen)} written {dict(expected)}" if crashes_seen != expected else ""))

    _check_window(v, vendor, "lines written while the killed gateway was down arrived",
                  ledger, received, None, run["t_kill_ms"], run["t_gw1_started_ms"], None)
    _check_failover(v, vendor, ledger, received, run)
    _check_window(v, vendor, "lines the cut-off replica wrote while disconnected arrived after the reconnection",
                  ledger, received, run["disconnected_host"], run["t_disconnected_ms"],
                  run["t_reconnect_ms"], run["t_reconnect_ms"])

    # The backlog had its only copy on the killed gateway's disk, so it can
    # only have arrived after that gateway came back.
    backlog = run["gateway1_backlog"].get(vendor, 0)
    after = prom_sum(metrics.get("victim.final") or "", "logdrain_delivered_lines_total", destination=vendor)
    late = sum(1 for r in received if isinstance(r.timestamp, int) and r.timestamp < run["t_kill_ms"]
               and r.arrived is not None and r.arrived >= run["t_gw1_started_ms"])
    v.check(f"{vendor}: the killed gateway ({run.get('victim')}) delivered its disk backlog after the restart",
            backlog > 0 and late >= backlog and after >= backlog,
            f"{backlog:.0f} lines acked but not delivered when it was killed; "
            f"{late} lines read before the kill arrived after its restart; "
            f"the restarted gateway counts {after:.0f} delivered"
            + ("" if backlog > 0 else " (no backlog was built: the test could not show it)"))

    total = delivered_by_gateways(metrics, vendor)
    figures[vendor]["metrics_delivered"] = total
    if vendor == "cloudwatch":
        # moto is cut off the network rather than told to refuse: a request
        # it processed just before the cut may never have been answered, so
        # it can hold more than the gateways counted.
        ok = accepted > 0 and total <= accepted
        how = f"sum of gateway counters {total:.0f} <= events in moto {accepted}"
    else:
        ok = accepted > 0 and total == accepted
        how = f"sum of gateway counters {total:.0f} == entries the intake accepted {accepted}"
    v.check(f"{vendor}: delivered_lines_total matches the stand-in", ok,
            how + f" (= {accepted - dup_n - unexp_n} distinct lines + {dup_n} duplicates + {unexp_n} unexpected)")


def _describe_lost(lost, ledger):
    when = {}
    for host, t, key in ledger.written:
        when.setdefault(key, (host, t))
    return [f"{when.get(k, ('?', '?'))[0]}@{when.get(k, ('?', '?'))[1]} {k[1]} {k[2][:70]!r} x{n}"
            for k, n in lost.items()]


def _check_failover(v, vendor, ledger, received, run):
    """Each replica's records written while the killed gateway was down, and
    arrived before it came back, can only have gone through the other one."""
    start, end = run["t_kill_ms"], run["t_gw1_started_ms"]
    first_arrival = {}
    for r in received:
        if r.arrived is not None:
            first_arrival[r.key] = min(r.arrived, first_arrival.get(r.key, r.arrived))
    per_host = {}
    for host in run["replica_hosts"]:
        written = [(h, s, m) for h, _, _, t, s, m in ledger.records if h == host and start <= t <= end]
        through = [k for k in written if first_arrival.get(k, end) < end]
        per_host[host] = (len(through), len(written))
    ok = all(through > 0 for through, _ in per_host.values())
    v.check(f"{vendor}: every replica delivered while {run.get('victim')} was down", ok,
            "records written during the outage that arrived before it came back, per replica: "
            + ", ".join(f"{h} {t} of {w}" for h, (t, w) in sorted(per_host.items())))


def _check_window(v, vendor, title, ledger, received, host, start, end, arrive_after):
    """Records written in [start, end] (by `host`, or anyone) all arrived;
    with `arrive_after`, none of them, nor a shim event of that time, before
    that moment."""
    wanted = [(h, s, m) for h, _, _, t, s, m in ledger.records
              if start <= t <= end and (host is None or h == host)]
    arrivals = defaultdict(list)
    for r in received:
        arrivals[r.key].append(r.arrived)
    missing = [k for k in wanted if not arrivals.get(k)]
    # The shim's own events of that time (a crash while cut off) must wait too.
    shim_events = [r for r in received if r.from_shim and (host is None or r.host == host)
                   and isinstance(r.timestamp, int) and start <= r.timestamp <= end]
    early = []
    if arrive_after is not None:
        checked = [(k, [a for a in arrivals.get(k, []) if a is not None]) for k in wanted if arrivals.get(k)]
        checked += [(r.key, [r.arrived] if r.arrived is not None else []) for r in shim_events]
        for k, times in checked:
            if not times:
                early.append(f"{k[2][:60]!r} has no arrival time")
            elif min(times) < arrive_after:
                early.append(f"{k[2][:60]!r} arrived {arrive_after - min(times)} ms before")
    ok = bool(wanted) and not missing and not early
    detail = f"{len(wanted) - len(missing)} of {len(wanted)} records arrived"
    if arrive_after is not None:
        detail += f", with {len(shim_events)} shim events of that time, none before the reconnection"
    if not wanted:
        detail = "no record was written in that window: the test could not show it"
    if missing:
        detail += f"; missing {examples(k[2][:60] for k in missing)}"
    if early:
        detail = detail.replace(", none before the reconnection", "") + f"; too early: {examples(early)}"
    v.check(f"{vendor}: {title}", ok, detail)


def verify(directory):
    run, err = read_json(os.path.join(directory, "run.json"))
    if run is None:
        print(f"check.py: {err}", file=sys.stderr)
        return 2
    agent_id = run["agent_id"]
    ledger = Ledger(os.path.join(directory, "ledger"))
    metrics = {name: read_text(os.path.join(directory, "metrics", f"{name}.prom"))
               for name in ("victim.before-kill", "victim.final", "survivor.final")}
    stats, _ = read_json(os.path.join(directory, "intake", "stats.json"))
    requests, _ = read_json(os.path.join(directory, "intake", "requests.json"))
    arrivals = intake_arrivals(requests if isinstance(requests, list) else [])

    v = Verdict()
    figures = {}
    print(f"produced: {ledger.total()} agent lines ({len(ledger.records)} records) in "
          f"{len(ledger.boots)} boots on {len(ledger.hosts)} replicas; "
          f"{sum(ledger.crashes.values())} crashes (exit 1), exits {dict(ledger.exits)}")
    v.check("the demo agents wrote lines on 3 replicas", len(ledger.hosts) == 3 and ledger.total() > 0,
            f"hosts {sorted(ledger.hosts)}")
    v.check("every demo agent run ended (stopped or crashed) before counting", not ledger.unfinished,
            "all ledgers closed" if not ledger.unfinished else f"still open: {examples(ledger.unfinished)}")
    print(f"{run.get('survivor')} held {run.get('gateway2_streams_during_outage')} shim streams when scraped during "
          f"{run.get('victim')}'s outage (a replica whose agent just crashed may be between two streams)")
    v.check("the cut-off replica really was cut off",
            run.get("disconnected_host") in run["replica_hosts"],
            f"replica {run.get('disconnected_host')} disconnected for "
            f"{(run['t_reconnect_ms'] - run['t_disconnected_ms']) / 1000:.0f} s")

    for vendor in VENDORS:
        if vendor == "cloudwatch":
            events, why = read_json(os.path.join(directory, "cloudwatch.json"))
            if not isinstance(events, list):
                v.check(f"{vendor}: events readable from moto", False, why or f"unexpected answer {events!r:.200}")
                figures[vendor] = None
                continue
            received = list(cloudwatch_lines(events, agent_id))
            accepted = len(events)
        else:
            entries, why = read_json(os.path.join(directory, "intake", f"{vendor}.json"))
            if not isinstance(entries, list):
                v.check(f"{vendor}: entries readable from the intake", False,
                        why or f"the intake answered {json.dumps(entries)[:200]}")
                figures[vendor] = None
                continue
            received = list({"datadog": datadog_lines, "sentry": sentry_lines,
                             "newrelic": newrelic_lines}[vendor](entries, arrivals, agent_id))
            accepted = ((stats or {}).get("vendors", {}).get(vendor) or {}).get("entries", 0)
        verify_vendor(v, vendor, received, accepted, ledger, run, metrics, figures)

    print_figures(ledger, figures, metrics, stats)
    print_diagnosis(metrics, stats)
    return 0 if v.print() else 1


def print_figures(ledger, figures, metrics, stats):
    produced = ledger.total()
    print("\nfigures (agent lines; shim lines are the shim's own events):")
    print(f"  {'vendor':<11}{'accepted':>10}{'agent':>9}{'lost':>7}{'dup':>7}{'unexp':>7}"
          f"{'shim':>6}{'crash ev':>10}{'metrics':>9}")
    print(f"  {'produced':<11}{'':>10}{produced:>9}{'':>7}{'':>7}{'':>7}{'':>6}"
          f"{sum(ledger.crashes.values()):>10}")
    for vendor in VENDORS:
        f = figures.get(vendor)
        if f is None:
            print(f"  {vendor:<11}{'no data':>10}")
            continue
        print(f"  {vendor:<11}{f['accepted']:>10}{f['agent_lines']:>9}{f['lost']:>7}{f['duplicated']:>7}"
              f"{f['unexpected']:>7}{f['shim_lines']:>6}{f['crash_events']:>10}"
              f"{f.get('metrics_delivered', 0):>9.0f}")
    dropped = sum(prom_sum(t, "logdrain_dropped_lines_total") for t in metrics.values() if t)
    dups = sum(prom_sum(t, "logdrain_duplicate_lines_total") for t in metrics.values() if t)
    print(f"  gateways: dropped lines {dropped:.0f}; resent lines de-duplicated at ingest {dups:.0f}")


def print_diagnosis(metrics, stats):
    """Why a vendor may have nothing: routes the gateway parked, and what the
    intake answered."""
    notes = []
    for name, text in metrics.items():
        for sample, labels, value in prom_samples(text or ""):
            if sample == "logdrain_route_blocked" and value > 0:
                notes.append(f"{name}: route {labels.get('destination')} blocked ({labels.get('reason')})")
    for vendor, s in sorted(((stats or {}).get("vendors") or {}).items()):
        refused = {k: n for k, n in (s.get("by_status") or {}).items() if not str(k).startswith("2")}
        if refused:
            notes.append(f"intake {vendor}: answers other than 2xx {refused}")
    if notes:
        print("\ndiagnosis:")
        for note in sorted(set(notes)):
            print(f"  {note}")


# ------------------------------------------------------------ subcommands --

def youngest(directory):
    """Prints the host whose running demo agent started last: the replica
    least likely to crash soon (e2e.sh cuts that one off the network)."""
    newest = {}
    for name in os.listdir(directory):
        if not name.endswith(".jsonl"):
            continue
        host = name[: -len(".jsonl")].rpartition("-")[0]
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            lines = [json.loads(raw) for raw in f if raw.strip()]
        if not lines or "exit" in lines[-1]:
            continue
        started = lines[0]["t"]
        if started > newest.get(host, (0, ""))[0]:
            newest[host] = (started, name)
    if not newest:
        print("check.py: no running demo agent in the ledger", file=sys.stderr)
        return 1
    print(max(newest, key=lambda h: newest[h][0]))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[1], argv[2:]
    if command == "verify" and len(args) == 1:
        return verify(args[0])
    if command == "entries" and len(args) == 1:
        stats = json.load(sys.stdin)
        print(((stats.get("vendors") or {}).get(args[0]) or {}).get("entries", 0))
        return 0
    if command == "hosts" and len(args) == 1:
        entries = json.load(sys.stdin)
        print(len({e.get(args[0]) for e in entries if isinstance(e, dict) and e.get(args[0])}))
        return 0
    if command == "metric" and args:
        labels = dict(a.split("=", 1) for a in args[1:])
        print(f"{prom_sum(sys.stdin.read(), args[0], **labels):.0f}")
        return 0
    if command == "youngest" and len(args) == 1:
        return youngest(args[0])
    if command == "scraped-at" and not args:
        match = re.search(r"scraped_at_unix_ms=(\d+)", sys.stdin.readline())
        print(match.group(1) if match else 0)
        return 0
    print(f"check.py: unknown command {' '.join(argv[1:])!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
