#!/usr/bin/env bash
# Builds the Python package `scoregen` (crates/scoregen-py: PyO3 + maturin) and
# installs it into the project-local venv .venv/ (gitignored), with numpy and
# pytest; with CI set or SCOREGEN_TORCH=1 also PyTorch (the CUDA build from
# PyPI, a few GB, once), diffusers and pytorch-fid (with torchvision and scipy),
# for scoregen.torch, the diffusers and FID parity tests and their tests. Safe to run again:
# the venv and its packages are kept, the wheel is rebuilt (cargo reuses the
# shared target/ folder) and reinstalled. Needs python3 (≥ 3.9, with venv)
# and the Rust toolchain; maturin comes from PyPI into the venv.
#   scripts/setup-python.sh            then: .venv/bin/python -c 'import scoregen'
#   PYTHON=python3.12 scripts/setup-python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SCOREGEN_VENV:-.venv}"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  echo "setup-python: creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! "$py" -c 'import maturin, numpy, pytest' 2>/dev/null; then
  echo "setup-python: installing maturin, numpy, pytest into $venv"
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet 'maturin>=1.5,<2' 'numpy>=1.21' 'pytest>=7'
fi
if [ -n "${CI:-}" ] || [ "${SCOREGEN_TORCH:-0}" = 1 ]; then
  if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "setup-python: installing torch into $venv (large, first time only)"
    "$py" -m pip install --quiet torch
  fi
  # the parity tests (test_*_diffusers.py) run diffusers' schedulers beside ours
  if ! "$py" -c 'import diffusers' 2>/dev/null; then
    echo "setup-python: installing diffusers into $venv"
    "$py" -m pip install --quiet diffusers
  fi
  # the FID / Inception Score parity test runs pytorch-fid's network (torchvision) and scipy's sqrtm
  if ! "$py" -c 'import pytorch_fid, scipy, torchvision' 2>/dev/null; then
    echo "setup-python: installing pytorch-fid, torchvision and scipy into $venv"
    "$py" -m pip install --quiet pytorch-fid torchvision scipy
  fi
fi
# The wheel goes to target/wheels; cargo's artifacts to the shared target/.
rm -f target/wheels/scoregen-*.whl
"$venv/bin/maturin" build --release --quiet -i "$py" -m crates/scoregen-py/Cargo.toml -o target/wheels
"$py" -m pip install --quiet --force-reinstall --no-deps target/wheels/scoregen-*.whl
"$py" -c 'import scoregen, sys; print("setup-python: scoregen installed into", sys.prefix)'
