"""Dumps every CloudWatch Logs event that moto_server holds, as JSON on stdout.

Runs inside the `cloudwatch` compose service, with the boto3 that comes with
moto (tests/compose/e2e.sh pipes it to `/opt/moto/bin/python - REGION`):

  [{"group": ..., "stream": ..., "timestamp": ms, "ingestionTime": ms,
    "message": ...}, ...]

It only reads: it must not create or change anything in moto.
"""

import json
import sys

import boto3

ENDPOINT = "http://127.0.0.1:5000"


def main():
    if len(sys.argv) != 2:
        print("usage: cloudwatch_dump.py REGION", file=sys.stderr)
        return 2
    logs = boto3.client(
        "logs",
        endpoint_url=ENDPOINT,
        region_name=sys.argv[1],
        # moto does not check credentials; boto3 only needs some to sign.
        aws_access_key_id="compose-e2e-reader",
        aws_secret_access_key="compose-e2e-reader",
    )
    events = []
    for page in logs.get_paginator("describe_log_groups").paginate():
        for group in page["logGroups"]:
            name = group["logGroupName"]
            for streams in logs.get_paginator("describe_log_streams").paginate(logGroupName=name):
                for stream in streams["logStreams"]:
                    events.extend(read_stream(logs, name, stream["logStreamName"]))
    json.dump(events, sys.stdout)
    return 0


MAX_PAGES = 10_000


def read_stream(logs, group, stream):
    """Every event of one stream, oldest first."""
    token = None
    for _ in range(MAX_PAGES):
        kwargs = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        if token:
            kwargs["nextToken"] = token
        page = logs.get_log_events(**kwargs)
        for event in page["events"]:
            yield {
                "group": group,
                "stream": stream,
                "timestamp": event["timestamp"],
                "ingestionTime": event.get("ingestionTime"),
                "message": event["message"],
            }
        # The forward token repeats once the end of the stream is reached.
        if page.get("nextForwardToken") in (None, token):
            return
        token = page["nextForwardToken"]
    raise RuntimeError(f"{group}/{stream}: still more events after {MAX_PAGES} pages")


if __name__ == "__main__":
    sys.exit(main())
