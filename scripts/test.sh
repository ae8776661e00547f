#!/usr/bin/env bash
# The test suite, the README's test command and the end of CI (.ci/run):
# scripts/setup.sh first (the system packages the tests use, so this command
# alone sets a fresh machine up; a no-op when .ci/run already ran it), then
# the Rust workspace's tests, then the Python package built and installed into
# .venv/ (scripts/setup-python.sh; SCOREGEN_VENV=DIR for another) and its tests with pytest
# (crates/scoregen-py/tests, which also run the walk-through docs/python.md).
# Extra arguments go to pytest, e.g. scripts/test.sh -k oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --release --workspace
scripts/setup-python.sh
"${SCOREGEN_VENV:-.venv}/bin/python" -m pytest -q crates/scoregen-py/tests "$@"
