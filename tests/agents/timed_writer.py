"""A test agent that times its own writes to stdout.

Usage: timed_writer.py COUNT REPORT_PATH

Writes COUNT numbered lines to stdout as fast as it can, one write(2) call
per line, and measures how long each call takes. Writes the 50th and 99th
percentile and the maximum, in nanoseconds, to REPORT_PATH as
"p50_ns p99_ns max_ns". Under agent-shim this shows whether the shim ever
holds up the agent's writes (for example while its gateway is down).
"""

import os
import sys
import time


def main() -> None:
    count = int(sys.argv[1])
    report = sys.argv[2]
    durations = []
    for i in range(1, count + 1):
        data = f"timed {i}\n".encode()
        start = time.perf_counter_ns()
        while data:
            written = os.write(1, data)
            data = data[written:]
        durations.append(time.perf_counter_ns() - start)
    durations.sort()

    def pick(q: float) -> int:
        return durations[min(len(durations) - 1, int(q * len(durations)))]

    # Written aside and renamed: the test waits for the file to exist and
    # must never read it half written.
    partial = report + ".partial"
    with open(partial, "w", encoding="ascii") as out:
        out.write(f"{pick(0.50)} {pick(0.99)} {durations[-1]}\n")
    os.replace(partial, report)


if __name__ == "__main__":
    main()
