#!/usr/bin/env bash
# Installs what the tests and presets need beyond the Rust toolchain: Debian's
# Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist), chromium
# (the run report's render check and scripts/screenshot-report.sh), Open MPI
# (openmpi-bin, libopenmpi-dev, libclang-dev: the `mpi` feature and its tests) and python3
# with venv (the Python package, scripts/setup-python.sh). Safe to
# run again; without root or apt it says what is missing and carries on (the
# tests that need the data then skip with a message, or fail when CI is set).
# scripts/test.sh runs it first. It is idempotent: with everything installed it
# only probes (well under a second); with SCOREGEN_SETUP_DONE=1 (exported by
# .ci/run after its own call) it does nothing.
#   scripts/setup.sh            install what is missing
#   scripts/setup.sh --check    only say what is missing (exit 1 if anything is)
set -uo pipefail
if [ "${SCOREGEN_SETUP_DONE:-}" = 1 ] && [ "${1:-}" != --check ]; then
  echo "setup: already done (SCOREGEN_SETUP_DONE=1)"
  exit 0
fi
# libclang proper, as bindgen's clang-sys looks for it: libclang.so, libclang.so.N,
# libclang-N.so or libclang-N.so.N in each directory given (only $LIBCLANG_PATH
# when that is set, as clang-sys does). Not libclang-cpp.so.N, the C++ library
# that llvm-N-dev brings: clang-sys skips it, so it must not count here either.
has_libclang() {
  local dir f
  for dir in "$@"; do
    for f in "$dir"/libclang.so "$dir"/libclang.so.* "$dir"/libclang-*.so "$dir"/libclang-*.so.*; do
      case "${f##*/}" in *-cpp.*) continue ;; esac
      [ -e "$f" ] && return 0
    done
  done
  return 1
}
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need+=(chromium)
# Open MPI for `--features mpi` (data-parallel training, docs/distributed.md): mpirun, the
# headers and mpicc that the `mpi` crate's build probes, and libclang for its bindgen.
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
if [ -n "${LIBCLANG_PATH:-}" ]; then
  has_libclang "$LIBCLANG_PATH" || need+=(libclang-dev)
else
  has_libclang /usr/lib/llvm-*/lib /usr/lib/*-linux-gnu || need+=(libclang-dev)
fi
# The Python package's venv (scripts/setup-python.sh): Debian splits venv/ensurepip off python3.
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then
  echo "setup: nothing to install"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "setup: missing ${need[*]}"
  exit 1
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; } \
    || echo "setup: could not install ${need[*]}; the tests that need them will skip (fail when CI is set)"
else
  echo "setup: missing ${need[*]} (run as root with apt-get, or: sudo apt-get install ${need[*]}); the tests that need them will skip (fail when CI is set)"
fi
