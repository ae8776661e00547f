#!/usr/bin/env bash
# scoregen on an NVIDIA GPU (issue #21, item 4): runs a scoregen built with the
# `cuda` feature somewhere else (no Rust toolchain needed here) and prints
#   1. the GPU (nvidia-smi) and the CUDA libraries the binary was given,
#   2. speed: one training step of the MLP and the U-Net and sampling speed
#      (`scoregen bench … --device cuda`), beside PyTorch on the same GPU when a
#      CUDA PyTorch is installed (bench/torch_ref.py --device cuda),
#   3. the digits and mnist5k presets trained on the GPU: train,
#      train-classifier, sample and eval, with the Fréchet distance and wall times,
#   4. CPU vs GPU agreement: the same sampler, seed and checkpoint on both
#      (max |difference|, expected at float round-off), including a checkpoint
#      trained on the GPU sampled on the CPU.
#
# Usage (from the repository root, on the GPU machine):
#   scripts/gpu-check.sh                 everything (about 5-10 min on an H100/H200)
#   QUICK=1 scripts/gpu-check.sh         short presets (a few hundred steps), for a smoke test
#   SECTIONS="speed agree" scripts/gpu-check.sh   some of: env speed presets agree
#   PRESETS=digits scripts/gpu-check.sh           some of: digits mnist5k
# Environment:
#   SCOREGEN_BIN   the binary (default target/cuda/release/scoregen, built here with
#                  `source .cuda/env.sh; CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda`)
#   DEVICE         cuda:0 (default) or cuda:N
#   OUT            where runs, samples and the log go (default /tmp/scoregen-gpu-check)
#   SCOREGEN_CUDA_LIBS  extra folders (colon-separated) holding the CUDA 13 libraries
#   PYTHON         a python with a CUDA build of torch (default: python3, python)
#   STEP_TIMEOUT   seconds allowed for each command (default 900)
#
# The binary needs the driver's libcuda.so.1 and the CUDA 13 runtime libraries
# (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10); this
# script finds them in a PyTorch CUDA 13 install (site-packages/nvidia/cu13/lib),
# a conda environment, a system CUDA (/usr/local/cuda*/lib64), the loader's cache,
# or .cuda/ of scripts/setup-cuda.sh, and puts them on LD_LIBRARY_PATH (never the
# link-time stub in lib/stubs). The binary's kernels are compiled for one compute
# capability (CUDA_COMPUTE_CAP at build time, 90 by default: H100/H200). See docs/gpu.md.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BIN="${SCOREGEN_BIN:-$root/target/cuda/release/scoregen}"
DEVICE="${DEVICE:-cuda:0}"
OUT="${OUT:-${TMPDIR:-/tmp}/scoregen-gpu-check}"
SECTIONS="${SECTIONS:-env speed presets agree}"
PRESETS="${PRESETS:-digits mnist5k}"
STEP_TIMEOUT="${STEP_TIMEOUT:-900}"
QUICK="${QUICK:-0}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

say() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
failures=()
fail() { echo "FAILED: $*"; failures+=("$*"); }
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- libraries
say "CUDA libraries"
if [ ! -x "$BIN" ]; then
  echo "no binary at $BIN: build it where the toolkit is (docs/gpu.md) and carry it here, or set SCOREGEN_BIN" >&2
  exit 1
fi
candidates=()
IFS=: read -r -a extra <<<"${SCOREGEN_CUDA_LIBS:-}"
candidates+=(${extra[@]+"${extra[@]}"})
pythons=()
for py in ${PYTHON:-} python3 python; do command -v "$py" >/dev/null 2>&1 && pythons+=("$py"); done
for py in "${pythons[@]}"; do
  while read -r sp; do
    [ -d "$sp/nvidia" ] || continue
    for d in "$sp"/nvidia/cu13/lib "$sp"/nvidia/*/lib; do [ -d "$d" ] && candidates+=("$d"); done
  done < <("$py" -c 'import site, sys
print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null)
done
[ -n "${CONDA_PREFIX:-}" ] && candidates+=("$CONDA_PREFIX/lib")
for d in ${CUDA_HOME:-} ${CUDA_PATH:-} /usr/local/cuda /usr/local/cuda-13* /opt/cuda; do
  [ -d "$d/lib64" ] && candidates+=("$d/lib64")
  [ -d "$d/targets/x86_64-linux/lib" ] && candidates+=("$d/targets/x86_64-linux/lib")
done
candidates+=("$root/.cuda/site/nvidia/cu13/lib")
libpath=()
missing=()
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  found=""
  for d in "${candidates[@]}"; do
    [ -n "$d" ] && [[ "$d" != */stubs ]] && [ -e "$d/$lib" ] && { found="$d"; break; }
  done
  if [ -n "$found" ]; then
    [[ " ${libpath[*]-} " == *" $found "* ]] || libpath+=("$found")
    echo "  $lib: $found"
  elif ldconfig -p 2>/dev/null | grep -q "$lib"; then
    echo "  $lib: $(ldconfig -p | grep "$lib" | head -1 | sed 's/.*=> //') (loader cache)"
  else
    missing+=("$lib")
  fi
done
if ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '; then
  echo "  libcuda.so.1: $(ldconfig -p | grep 'libcuda.so.1 ' | head -1 | sed 's/.*=> //') (the driver)"
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "missing: ${missing[*]}. Install a CUDA 13 runtime (e.g. a PyTorch CUDA 13 wheel, or pip install" \
    "nvidia-cuda-runtime nvidia-cublas nvidia-curand for CUDA 13), or point SCOREGEN_CUDA_LIBS at them." >&2
  exit 1
fi
LD_LIBRARY_PATH="$(IFS=:; echo "${libpath[*]-}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
unresolved="$(ldd "$BIN" | grep 'not found' || true)"
if [ -n "$unresolved" ]; then
  echo "the binary still lacks:" >&2
  echo "$unresolved" >&2
  echo "(libcuda.so.1 comes with the NVIDIA driver, not with CUDA: is this a machine with a GPU and its driver?)" >&2
  exit 1
fi
ldd "$BIN" | grep -E 'libcuda\.|libcudart|libcublas|libcurand' | sed 's/^/  ldd: /'
if ldd "$BIN" | grep 'libcuda.so.1' | grep -q stubs; then
  echo "libcuda.so.1 resolves to a stub: take lib/stubs off LD_LIBRARY_PATH" >&2
  exit 1
fi

sg() { timeout "$STEP_TIMEOUT" "$BIN" "$@"; }
# a field of scoregen's --json output (python when there is one, else a grep)
field() {
  local file="$1" key="$2"
  if [ "${#pythons[@]}" -gt 0 ]; then
    "${pythons[0]}" -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[k]
print(f"{v:.4g}" if isinstance(v, float) else v)' "$file" "$key" 2>/dev/null
  else
    grep -o "\"${key##*.}\": *[^,}]*" "$file" | head -1 | sed 's/.*: *//'
  fi
}

# ---------------------------------------------------------------- device
if want env; then
  say "GPU"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null ||
    echo "(nvidia-smi not found)"
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
  built="${SCOREGEN_BUILT_CAP:-90}"
  if [ -n "$cap" ] && [ "$cap" != "$built" ]; then
    echo "WARNING: this GPU has compute capability $cap; the binary's kernels were built for $built" \
      "(CUDA_COMPUTE_CAP; rebuild with CUDA_COMPUTE_CAP=$cap if kernels fail to load)"
  fi
  "$BIN" --version
  echo "smoke test: a 4096² f32 GEMM on $DEVICE"
  sg --quiet --device "$DEVICE" bench gemm --n 4096 --reps 10 || fail "gemm on $DEVICE"
fi

# ---------------------------------------------------------------- speed
torch_py=""
for py in "${pythons[@]}"; do
  if "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    torch_py="$py"
    break
  fi
done
if want speed; then
  say "speed on $DEVICE: scoregen (candle) vs PyTorch, median ms"
  if [ -n "$torch_py" ]; then
    echo "PyTorch: $("$torch_py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
  else
    echo "PyTorch with CUDA: not found here (set PYTHON); scoregen only"
  fi
  cases=(
    "train --model mlp --width 128 --batch 512 --warmup 5 --reps 30"
    "train --model mlp --width 512 --batch 4096 --warmup 3 --reps 15"
    "train --model unet --side 8 --batch 128 --warmup 3 --reps 15"
    "train --model unet --side 28 --batch 128 --warmup 2 --reps 10"
    "sample --sampler em --n 10000 --steps 1000 --reps 1"
    "sample --sampler ode --n 10000 --steps 500 --reps 1"
    "likelihood --n 1000 --steps 100 --reps 1"
    "gemm --n 4096 --reps 10"
  )
  printf '%-34s %12s %12s %10s\n' case scoregen PyTorch "PyTorch/us"
  i=0
  for c in "${cases[@]}"; do
    i=$((i + 1))
    # shellcheck disable=SC2086 # the case is a word list
    if ! sg --quiet --json --device "$DEVICE" bench $c >"$OUT/speed-$i-scoregen.json"; then
      fail "scoregen bench $c"
      continue
    fi
    ours="$(field "$OUT/speed-$i-scoregen.json" median_ms)"
    theirs="-"
    ratio="-"
    # shellcheck disable=SC2086
    if [ -n "$torch_py" ] && timeout "$STEP_TIMEOUT" "$torch_py" bench/torch_ref.py --device "$DEVICE" --threads 4 $c \
      >"$OUT/speed-$i-torch.json"; then
      theirs="$(field "$OUT/speed-$i-torch.json" median_ms)"
      ratio="$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.2f", b / a }')"
    elif [ -n "$torch_py" ]; then
      fail "torch_ref.py $c"
    fi
    printf '%-34s %12s %12s %10s\n' "$(field "$OUT/speed-$i-scoregen.json" case)" "$ours" "$theirs" "$ratio"
  done
  echo "(PyTorch/us > 1: scoregen is faster; the full JSON of every case is in $OUT/speed-*.json)"
fi

# ---------------------------------------------------------------- presets
if want presets; then
  say "presets trained on $DEVICE (train, classifier, 100 samples by EM in 500 steps, eval)"
  echo "CPU reference (docs/results.md, 2 loaded cores): digits 3,000 steps, FD 2.76 (floor 1.87);" \
    "mnist5k 1,500 steps, FD 5.20 (floor 0.50)"
  rows=()
  for preset in $PRESETS; do
    cfg="configs/$preset-vp.toml"
    run="$OUT/$preset-vp"
    clf="$OUT/classifiers/$preset"
    case "$preset:$QUICK" in
      digits:0) train_set=() clf_steps=1500 ;;
      mnist5k:0) train_set=(--set training.steps=1500) clf_steps=3000 ;;
      *) train_set=(--set training.steps=300) clf_steps=300 ;;
    esac
    t0="$(now)"
    sg --quiet --device "$DEVICE" train --config "$cfg" --out "$run" --no-report ${train_set[@]+"${train_set[@]}"} \
      >"$OUT/$preset-train.txt" || { fail "train $preset"; continue; }
    t_train="$(since "$t0")"
    t0="$(now)"
    sg --quiet --json --device "$DEVICE" train-classifier --data "$preset" --steps "$clf_steps" --out "$clf" \
      >"$OUT/$preset-classifier.json" || { fail "train-classifier $preset"; continue; }
    t_clf="$(since "$t0")"
    t0="$(now)"
    sg --quiet --device "$DEVICE" sample --run "$run" --n 100 --steps 500 --out "$run/samples/em500.npy" \
      >"$OUT/$preset-sample.txt" || { fail "sample $preset"; continue; }
    t_sample="$(since "$t0")"
    sg --quiet --json --device "$DEVICE" eval --samples "$run/samples/em500.npy" --target "$preset" \
      --classifier "$clf" >"$OUT/$preset-eval.json" || { fail "eval $preset"; continue; }
    steps="$(tail -1 "$run/metrics.jsonl" | grep -o '"step":[0-9]*' | cut -d: -f2)"
    rows+=("$(printf '%-8s %6s %9s %11s %9s %9s %7s %7s %8s' "$preset" "$steps" "$t_train" "$t_clf" \
      "$(field "$OUT/$preset-classifier.json" meta.test_accuracy)" "$t_sample" \
      "$(field "$OUT/$preset-eval.json" fd)" "$(field "$OUT/$preset-eval.json" fd_floor)" \
      "$(field "$OUT/$preset-eval.json" class_entropy)")")
  done
  printf '%-8s %6s %9s %11s %9s %9s %7s %7s %8s\n' preset steps "train s" "classifier s" "clf acc" \
    "sample s" FD floor entropy
  printf '%s\n' "${rows[@]-}"
fi

# ---------------------------------------------------------------- agreement
# max |a − b| of two float .npy files (python's standard library only)
npy_diff() {
  "${pythons[0]}" - "$1" "$2" <<'EOF'
import array, ast, sys
def load(path):
    with open(path, "rb") as f:
        assert f.read(6) == b"\x93NUMPY", path
        major = f.read(2)[0]
        header = ast.literal_eval(f.read(int.from_bytes(f.read(2 if major == 1 else 4), "little")).decode())
        a = array.array({"<f4": "f", "<f8": "d"}[header["descr"]])
        a.frombytes(f.read())
        return a
a, b = load(sys.argv[1]), load(sys.argv[2])
assert len(a) == len(b), (len(a), len(b))
d = max(abs(x - y) for x, y in zip(a, b))
s = max(abs(x) for x in a)
same = sum(x == y for x, y in zip(a, b))
print(f"{len(a)} values: max |cpu - gpu| = {d:.3g}, max |x| = {s:.3g} (relative {d / s:.3g}); {same} bit-identical")
EOF
}
if want agree; then
  say "CPU vs GPU: the same checkpoint, sampler and seed"
  echo "expected: float round-off (the GPU sums in another order and runs candle's ops where the CPU runs"
  echo "its fused kernels; the random draws are the same, made on the CPU from the seeded streams)"
  agree="$OUT/agree-gmm8"
  sg --quiet --device cpu train --config configs/gmm8-vp.toml --out "$agree" --no-report \
    --set training.steps=500 >/dev/null || fail "train gmm8 on the CPU"
  # files: em-cpu.npy and em-gpu.npy (the latter from $DEVICE)
  for pair in cpu:cpu "gpu:$DEVICE"; do
    name="${pair%%:*}" dev="${pair#*:}"
    sg --quiet --device "$dev" sample --run "$agree" --n 2000 --steps 200 --sampler em --seed 7 \
      --out "$agree/em-$name.npy" >/dev/null || fail "sample gmm8 on $dev"
    sg --quiet --device "$dev" sample --run "$agree" --n 2000 --sampler ddim --steps 50 --seed 7 \
      --out "$agree/ddim-$name.npy" >/dev/null || fail "ddim gmm8 on $dev"
  done
  if [ "${#pythons[@]}" -gt 0 ]; then
    echo "gmm8 MLP trained on the CPU, Euler-Maruyama 200 steps, 2000 samples:"
    npy_diff "$agree/em-cpu.npy" "$agree/em-gpu.npy" || fail "compare em"
    echo "the same, DDIM (deterministic) 50 steps:"
    npy_diff "$agree/ddim-cpu.npy" "$agree/ddim-gpu.npy" || fail "compare ddim"
  else
    cmp -s "$agree/em-cpu.npy" "$agree/em-gpu.npy" && echo "bit-identical" || echo "differ (no python to measure by how much)"
  fi
  echo "training: the same 500 steps on $DEVICE (last log line: CPU, then GPU)"
  sg --quiet --device "$DEVICE" train --config configs/gmm8-vp.toml --out "$agree-gpu" --no-report \
    --set training.steps=500 >/dev/null || fail "train gmm8 on $DEVICE"
  echo "  CPU: $(tail -1 "$agree/metrics.jsonl")"
  echo "  GPU: $(tail -1 "$agree-gpu/metrics.jsonl" 2>/dev/null)"
  digits="$OUT/digits-vp"
  if [ -d "$digits/checkpoints" ] && [ "${#pythons[@]}" -gt 0 ]; then
    echo "the digits U-Net trained on $DEVICE, sampled on both (16 samples, EM 100 steps):"
    for pair in cpu:cpu "gpu:$DEVICE"; do
      name="${pair%%:*}" dev="${pair#*:}"
      sg --quiet --device "$dev" sample --run "$digits" --n 16 --steps 100 --seed 3 \
        --out "$OUT/agree-digits/em-$name.npy" >/dev/null || fail "sample digits on $dev"
    done
    npy_diff "$OUT/agree-digits/em-cpu.npy" "$OUT/agree-digits/em-gpu.npy" || fail "compare digits"
  fi
fi

say "done: log in $OUT/gpu-check.log"
if [ "${#failures[@]}" -gt 0 ]; then
  printf 'failed steps:\n'
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
