#!/usr/bin/env python3
"""scraper: polls the Prometheus /metrics endpoint of every gateway of the
docker compose fleet. Standard library only.

It stands in for a Prometheus server, which cannot be pulled on machines
without registry access. It keeps the latest scrape of each target, nothing
older:

  SCRAPE_DIR/<target>.prom   the latest successful scrape, as served, after a
                             first line "# scraper: target=... url=...
                             scraped_at_unix_ms=..." (replaced atomically)
  SCRAPE_DIR/status.json     per target: up, scrapes, failures, last_error,
                             last_attempt_unix_ms, last_success_unix_ms

and prints one summary line per target and scrape (delivered lines per
destination, queue depth, streams), so `docker compose logs scraper` shows
the fleet at a glance.

Environment:
  SCRAPE_TARGETS   comma-separated HOST:PORT  (default gateway-1:9090,gateway-2:9090)
  SCRAPE_INTERVAL  seconds between rounds     (default 5)
  SCRAPE_TIMEOUT   seconds per request        (default 3)
  SCRAPE_DIR       where files are written    (default /var/lib/scraper)
"""

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ConfigError(Exception):
    pass


def parse_targets(raw):
    targets = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"SCRAPE_TARGETS entry {item!r} is not HOST:PORT; write e.g. gateway-1:9090,gateway-2:9090"
            )
        targets.append((host, f"http://{item}/metrics"))
    if not targets:
        raise ConfigError("SCRAPE_TARGETS is empty; write e.g. gateway-1:9090,gateway-2:9090")
    return targets


def positive(env, name, default):
    raw = env.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} is not a positive number of seconds; use e.g. {default}")
    return value


def samples(text):
    """Yields (name, labels, value) for every sample of a Prometheus text."""
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        yield name, dict(LABEL.findall(labels or "")), number


def summary(text):
    delivered = {}
    depth = 0.0
    streams = 0.0
    for name, labels, value in samples(text):
        if name == "logdrain_delivered_lines_total":
            destination = labels.get("destination", "?")
            delivered[destination] = delivered.get(destination, 0.0) + value
        elif name == "logdrain_queue_depth_lines":
            depth += value
        elif name == "logdrain_active_streams":
            streams += value
    parts = [f"{d}={int(v)}" for d, v in sorted(delivered.items())] or ["none yet"]
    return f"delivered {' '.join(parts)}; queue_depth_lines={int(depth)} active_streams={int(streams)}"


def write_atomically(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def scrape(name, url, timeout, directory, status):
    now = int(time.time() * 1000)
    entry = status.setdefault(
        name,
        {"url": url, "up": False, "scrapes": 0, "failures": 0, "last_error": None,
         "last_attempt_unix_ms": None, "last_success_unix_ms": None},
    )
    entry["last_attempt_unix_ms"] = now
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as err:
        entry.update(up=False, failures=entry["failures"] + 1, last_error=str(err))
        print(f"scraper: {name} DOWN ({url}): {err}", flush=True)
        return
    header = f"# scraper: target={name} url={url} scraped_at_unix_ms={now}\n"
    write_atomically(os.path.join(directory, f"{name}.prom"), header + text)
    entry.update(up=True, scrapes=entry["scrapes"] + 1, last_error=None, last_success_unix_ms=now)
    print(f"scraper: {name} up: {summary(text)}", flush=True)


def main():
    env = os.environ
    try:
        targets = parse_targets(env.get("SCRAPE_TARGETS", "gateway-1:9090,gateway-2:9090"))
        interval = positive(env, "SCRAPE_INTERVAL", "5")
        timeout = positive(env, "SCRAPE_TIMEOUT", "3")
    except ConfigError as err:
        print(f"scraper: {err}", file=sys.stderr)
        return 2
    directory = env.get("SCRAPE_DIR", "/var/lib/scraper")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        print(f"scraper: cannot create SCRAPE_DIR {directory}: {err}", file=sys.stderr)
        return 2

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    print(f"scraper: every {interval:g}s: {', '.join(url for _, url in targets)}", flush=True)
    status = {}
    while not stopping:
        started = time.monotonic()
        for name, url in targets:
            scrape(name, url, timeout, directory, status)
        try:
            write_atomically(os.path.join(directory, "status.json"), json.dumps(status, indent=1))
        except OSError as err:
            print(f"scraper: cannot write {directory}/status.json: {err}", file=sys.stderr, flush=True)
        # Sleep in short steps so SIGTERM ends the loop promptly.
        while not stopping and time.monotonic() - started < interval:
            time.sleep(min(0.2, interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
