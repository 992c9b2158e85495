#!/usr/bin/env bash
# How evenly real shims spread over a fleet of real gateways, and how many
# move when one gateway leaves and comes back.
#
# Starts G gateways on 127.0.0.1..G (same ports, each its own data dir) and
# N agent-shim processes (agent-server ids spread-001..N, each wrapping
# `sleep`), all given the same comma list of gateways. Then:
#   1. counts, from each gateway's status API, the replicas it holds a
#      stream of (every shim's stream must be up);
#   2. stops gateway 2 (SIGTERM) and counts again: which shims moved;
#   3. starts gateway 2 again and waits until it holds as many streams as
#      at the start (shims check for their first-ranked gateway every
#      --rebalance-after to twice that): which shims moved back.
# Prints the counts and one JSON line.
#
# Needs: curl, jq. Uses target/debug binaries unless --bin-dir says
# otherwise (spreading does not depend on the build profile).
#
# Usage: benches/spread.sh [--shims N] [--gateways G] [--port P] [--rebalance-after D] [--bin-dir DIR]
set -euo pipefail

SHIMS=300
GATEWAYS=3
PORT=50151
REBALANCE=2s
BIN_DIR="$(cd "$(dirname "$0")/.." && pwd)/target/debug"
while [ $# -gt 0 ]; do
    case "$1" in
        --shims) SHIMS="$2"; shift 2 ;;
        --gateways) GATEWAYS="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --rebalance-after) REBALANCE="$2"; shift 2 ;;
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in curl jq; do
    command -v "$tool" >/dev/null || { echo "spread.sh needs $tool" >&2; exit 2; }
done
GW="$BIN_DIR/logdrain-gateway"
SHIM="$BIN_DIR/agent-shim"
[ -x "$GW" ] && [ -x "$SHIM" ] || { echo "build first: cargo build --workspace --bins" >&2; exit 2; }

WORK="$(mktemp -d)"
export LOGDRAIN_SIGNING_KEY="spread-bench-signing-key-0123456789"
ADMIN="spread-bench-admin-token-0123456789"
declare -a GW_PIDS SHIM_PIDS
cleanup() {
    for pid in "${SHIM_PIDS[@]:-}" "${GW_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start_gateway() {
    local i="$1"
    LOGDRAIN_DATA_DIR="$WORK/gw$i" LOGDRAIN_ADMIN_TOKEN="$ADMIN" \
        LOGDRAIN_GRPC_LISTEN="127.0.0.$i:$PORT" LOGDRAIN_HTTP_LISTEN="127.0.0.$i:$((PORT + 1))" \
        LOGDRAIN_SHUTDOWN_GRACE=2s "$GW" serve >>"$WORK/gw$i.log" 2>&1 &
    GW_PIDS[$i]=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.$i:$((PORT + 1))/readyz" >/dev/null && return 0
        sleep 0.1
    done
    echo "gateway $i did not start: $(cat "$WORK/gw$i.log")" >&2
    exit 1
}

# The agent-server ids gateway $1 holds an open stream of, one a line.
held_by() {
    curl -sf -H "Authorization: Bearer $ADMIN" "http://127.0.0.$1:$((PORT + 1))/v1/status" |
        jq -r '.agents[].replicas[] | select(.connected_streams > 0) | .agent_server_id' | sort
}

# Waits until the gateways $@ together hold every shim's stream, then
# writes each gateway's replicas to $WORK/<phase>.<i>.
snapshot() {
    local phase="$1"; shift
    for _ in $(seq 600); do
        local total=0
        for i in "$@"; do
            held_by "$i" >"$WORK/$phase.$i" || : >"$WORK/$phase.$i"
            total=$((total + $(wc -l <"$WORK/$phase.$i")))
        done
        [ "$total" -eq "$SHIMS" ] && return 0
        sleep 0.2
    done
    echo "phase $phase: the gateways hold $total streams, not $SHIMS" >&2
    exit 1
}

LIST=""
for i in $(seq "$GATEWAYS"); do
    start_gateway "$i"
    LIST="${LIST:+$LIST,}http://127.0.0.$i:$PORT"
done
TOKEN="$("$GW" token --agent-id spread)"
for n in $(seq -f %03g "$SHIMS"); do
    LOGDRAIN_TOKEN="$TOKEN" "$SHIM" --gateway "$LIST" --agent-id spread \
        --agent-server-id "spread-$n" --buffer-bytes 2MiB --rebalance-after "$REBALANCE" -- sleep 3600 \
        >/dev/null 2>>"$WORK/shims.log" &
    SHIM_PIDS+=($!)
done

ALL=$(seq "$GATEWAYS")
snapshot start $ALL
OTHERS=$(seq "$GATEWAYS" | grep -vx 2)
kill -TERM "${GW_PIDS[2]}"; wait "${GW_PIDS[2]}" 2>/dev/null || true
snapshot left $OTHERS
start_gateway 2
RETURN_START=$SECONDS
snapshot back $ALL
for _ in $(seq 600); do
    [ "$(wc -l <"$WORK/back.2")" -ge "$(wc -l <"$WORK/start.2")" ] && break
    sleep 0.2
    snapshot back $ALL
done

count() { wc -l <"$WORK/$1"; }
echo "shims: $SHIMS over $GATEWAYS gateways"
JSON="{\"shims\":$SHIMS,\"gateways\":$GATEWAYS"
for i in $ALL; do
    echo "gateway $i: $(count start.$i) streams at start, $([ "$i" = 2 ] && echo 0 || count left.$i) after gateway 2 left, $(count back.$i) after it returned"
    JSON="$JSON,\"gateway_$i\":$(count start.$i)"
done
STAYED=0
for i in $OTHERS; do STAYED=$((STAYED + $(comm -12 "$WORK/start.$i" "$WORK/left.$i" | wc -l))); done
echo "gateway 2 left: $(count start.2) of its shims moved; $STAYED of the $((SHIMS - $(count start.2))) others stayed put"
RETURN_SECONDS=$((SECONDS - RETURN_START))
RESTORED=true
for i in $ALL; do cmp -s "$WORK/start.$i" "$WORK/back.$i" || RESTORED=false; done
echo "gateway 2 returned: $(count back.2) shims moved back to it within ${RETURN_SECONDS}s (--rebalance-after $REBALANCE); every shim where it started: $RESTORED"
echo "$JSON,\"moved_when_2_left\":$(count start.2),\"others_stayed\":$STAYED,\"moved_back_when_2_returned\":$(count back.2),\"restored\":$RESTORED,\"return_seconds\":$RETURN_SECONDS}"
