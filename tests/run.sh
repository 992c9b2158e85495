#!/usr/bin/env bash
# Runs every test of logdrain from a fresh clone.
#
# 1. Installs the Python test peers (moto_server for CloudWatch Logs) into
#    ./.venv, once per change of tests/requirements.txt.
# 2. Runs `cargo test --workspace`: unit tests, and the integration and
#    end-to-end tests that start the real binaries.
# 3. Runs the docker compose fleet end to end (tests/compose/e2e.sh). It
#    needs a Docker engine and fails loudly without one; set
#    LOGDRAIN_SKIP_COMPOSE=1 to leave it out on purpose (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/moto_server" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "tests/run.sh: installing Python test peers into $venv (tests/requirements.txt)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
  echo "$want" > "$stamp"
fi
export LOGDRAIN_TEST_MOTO_SERVER="$PWD/$venv/bin/moto_server"

cargo test --workspace

if [ "${LOGDRAIN_SKIP_COMPOSE:-0}" = 1 ]; then
  echo "tests/run.sh: SKIPPING the docker compose end-to-end test (LOGDRAIN_SKIP_COMPOSE=1)" >&2
else
  tests/compose/e2e.sh
fi
