#!/usr/bin/env bash
# Installs what the tests and presets need beyond the Rust toolchain: Debian's
# Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist), chromium
# (the run report's render check and scripts/screenshot-report.sh), Open MPI
# (openmpi-bin, libopenmpi-dev, libclang-dev: the `mpi` feature and its tests) and python3
# with venv (the Python package, scripts/setup-python.sh). Safe to
# run again; without root or apt it says what is missing and carries on (the
# tests that need the data then skip with a message, or fail when CI is set).
set -uo pipefail
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need+=(chromium)
# Open MPI for `--features mpi` (data-parallel training, docs/distributed.md): mpirun, the
# headers and mpicc that the `mpi` crate's build probes, and libclang for its bindgen.
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || need+=(libclang-dev)
# The Python package's venv (scripts/setup-python.sh): Debian splits venv/ensurepip off python3.
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then
  echo "setup: nothing to install"
  exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; } \
    || echo "setup: could not install ${need[*]}; the tests that need them will skip (fail when CI is set)"
else
  echo "setup: missing ${need[*]} (run as root with apt-get, or: sudo apt-get install ${need[*]}); the tests that need them will skip (fail when CI is set)"
fi
