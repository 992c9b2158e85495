#!/usr/bin/env python3
"""demo-agent: a small stand-in for an AI agent process, run under agent-shim
in the docker compose fleet. Standard library only.

It logs the way agents really do:
  * Python `logging` lines on stderr (INFO, WARNING, ERROR), the default of
    Python's logging;
  * plain lines and JSON lines on stdout;
  * now and then a handled error with a multi-line traceback.
After a random lifetime it crashes: it logs a CRITICAL line with the
traceback and exits with code 1, so that compose restarts it. On SIGTERM
(`docker compose stop`) it logs that it stops and exits with code 0.

Every record's first line carries `seq=N boot=ID` (JSON lines: the fields
"seq" and "boot"). N counts this run's records from 1 with no gaps; ID is
random per run. Traceback lines follow their record's first line and carry
no number.

With DEMO_LEDGER_DIR set, it also appends every line it wrote, after writing
it, to DIR/<hostname>-<boot>.jsonl as {"t": ms, "s": "stdout"|"stderr",
"m": line}, and its exit as {"t": ms, "exit": code}. tests/compose uses the
ledger to count what was produced.

Environment:
  DEMO_RECORDS_PER_SECOND  records per second            (default 10)
  DEMO_LIFETIME            seconds until the crash, "MIN-MAX" drawn at
                           random, or "0" for never      (default 20-60)
  DEMO_LEDGER_DIR          where to keep the ledger      (default: none)
"""

import json
import logging
import os
import random
import signal
import socket
import sys
import time
import traceback

EXIT_CRASH = 1


class Config:
    """The environment, checked; a bad value stops the agent with exit 2."""

    def __init__(self, env):
        self.rate = self._positive_float(env, "DEMO_RECORDS_PER_SECOND", "10")
        self.lifetime = self._lifetime(env.get("DEMO_LIFETIME", "20-60"))
        self.ledger_dir = env.get("DEMO_LEDGER_DIR") or None

    @staticmethod
    def _positive_float(env, name, default):
        raw = env.get(name, default)
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ValueError(f"{name}={raw!r} is not a positive number; use e.g. {default}")
        return value

    @staticmethod
    def _lifetime(raw):
        """(min, max) seconds, or None for never crashing."""
        if raw.strip() == "0":
            return None
        try:
            low, _, high = raw.partition("-")
            low, high = float(low), float(high or low)
        except ValueError:
            low = high = -1.0
        if low <= 0 or high < low:
            raise ValueError(
                f"DEMO_LIFETIME={raw!r} is not a range of seconds; use MIN-MAX like 20-60, or 0"
            )
        return (low, high)


class Output:
    """Writes whole lines to stdout/stderr, then records them in the ledger."""

    def __init__(self, ledger_path):
        self.streams = {"stdout": sys.stdout, "stderr": sys.stderr}
        self.ledger = open(ledger_path, "a", buffering=1, encoding="utf-8") if ledger_path else None

    def line(self, stream, text):
        for physical in text.split("\n"):
            out = self.streams[stream]
            out.write(physical + "\n")
            out.flush()
            if self.ledger:
                entry = {"t": int(time.time() * 1000), "s": stream, "m": physical}
                self.ledger.write(json.dumps(entry) + "\n")

    def exit(self, code):
        if self.ledger:
            self.ledger.write(json.dumps({"t": int(time.time() * 1000), "exit": code}) + "\n")
            self.ledger.close()


class OutputHandler(logging.Handler):
    """A logging handler that writes through `Output` (stderr, like
    logging's default StreamHandler)."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def emit(self, record):
        try:
            self.output.line("stderr", self.format(record))
        except Exception:  # noqa: BLE001 - logging's own contract
            self.handleError(record)


class UpstreamError(Exception):
    pass


def call_model(prompt_tokens):
    """A call that fails in a realistic way, for the tracebacks."""
    if prompt_tokens > 0:
        raise UpstreamError(f"model backend returned 502 after {prompt_tokens} prompt tokens")


def handle_job(job_id, prompt_tokens):
    try:
        call_model(prompt_tokens)
    except UpstreamError as err:
        raise RuntimeError(f"job {job_id} failed") from err


class Agent:
    def __init__(self, config, output, boot):
        self.config = config
        self.out = output
        self.boot = boot
        self.seq = 0
        self.stopping = False
        self.log = logging.getLogger("demo.agent")
        self.worker_log = logging.getLogger("demo.worker")

    def tag(self):
        self.seq += 1
        return f"seq={self.seq} boot={self.boot}"

    def record(self, rng):
        """Writes one record of a randomly chosen kind."""
        kind = rng.choices(
            ["info", "stdout", "json", "warning", "error"], weights=[40, 25, 20, 10, 5]
        )[0]
        job = rng.randrange(10_000, 99_999)
        if kind == "info":
            self.worker_log.info(
                "handled request path=/v1/sessions/%d status=200 latency_ms=%d %s",
                job,
                rng.randrange(3, 400),
                self.tag(),
            )
        elif kind == "stdout":
            self.out.line(
                "stdout",
                f"[worker-{rng.randrange(1, 5)}] generated tokens={rng.randrange(20, 900)} "
                f"model=demo-small {self.tag()}",
            )
        elif kind == "json":
            self.seq += 1
            self.out.line(
                "stdout",
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "level": "info",
                        "logger": "demo.metrics",
                        "msg": "heartbeat",
                        "active_sessions": rng.randrange(0, 12),
                        "seq": self.seq,
                        "boot": self.boot,
                    }
                ),
            )
        elif kind == "warning":
            self.worker_log.warning(
                "slow upstream call latency_ms=%d retrying %s", rng.randrange(1500, 9000), self.tag()
            )
        else:
            try:
                handle_job(job, rng.randrange(100, 4000))
            except RuntimeError:
                self.worker_log.exception("job %d failed %s", job, self.tag())

    def crash(self):
        try:
            handle_job("session-broker", 1)
        except RuntimeError:
            self.log.critical("unrecoverable error, exiting %s", self.tag(), exc_info=True)

    def run(self, rng):
        started = time.monotonic()
        lifetime = None
        if self.config.lifetime:
            lifetime = rng.uniform(*self.config.lifetime)
        self.log.info("demo agent starting pid=%d %s", os.getpid(), self.tag())
        interval = 1.0 / self.config.rate
        while not self.stopping:
            if lifetime is not None and time.monotonic() - started >= lifetime:
                self.crash()
                return EXIT_CRASH
            self.record(rng)
            time.sleep(interval * rng.uniform(0.5, 1.5))
        self.log.info("received SIGTERM, shutting down %s", self.tag())
        return 0


def main():
    try:
        config = Config(os.environ)
    except ValueError as err:
        print(f"demo-agent: {err}", file=sys.stderr)
        return 2
    boot = os.urandom(4).hex()
    ledger_path = None
    if config.ledger_dir:
        ledger_path = os.path.join(config.ledger_dir, f"{socket.gethostname()}-{boot}.jsonl")
    try:
        output = Output(ledger_path)
    except OSError as err:
        print(f"demo-agent: cannot open the ledger {ledger_path}: {err}; "
              "fix DEMO_LEDGER_DIR or unset it", file=sys.stderr)
        return 2

    handler = OutputHandler(output)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    agent = Agent(config, output, boot)

    def on_term(_signum, _frame):
        agent.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        code = agent.run(random.Random())
    except Exception:  # noqa: BLE001 - report like an uncaught exception would
        output.line("stderr", traceback.format_exc().rstrip("\n"))
        code = EXIT_CRASH
    output.exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
