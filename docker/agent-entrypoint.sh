#!/bin/sh
# Entrypoint of an agent replica: reads the ingest token that the compose
# `token` service wrote (so the replicas never see the gateways' signing key),
# then runs agent-shim as PID 1 around the command given (the demo agent).
#
#   LOGDRAIN_TOKEN       used as is when set
#   LOGDRAIN_TOKEN_FILE  otherwise the shim reads the token from this file (default
#                        /run/logdrain-token/token), so it is in no environment or
#                        command line; waits up to LOGDRAIN_TOKEN_WAIT seconds
#                        (default 60) for it
set -eu

if [ -z "${LOGDRAIN_TOKEN:-}" ]; then
    token_file=${LOGDRAIN_TOKEN_FILE:-/run/logdrain-token/token}
    wait_s=${LOGDRAIN_TOKEN_WAIT:-60}
    waited=0
    while [ ! -s "$token_file" ]; do
        if [ "$waited" -ge "$wait_s" ]; then
            echo "agent-entrypoint: no ingest token in $token_file after ${wait_s}s;" \
                "set LOGDRAIN_TOKEN, or check the compose 'token' service" >&2
            exit 2
        fi
        sleep 1
        waited=$((waited + 1))
    done
    LOGDRAIN_TOKEN_FILE=$token_file
    export LOGDRAIN_TOKEN_FILE
else
    unset LOGDRAIN_TOKEN_FILE
fi
unset LOGDRAIN_TOKEN_WAIT
exec agent-shim -- "$@"
