#!/usr/bin/env bash
# Fuzzes every reader of user input and the command line's parsers with
# generated hostile inputs (default 1,000,000), in-process; prints the count
# per reader and every panic, and saves each panicking input under
# crates/scoregen/tests/fuzz_corpus/READER/, which the test suite replays
# (`fuzz_corpus_replays_without_panics`). Not part of `cargo test`.
#
#   scripts/fuzz.sh                 # 1,000,000 inputs, seed 0
#   scripts/fuzz.sh 5000000 7       # 5,000,000 inputs, seed 7
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_INPUTS="${1:-${FUZZ_INPUTS:-1000000}}" FUZZ_SEED="${2:-${FUZZ_SEED:-0}}"
exec nice -n 10 cargo test --release -p scoregen-cli --bin scoregen -- \
    --ignored --exact fuzz::fuzz_every_reader_and_flag_parser --nocapture
