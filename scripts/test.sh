#!/usr/bin/env bash
# The test suite, the README's test command and the end of CI (.ci/run):
# the Rust workspace's tests, then the Python package built and installed into
# .venv/ (scripts/setup-python.sh) and its tests with pytest
# (crates/scoregen-py/tests, which also run the walk-through docs/python.md).
# Extra arguments go to pytest, e.g. scripts/test.sh -k oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
scripts/setup-python.sh
.venv/bin/python -m pytest -q crates/scoregen-py/tests "$@"
