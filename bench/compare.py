#!/usr/bin/env python3
"""Runs every speed case in scoregen (`scoregen bench … --json`) and in the
PyTorch reference (bench/torch_ref.py), alternating the two so both see the
same machine load, and prints the side-by-side table. Started by bench/run."""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (group, scoregen/torch_ref arguments, warm-up and repetitions for the training cases)
CASES = [
    ("gemm", ["gemm", "--n", "1024", "--reps", "10"]),
    ("mlp", ["train", "--model", "mlp", "--width", "128", "--batch", "512", "--warmup", "5", "--reps", "40"]),
    ("mlp", ["train", "--model", "mlp", "--width", "128", "--batch", "4096", "--warmup", "3", "--reps", "15"]),
    ("mlp", ["train", "--model", "mlp", "--width", "512", "--batch", "512", "--warmup", "3", "--reps", "15"]),
    ("mlp", ["train", "--model", "mlp", "--width", "512", "--batch", "4096", "--warmup", "2", "--reps", "7"]),
    ("unet", ["train", "--model", "unet", "--side", "8", "--batch", "32", "--warmup", "3", "--reps", "15"]),
    ("unet", ["train", "--model", "unet", "--side", "8", "--batch", "128", "--warmup", "2", "--reps", "7"]),
    ("unet", ["train", "--model", "unet", "--side", "28", "--batch", "32", "--warmup", "1", "--reps", "5"]),
    ("unet", ["train", "--model", "unet", "--side", "28", "--batch", "128", "--warmup", "1", "--reps", "3"]),
    # the frozen EMA copy: Euler–Maruyama steps, and the ODE likelihood (Heun, one Hutchinson probe);
    # each repetition is a whole run, the first one paying for first-touched memory on both sides
    # (28×28 likelihood, 128 images: 2.1 s then 0.85 s for scoregen, 2.3 then 2.0 s for PyTorch), so
    # the 28×28 rows, with few steps, take the median of five
    ("unet", ["sample", "--model", "unet", "--side", "8", "--n", "32", "--steps", "100", "--reps", "3"]),
    ("unet", ["sample", "--model", "unet", "--side", "8", "--n", "128", "--steps", "100", "--reps", "3"]),
    ("unet", ["sample", "--model", "unet", "--side", "28", "--n", "32", "--steps", "20", "--reps", "5"]),
    ("unet", ["sample", "--model", "unet", "--side", "28", "--n", "128", "--steps", "10", "--reps", "5"]),
    ("unet", ["likelihood", "--model", "unet", "--side", "8", "--n", "32", "--steps", "20", "--reps", "3"]),
    ("unet", ["likelihood", "--model", "unet", "--side", "8", "--n", "128", "--steps", "20", "--reps", "3"]),
    ("unet", ["likelihood", "--model", "unet", "--side", "28", "--n", "32", "--steps", "5", "--reps", "5"]),
    ("unet", ["likelihood", "--model", "unet", "--side", "28", "--n", "128", "--steps", "3", "--reps", "5"]),
    ("sample", ["sample", "--sampler", "em", "--n", "10000", "--steps", "1000", "--reps", "1"]),
    ("sample", ["sample", "--sampler", "ode", "--n", "10000", "--steps", "500", "--reps", "1"]),
    ("likelihood", ["likelihood", "--n", "1000", "--steps", "100", "--reps", "1"]),
]


def cpu_info():
    """/proc/cpuinfo's first processor as a dict (empty off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n")[0]
    except OSError:
        return {}
    return dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()))


def cpu_model():
    return cpu_info().get("model name", "unknown")


def cpu_flags():
    """The vector extensions the kernels choose between at run time."""
    have = set(cpu_info().get("flags", "").split())
    return [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile") if f in have]


def scaled(args, scale):
    out = list(args)
    for flag in ("--reps", "--warmup"):
        if flag in out:
            i = out.index(flag) + 1
            out[i] = str(max(1, round(int(out[i]) * scale)))
    return out


def run_json(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare.py: `{' '.join(cmd)}` failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def median_round(results):
    """The round whose wall time is the median (the lower middle for an even count),
    so each reported row is one real measurement, its CPU time and memory with it."""
    ordered = sorted(results, key=lambda r: r["median_ms"])
    return ordered[(len(ordered) - 1) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scoregen", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps-scale", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=1,
                   help="run each case's pair this many times, alternating which goes first, and report each "
                        "side's median over the rounds (this 2-core machine's load moves single runs by 20%%)")
    p.add_argument("--json", help="also write every measurement to this file")
    p.add_argument("groups", nargs="*", help="gemm mlp unet sample likelihood (default: all)")
    a = p.parse_args()
    groups = set(a.groups) or {g for g, _ in CASES}
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), CANDLE_NUM_THREADS=str(a.threads))
    env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    rows = []
    for i, (group, args) in enumerate(CASES):
        if group not in groups and group != "gemm":
            continue
        args = scaled(args, a.reps_scale)
        ours = [a.scoregen, "--quiet", "--json", "bench"] + args
        theirs = [sys.executable, os.path.join(HERE, "torch_ref.py"), "--threads", str(a.threads)] + args
        pairs = []
        for r in range(max(1, a.rounds)):
            # alternate which goes first, so neither always runs on a warmer or quieter machine
            first, second = (ours, theirs) if (i + r) % 2 == 0 else (theirs, ours)
            r1, r2 = run_json(first, env), run_json(second, env)
            pairs.append((r1, r2) if first is ours else (r2, r1))
        s, t = median_round([p[0] for p in pairs]), median_round([p[1] for p in pairs])
        rows.append((group, s, t))
        print(f"  {s['case']}: scoregen {s['median_ms']:.2f} ms, PyTorch {t['median_ms']:.2f} ms", file=sys.stderr)

    gemm = [r for r in rows if r[0] == "gemm"][0]
    rate = lambda r: r["gflop"] / (r["median_ms"] / 1e3) if r.get("gflop") else None
    peak = max(rate(gemm[1]), rate(gemm[2]))
    print(f"CPU: {cpu_model()}; flags: {' '.join(cpu_flags()) or 'none of avx2, fma, avx512*'}")
    print(f"threads: {a.threads}; GEMM 1024³ f32: candle {rate(gemm[1]):.1f} GFLOP/s "
          f"(kernel {gemm[1].get('kernel', '?')}), PyTorch {rate(gemm[2]):.1f} GFLOP/s "
          f"(kernel {gemm[2].get('kernel', '?')}); peak = {peak:.1f} GFLOP/s")
    print()
    print("| case | scoregen ms | PyTorch ms | scoregen items/s | PyTorch items/s | speed-up vs PyTorch | "
          "CPU ms scoregen / PyTorch | CPU speed-up | scoregen % peak | PyTorch % peak | peak RSS MiB scoregen / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for group, s, t in rows:
        if group == "gemm":
            continue
        pct = lambda r: f"{100 * rate(r) / peak:.0f}%" if rate(r) else "–"
        print(f"| {s['case']} | {s['median_ms']:.2f} | {t['median_ms']:.2f} | {s['items_per_s']:.0f} | "
              f"{t['items_per_s']:.0f} | {t['median_ms'] / s['median_ms']:.2f}× | {s['cpu_ms']:.2f} / {t['cpu_ms']:.2f} | "
              f"{t['cpu_ms'] / s['cpu_ms']:.2f}× | {pct(s)} | {pct(t)} | "
              f"{s['peak_rss_mib']:.0f} / {t['peak_rss_mib']:.0f} |")
    print("\nspeed-up = PyTorch ms / scoregen ms (above 1: scoregen is faster), wall time; CPU speed-up: the same with "
          "process CPU time (all threads), robust when other processes share the cores; medians of repeated runs"
          + (f", then the median of {a.rounds} rounds per case." if a.rounds > 1 else "."))
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"group": g, "scoregen": s, "pytorch": t} for g, s, t in rows], f, indent=1)


if __name__ == "__main__":
    main()
