#!/usr/bin/env bash
# Fuzzes the server's input paths with cargo-fuzz (libFuzzer, nightly toolchain):
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# runs each target (default: all of fuzz/fuzz_targets) for SECONDS (default 60) and prints how
# many inputs it tried. A crash stops the run with the input saved under fuzz/artifacts/TARGET;
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…` (in fuzz/) replays it.
# The corpus grows across runs in target/fuzz-corpus/TARGET, seeded from the project's fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frames room sdp_offer datagrams turn)
fi

ensure_fuzz_tools

root=$PWD
# Without AddressSanitizer: the code under test is safe Rust, and inputs run several times faster.
say "building the fuzz targets (release, with debug assertions)"
(cd fuzz && cargo +nightly fuzz build --target-dir "$root/target/fuzz" -O --sanitizer none)

for target in "${targets[@]}"; do
  corpus="$root/target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  case $target in
    frames) cp -n shared/tests/fixtures/*/*.json "$corpus/" ;;
    sdp_offer) cp -n fuzz/seeds/sdp_offer/* "$corpus/" ;;
  esac
  say "fuzzing $target for ${seconds}s"
  log=$(mktemp)
  status=0
  (cd fuzz && cargo +nightly fuzz run --target-dir "$root/target/fuzz" -O --sanitizer none "$target" "$corpus" -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=65536) >"$log" 2>&1 || status=$?
  runs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log")
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    rm -f "$log"
    say "fuzz target $target FAILED after ${runs:-?} inputs: the input is in fuzz/artifacts/$target"
    exit 1
  fi
  rm -f "$log"
  echo "fuzz $target: ${runs:-0} inputs in ${seconds}s, no failure"
done
