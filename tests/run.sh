#!/usr/bin/env bash
# Runs every test of logdrain from a fresh clone.
#
# 0. Gates on formatting and lints: `cargo fmt --all --check` and
#    `cargo clippy --workspace --all-targets -- -D warnings` (the lints are
#    the workspace's, in Cargo.toml), then `cargo deny check` of licences,
#    bans and sources (deny.toml; no network).
# 1. Installs the Python test peers (moto_server for CloudWatch Logs) and
#    kubernetes-validate (tests/kubernetes.rs) into ./.venv, once per change
#    of tests/requirements.txt, and promtool
#    (Debian's prometheus package, for tests/prometheus.rs) when it is
#    missing, and chromium (Debian's package, for the status page test in
#    tests/status.rs): as root or with sudo, else it stops and says how.
# 2. Runs `cargo test --workspace` with LOGDRAIN_TEST_REQUIRE_ALL=1, so a
#    test whose tool (moto, promtool, chromium) is missing fails instead of
#    skipping: unit tests, and the integration and end-to-end tests that
#    start the real binaries.
# 3. Runs the docker compose fleet end to end (tests/compose/e2e.sh). It
#    needs a Docker engine and fails loudly without one; set
#    LOGDRAIN_SKIP_COMPOSE=1 to leave it out on purpose (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "tests/run.sh: cargo fmt --all --check"
cargo fmt --all --check || {
  echo "tests/run.sh: the code is not formatted; run: cargo fmt --all" >&2
  exit 1
}
echo "tests/run.sh: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# cargo-deny, built once from crates.io into ./.cargo-tools (gitignored) and
# reused by later runs in this clone: about 4.5 CPU-minutes the first time.
deny_version=0.20.2
deny="$PWD/.cargo-tools/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -qF "$deny_version"; then
  echo "tests/run.sh: installing cargo-deny $deny_version into ./.cargo-tools (once per clone)"
  cargo install --quiet --locked cargo-deny --version "$deny_version" --root "$PWD/.cargo-tools"
fi
echo "tests/run.sh: cargo deny check licenses bans sources"
"$deny" deny check licenses bans sources

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
# tests/kubernetes.rs validates deploy/kubernetes/ with it.
export LOGDRAIN_TEST_KUBERNETES_VALIDATE="$PWD/$venv/bin/kubernetes-validate"
# Everything the tests need is installed above: a test that would skip for a
# missing tool fails instead.
export LOGDRAIN_TEST_REQUIRE_ALL=1

# Installs Debian package $2 when command $1 is missing (as root or with
# sudo); otherwise stops and says how. $3 says which test needs it.
need() {
  local cmd=$1 package=$2 why=$3
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "tests/run.sh: installing $cmd (Debian package $package) for $why"
  local install=(apt-get install -y --no-install-recommends "$package")
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && "${install[@]}"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo "${install[@]}"
  else
    echo "tests/run.sh: $cmd is missing and this user cannot install packages;" \
      "run: sudo apt-get install -y --no-install-recommends $package" >&2
    exit 1
  fi
  command -v "$cmd" >/dev/null 2>&1 || {
    echo "tests/run.sh: the $package package did not provide $cmd" >&2
    exit 1
  }
}
need promtool prometheus "tests/prometheus.rs and tests/kubernetes.rs"
need chromium chromium "the status page test in tests/status.rs"

LOGDRAIN_TEST_REQUIRE_ALL=1 cargo test --workspace

if [ "${LOGDRAIN_SKIP_COMPOSE:-0}" = 1 ]; then
  echo "tests/run.sh: SKIPPING the docker compose end-to-end test (LOGDRAIN_SKIP_COMPOSE=1)" >&2
else
  tests/compose/e2e.sh
fi
