#!/usr/bin/env bash
# The client while working on it: `trunk serve` rebuilds it on every change and serves it on
# http://localhost:8080, the signaling socket proxied to a server on :4000 (scripts/run.sh).
# Installs trunk on first use (about 10 minutes, once).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

ensure_client_tools
ensure_trunk
exec trunk serve "$@"
