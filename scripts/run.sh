#!/usr/bin/env bash
# Builds the web client and starts videoroom at http://localhost:4000 (flags go to the server:
# `scripts/run.sh --help` lists them). Installs the build tools it lacks on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

ensure_client_tools
say "building the web client (scripts/build-client.sh)"
scripts/build-client.sh
say "starting the server"
exec cargo run --release --quiet -p server -- "$@"
