#!/usr/bin/env bash
# Runs every test of the workspace: the protocol, the server, the attack suite, the cluster (with
# a Redis of its own), and the browser tests in headless Chromium against the real server serving
# the freshly built client, then the browser tests once more over HTTPS; then a short fuzz run of
# every fuzz target. Installs what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

ensure_client_tools
ensure_browser
ensure_redis
say "building the web client (scripts/build-client.sh)"
scripts/build-client.sh
say "running the tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
say "running the browser tests again over HTTPS (a self-signed certificate, a non-localhost name)"
# --workspace: the same features as the run above, so nothing is built again.
VIDEOROOM_TEST_HTTPS=1 cargo test --workspace --test room_page --test home_page 2>&1 | tee -a "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "all tests: %d passed, %d failed\n", passed, failed }' "$log"
say "fuzzing each target briefly (scripts/fuzz.sh SECONDS for a longer run)"
scripts/fuzz.sh 15
