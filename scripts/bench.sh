#!/usr/bin/env bash
# The benchmark (BENCHMARKS.md): builds the release server and load generator, then runs the
# meeting, broadcast and ramp scenarios against a fresh server process. Extra arguments go to
# loadgen (`target/release/loadgen --help`). Figures are printed and written to target/bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p server -p e2e --bin videoroom --bin loadgen --bin floor
exec target/release/loadgen --scenario all --json target/bench.json "$@"
