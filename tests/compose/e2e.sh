#!/usr/bin/env bash
# End-to-end test of the docker compose fleet (docker-compose.yml): three agent
# replicas, two gateways, the four vendor stand-ins and the metrics scraper.
#
#  1. builds what is missing (base image, release binaries, images) and brings
#     the fleet up;
#  2. lets it run, then makes every vendor refuse (the intake answers 503,
#     moto is cut off the network) so that the gateway serving the most
#     replicas (the shims spread by rendezvous hashing) holds a backlog on disk;
#  3. SIGKILLs that gateway: its shims fail over to the other; clears the
#     fault; starts it again, which must deliver its backlog;
#  4. cuts one agent replica off the network for 30 s, then reconnects it:
#     what it wrote meanwhile must arrive after the reconnection;
#  5. stops the agents (SIGTERM: the demo agents exit 0, the shims drain),
#     waits until deliveries settle, scrapes both gateways' /metrics;
#  6. collects what the stand-ins received and runs tests/compose/check.py,
#     which prints the figures (produced, delivered per vendor, lost,
#     duplicated) and the verdict; see its docs for what is proven and how;
#  7. tears everything down, volumes included, also on failure.
#
# Exit status: 0 when every check passed; 1 when a check failed, or when the
# test could not run at all (no Docker engine, no compose tool): it never
# passes silently.
#
# Environment (all optional):
#   E2E_BUILD             offline (default): docker/offline.sh builds the images on
#                         a local base image it makes when missing (needs root),
#                         with binaries built on this machine; pull: `compose
#                         build` builds them from the registry's Rust and Debian
#                         images, as `docker compose up` does
#   E2E_OUT               directory for the collected data (default: a new temp dir)
#   E2E_WARMUP_S          seconds of normal running before the failover (20)
#   E2E_FAULT_S           seconds the vendors refuse before a gateway is killed (6)
#   E2E_OUTAGE_S          seconds the killed gateway stays down after the fault is cleared (20)
#   E2E_DISCONNECT_S      seconds the replica is cut off (30)
#   DEMO_RECORDS_PER_SECOND, DEMO_LIFETIME   passed to the demo agents (10, 20-50)
#   COMPOSE_PROJECT_NAME  (default logdrain-e2e, so a running fleet is left alone)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/compose
cd "$ROOT"

export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-logdrain-e2e}
export COMPOSE_FILE=$ROOT/docker-compose.yml
export DEMO_RECORDS_PER_SECOND=${DEMO_RECORDS_PER_SECOND:-10}
export DEMO_LIFETIME=${DEMO_LIFETIME:-20-50}
WARMUP_S=${E2E_WARMUP_S:-20}
FAULT_S=${E2E_FAULT_S:-6}
OUTAGE_S=${E2E_OUTAGE_S:-20}
DISCONNECT_S=${E2E_DISCONNECT_S:-30}
AGENT_ID=demo-agent
FLEET_AWS_REGION=us-west-2
E2E_BUILD=${E2E_BUILD:-offline}
case $E2E_BUILD in offline | pull) ;; *) echo "e2e: E2E_BUILD=$E2E_BUILD: use offline or pull" >&2; exit 2 ;; esac
VENDORS=(datadog cloudwatch sentry newrelic)
# The compose file lets a shim drain for 60 s after its agent exits: a longer
# cut would lose the lines of an agent that crashes meanwhile, by design.
[ "$DISCONNECT_S" -lt 55 ] || { echo "e2e: E2E_DISCONNECT_S=$DISCONNECT_S must stay below 55 (the shims' 60 s drain timeout)" >&2; exit 2; }

log() { printf '[e2e %4ds] %s\n' "$SECONDS" "$*"; }
die() {
    log "FAIL: $*"
    exit 1
}
now_ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }

# ---- can this run at all? Say so loudly when not. ----
not_run() {
    {
        echo "########################################################################"
        echo "## COMPOSE END-TO-END TEST DID NOT RUN"
        echo "## $1"
        echo "## This is a failure, not a skip: fix the machine or the CI setup."
        echo "########################################################################"
    } >&2
    exit 1
}
command -v docker >/dev/null 2>&1 || not_run "the docker command is not installed"
if ! docker_error=$(docker info 2>&1 >/dev/null); then
    not_run "cannot reach a Docker engine: $(echo "$docker_error" | tail -n 1)"
fi
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    not_run "neither 'docker compose' (v2 plugin) nor 'docker-compose' is installed"
fi
command -v python3 >/dev/null 2>&1 || not_run "python3 is needed to check the results"
dc() { "${COMPOSE[@]}" "$@"; }
check() { python3 "$HERE/check.py" "$@"; }

OUT=${E2E_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/logdrain-compose-e2e.XXXXXX")}
mkdir -p "$OUT/metrics" "$OUT/intake" "$OUT/ledger"
# A fresh signing key per run; the gateways share it, the agents never see it.
LOGDRAIN_SIGNING_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export LOGDRAIN_SIGNING_KEY

UP=0
teardown() {
    local rc=$?
    trap - EXIT
    if [ "$UP" = 1 ]; then
        dc logs --no-color --timestamps >"$OUT/compose.log" 2>&1 || true
        log "tearing down (compose down -v)"
        dc down -v --remove-orphans --timeout 20 >"$OUT/down.log" 2>&1 ||
            log "WARNING: 'compose down -v' failed (see $OUT/down.log); remove project $COMPOSE_PROJECT_NAME by hand"
    fi
    log "collected data and container logs: $OUT"
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---- helpers that reach inside the compose network ----
# The stand-ins publish nothing on the host: queries run in the scraper
# container, which has curl and sits on the fleet's network.
intake() { # METHOD PATH [JSON_BODY]
    local args=(curl -fsS -X "$1" "http://intake:8080$2")
    [ $# -ge 3 ] && args+=(-H 'content-type: application/json' --data "$3")
    dc exec -T scraper "${args[@]}"
}
container_of() { dc ps -q "$1" | head -n 1; }
# Waits for a scrape of GATEWAY taken at or after SINCE_MS; copies it to FILE.
fresh_scrape() { # GATEWAY SINCE_MS FILE
    local deadline=$((SECONDS + 40)) at
    while :; do
        if dc exec -T scraper cat "/var/lib/scraper/$1.prom" >"$3.tmp" 2>/dev/null; then
            at=$(check scraped-at <"$3.tmp")
            if [ "$at" -ge "$2" ]; then
                mv "$3.tmp" "$3"
                return 0
            fi
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            die "no scrape of $1 newer than $2 within 40 s (see 'compose logs scraper' in $OUT/compose.log)"
        sleep 1
    done
}
metric() { # FILE NAME [LABEL=VALUE...]
    local file=$1
    shift
    check metric "$@" <"$file"
}
wait_healthy() { # SERVICE TIMEOUT_S
    local deadline=$((SECONDS + $2)) id state
    while :; do
        id=$(container_of "$1")
        state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || true)
        [ "$state" = healthy ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || die "$1 is not healthy after $2 s (state: ${state:-none})"
        sleep 1
    done
}
intake_entries() { # VENDOR: the count the intake accepted
    intake GET /_intake/stats | check entries "$1"
}

# ---- 1. build what is missing, bring the fleet up ----
build_started=$SECONDS
if [ "$E2E_BUILD" = offline ]; then
    log "building the images offline (docker/offline.sh: base image if missing, cargo, ${COMPOSE[*]} build)"
    "$ROOT/docker/offline.sh" >"$OUT/build.log" 2>&1 || {
        tail -n 30 "$OUT/build.log"
        die "docker/offline.sh failed (log above)"
    }
    export BASE_IMAGE=${LOGDRAIN_BASE_IMAGE:-logdrain-base:bookworm} BUILDER_IMAGE=${LOGDRAIN_BASE_IMAGE:-logdrain-base:bookworm}
else
    log "building the images from the registry's base images (${COMPOSE[*]} build)"
    dc build >"$OUT/build.log" 2>&1 || {
        tail -n 30 "$OUT/build.log"
        die "image build failed (log above)"
    }
fi
log "build phase $((SECONDS - build_started)) s"

dc down -v --remove-orphans >/dev/null 2>&1 || true
log "starting the fleet (project $COMPOSE_PROJECT_NAME)"
UP=1
t=$SECONDS
dc up -d >"$OUT/up.log" 2>&1 || {
    cat "$OUT/up.log"
    die "compose up failed (log above)"
}
mapfile -t AGENTS < <(dc ps -q agent)
[ "${#AGENTS[@]}" -eq 3 ] ||
    die "expected 3 agent replicas, ${COMPOSE[*]} started ${#AGENTS[@]} (is deploy.replicas honoured?)"
HOSTS=()
for id in "${AGENTS[@]}"; do HOSTS+=("$(docker inspect -f '{{.Config.Hostname}}' "$id")"); done
log "fleet up in $((SECONDS - t)) s; agent replicas: ${HOSTS[*]}"

deadline=$((SECONDS + 90))
until [ "$(intake GET '/_intake/datadog/entries' | check hosts host)" = 3 ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "no Datadog entries from all 3 replicas within 90 s"
    sleep 2
done
log "Datadog stand-in receives from all 3 replicas"

# ---- 2./3. backlog on one gateway, kill it, fail over, bring it back ----
log "running normally for ${WARMUP_S} s"
sleep "$WARMUP_S"
# Each shim ranks the gateways by its agent-server id (rendezvous hashing), so
# which gateway serves which replica differs from run to run: the one serving
# the most replicas (gateway-1 on a tie) is the one killed.
fresh_scrape gateway-1 "$(now_ms)" "$OUT/metrics/gateway-1.warm.prom"
fresh_scrape gateway-2 "$(now_ms)" "$OUT/metrics/gateway-2.warm.prom"
G1_WARM=$(metric "$OUT/metrics/gateway-1.warm.prom" logdrain_active_streams)
G2_WARM=$(metric "$OUT/metrics/gateway-2.warm.prom" logdrain_active_streams)
if [ "$G2_WARM" -gt "$G1_WARM" ]; then VICTIM=gateway-2 SURVIVOR=gateway-1; else VICTIM=gateway-1 SURVIVOR=gateway-2; fi
log "shim streams: gateway-1 $G1_WARM, gateway-2 $G2_WARM; $VICTIM is the one killed"
# Every vendor refuses: the intake answers 503, and moto (which cannot be
# told to fail) is cut off the network. $VICTIM keeps acking to disk.
CW=$(container_of cloudwatch)
NET=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{"\n"}}{{end}}' "$CW" | head -n 1)
T_FAULT=$(now_ms)
intake POST /_intake/faults '{"status":503}' >/dev/null || die "cannot inject a fault at the intake"
docker network disconnect "$NET" "$CW" || die "cannot disconnect the cloudwatch stand-in from $NET"
log "the intake answers 503 and moto is unreachable; waiting ${FAULT_S} s for a backlog"
sleep "$FAULT_S"
fresh_scrape "$VICTIM" "$(now_ms)" "$OUT/metrics/victim.before-kill.prom"
T_KILL=$(now_ms)
dc kill "$VICTIM" >/dev/null 2>&1 || die "cannot kill $VICTIM"
log "$VICTIM killed (SIGKILL)"
sleep 2
state=$(docker inspect -f '{{.State.Status}}' "$(container_of "$VICTIM")")
[ "$state" != running ] || die "$VICTIM is running again right after the kill: its restart policy restarted it"
sleep 3
intake DELETE /_intake/faults >/dev/null || die "cannot clear the fault at the intake"
docker network connect --alias cloudwatch "$NET" "$CW" || die "cannot reconnect the cloudwatch stand-in to $NET"
log "vendors reachable again; $VICTIM stays down for ${OUTAGE_S} s"
sleep "$OUTAGE_S"
fresh_scrape "$SURVIVOR" "$(now_ms)" "$OUT/metrics/survivor.during-outage.prom"
G2_STREAMS=$(metric "$OUT/metrics/survivor.during-outage.prom" logdrain_active_streams)
log "$SURVIVOR holds $G2_STREAMS shim streams"
T_GW1_START=$(now_ms)
dc start "$VICTIM" >/dev/null 2>&1 || die "cannot start $VICTIM again"
wait_healthy "$VICTIM" 60
log "$VICTIM back and healthy"

BEFORE=$OUT/metrics/victim.before-kill.prom
# Acked lines have left the shims' buffers: their only copy is on $VICTIM's disk.
acked=$(metric "$BEFORE" logdrain_acked_lines_total agent="$AGENT_ID")
backlog_json=""
declare -A BACKLOG
for vendor in "${VENDORS[@]}"; do
    delivered=$(metric "$BEFORE" logdrain_delivered_lines_total destination="$vendor")
    BACKLOG[$vendor]=$((acked - delivered))
    backlog_json+="${backlog_json:+, }\"$vendor\": ${BACKLOG[$vendor]}"
done
log "$VICTIM's backlog at the kill (acked minus delivered): { $backlog_json }"
deadline=$((SECONDS + 90))
while :; do
    fresh_scrape "$VICTIM" "$(now_ms)" "$OUT/metrics/victim.after-restart.prom"
    done_lines=$(metric "$OUT/metrics/victim.after-restart.prom" logdrain_delivered_lines_total destination=datadog)
    if [ "$done_lines" -ge "${BACKLOG[datadog]}" ]; then
        log "the restarted $VICTIM delivered $done_lines Datadog lines (backlog ${BACKLOG[datadog]})"
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "the restarted $VICTIM delivered only $done_lines of its ${BACKLOG[datadog]} Datadog backlog in 90 s"
        break
    fi
done

# ---- 4. cut one replica off the network ----
# The replica whose agent started last: the least likely to crash (and stop
# writing) while cut off.
rm -rf "$OUT/ledger-now" && mkdir -p "$OUT/ledger-now"
docker cp "${AGENTS[0]}:/var/lib/demo-agent/ledger/." - | tar -x -C "$OUT/ledger-now" ||
    die "cannot copy the demo agents' ledger out of ${AGENTS[0]}"
CUT_HOST=$(check youngest "$OUT/ledger-now")
CUT=""
for i in "${!HOSTS[@]}"; do [ "${HOSTS[$i]}" = "$CUT_HOST" ] && CUT=${AGENTS[$i]}; done
[ -n "$CUT" ] || die "the ledger names replica '$CUT_HOST', which compose does not run"
docker network disconnect "$NET" "$CUT" || die "cannot disconnect replica $CUT_HOST from $NET"
# Lines written from here on cannot leave the replica before the reconnection.
T_DISC=$(now_ms)
log "replica $CUT_HOST disconnected from $NET for ${DISCONNECT_S} s"
sleep "$DISCONNECT_S"
T_RECONN=$(now_ms)
docker network connect --alias agent "$NET" "$CUT" || die "cannot reconnect replica $CUT_HOST to $NET"
log "replica $CUT_HOST reconnected; letting it catch up for 20 s"
sleep 20

# ---- 5. stop producing, let deliveries settle ----
T_STOP=$(now_ms)
log "stopping the agents (SIGTERM; the shims drain)"
dc stop -t 75 agent >/dev/null 2>&1 || die "cannot stop the agents"
for id in "${AGENTS[@]}"; do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
    [ "$code" = 0 ] || log "WARNING: agent container ${id:0:12} exited with $code (0 expected after SIGTERM)"
done
docker cp "$CUT:/var/lib/demo-agent/ledger/." - | tar -x -C "$OUT/ledger" ||
    die "cannot copy the demo agents' ledger out of $CUT"
produced=$(cat "$OUT"/ledger/*.jsonl | grep -vc '^{"t": [0-9]*, "exit": ' || true)
crashes=$(cat "$OUT"/ledger/*.jsonl | grep -c '^{"t": [0-9]*, "exit": 1}$' || true)
log "the agents wrote $produced lines and crashed $crashes times; waiting for deliveries to settle"
last="" stable_since=$SECONDS deadline=$((SECONDS + 180))
while :; do
    stats=$(intake GET /_intake/stats) || die "cannot read the intake's stats"
    counts=""
    for vendor in datadog sentry newrelic; do counts+="$vendor=$(check entries "$vendor" <<<"$stats") "; done
    if [ "$counts" != "$last" ]; then
        last=$counts
        stable_since=$SECONDS
    fi
    dd=$(check entries datadog <<<"$stats")
    if [ "$dd" -ge $((produced + crashes)) ] && [ $((SECONDS - stable_since)) -ge 10 ]; then break; fi
    if [ $((SECONDS - stable_since)) -ge 30 ]; then
        log "nothing new arrived for 30 s"
        break
    fi
    [ "$SECONDS" -lt "$deadline" ] || {
        log "deliveries still changing after 180 s"
        break
    }
    sleep 3
done
log "settled: $counts"
T_SETTLED=$(now_ms)
fresh_scrape "$VICTIM" "$T_SETTLED" "$OUT/metrics/victim.final.prom"
fresh_scrape "$SURVIVOR" "$T_SETTLED" "$OUT/metrics/survivor.final.prom"

# ---- 6. collect and judge ----
intake GET /_intake/stats >"$OUT/intake/stats.json"
intake GET /_intake/requests >"$OUT/intake/requests.json"
for vendor in datadog sentry newrelic; do
    # Without -f: an intake that does not know the vendor yet answers with a
    # JSON error, which check.py reports.
    dc exec -T scraper curl -sS "http://intake:8080/_intake/$vendor/entries?detail=true" \
        >"$OUT/intake/$vendor.json" || true
done
dc exec -T cloudwatch /opt/moto/bin/python - "$FLEET_AWS_REGION" \
    <"$HERE/cloudwatch_dump.py" >"$OUT/cloudwatch.json" 2>"$OUT/cloudwatch.err" || true

hosts_json=$(printf '"%s", ' "${HOSTS[@]}")
cat >"$OUT/run.json" <<EOF
{
  "agent_id": "$AGENT_ID",
  "replica_hosts": [${hosts_json%, }],
  "t_fault_ms": $T_FAULT,
  "victim": "$VICTIM",
  "survivor": "$SURVIVOR",
  "t_kill_ms": $T_KILL,
  "t_gw1_started_ms": $T_GW1_START,
  "gateway1_backlog": { $backlog_json },
  "gateway2_streams_during_outage": $G2_STREAMS,
  "disconnected_host": "$CUT_HOST",
  "t_disconnected_ms": $T_DISC,
  "t_reconnect_ms": $T_RECONN,
  "t_stop_ms": $T_STOP,
  "t_settled_ms": $T_SETTLED
}
EOF
log "checking (tests/compose/check.py verify)"
check verify "$OUT"
