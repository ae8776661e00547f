#!/usr/bin/env python3
"""The field's own model size (issue 30): google/ddpm-cifar10-32's UNet2DModel
(35.7 M parameters; random weights, which time the same as trained ones),
DDIM with 50 steps for 16 images, scoregen (`scoregen sample --run DIR`, the
imported diffusers folder) against diffusers' DDIMPipeline in the same run,
alternating which goes first, at 1 and 2 threads; then the exact bits/dim of
the 16 samples by scoregen's probability-flow ODE (Hutchinson, one probe),
which diffusers does not offer. Started by `bench/run pretrained`.

Prints the CPU flags, the GEMM rate and a Markdown table; --json FILE keeps
every measurement.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare import cpu_flags, cpu_model  # noqa: E402

# google/ddpm-cifar10-32's unet/config.json (as on the Hub)
DDPM_CIFAR10 = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def make_checkpoint(folder: pathlib.Path):
    """The pipeline folder with random weights (seed 0), written once."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    if (folder / "unet" / "diffusion_pytorch_model.safetensors").exists():
        return
    torch.manual_seed(0)
    unet = UNet2DModel(**DDPM_CIFAR10)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)


def diffusers_ddim(folder, n, steps, threads):
    """Seconds for DDIMPipeline(n images, `steps` steps, η = 0) in this process."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.set_num_threads(threads)
    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        start = time.perf_counter()
        pipe(batch_size=n, num_inference_steps=steps, eta=0.0, generator=g, output_type="np")
        return time.perf_counter() - start


def scoregen_json(exe, args, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), CANDLE_NUM_THREADS=str(threads))
    proc = subprocess.run([exe, "--quiet", "--json", *map(str, args)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"pretrained.py: scoregen {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scoregen", required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json")
    a = p.parse_args()
    folder = HERE / ".cache" / "ddpm-cifar10-32-random"
    make_checkpoint(folder)
    info = scoregen_json(a.scoregen, ["info", "--run", folder], 1)
    gemm = scoregen_json(a.scoregen, ["bench", "gemm", "--n", "1024", "--reps", "10"], 2)
    rows, record = [], []
    out = HERE / ".cache" / "ddim-samples.npy"
    for threads in [int(t) for t in a.threads.split(",")]:
        ours, theirs = [], []
        for r in range(a.rounds):
            run_ours = lambda: ours.append(
                scoregen_json(
                    a.scoregen,
                    ["sample", "--run", folder, "--sampler", "ddim", "--steps", a.steps, "--n", a.n,
                     "--out", out, "--overwrite", "--seed", r],
                    threads,
                )["seconds"]
            )
            # diffusers in a fresh process, so its thread pool is set once, like ours
            code = (f"import sys, pathlib; sys.path.insert(0, {str(HERE)!r}); from pretrained import diffusers_ddim; "
                    f"print(diffusers_ddim(pathlib.Path({str(folder)!r}), {a.n}, {a.steps}, {threads}))")
            run_theirs = lambda: theirs.append(float(subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]))
            for f in ((run_ours, run_theirs) if r % 2 == 0 else (run_theirs, run_ours)):
                f()
        s, t = statistics.median(ours), statistics.median(theirs)
        rows.append((threads, s, t, ours, theirs))
        record.append({"threads": threads, "scoregen_s": ours, "diffusers_s": theirs})
        print(f"  {threads} thread(s): scoregen {ours}, diffusers {theirs}", file=sys.stderr)
    lik = scoregen_json(
        a.scoregen,
        ["likelihood", "--run", folder, "--data", out, "--trace", "hutchinson", "--probes", "1",
         "--rtol", "1e-3", "--atol", "1e-3"],
        2,
    )
    print(f"CPU: {cpu_model()}; flags: {' '.join(cpu_flags()) or 'none of avx2, fma, avx512*'}")
    rate = gemm["gflop"] / (gemm["median_ms"] / 1e3)
    print(f"GEMM 1024³ f32 (candle, 2 threads): {rate:.1f} GFLOP/s")
    print(f"model: {info['model']}, {info['parameters'] / 1e6:.1f} M parameters, random weights\n")
    print(f"| DDIM-{a.steps}, {a.n} images of 3×32×32 | scoregen s | diffusers s | speed-up | scoregen spread | diffusers spread |")
    print("|---|---:|---:|---:|---:|---:|")
    for threads, s, t, ours, theirs in rows:
        spread = lambda v: f"{min(v):.1f}–{max(v):.1f}"
        print(f"| {threads} thread{'s' if threads > 1 else ''} | {s:.1f} | {t:.1f} | {t / s:.2f}× | {spread(ours)} | {spread(theirs)} |")
    print(f"\nmedian of {a.rounds} rounds, each pair alternating which goes first; speed-up = diffusers / scoregen.")
    print(f"bits/dim of the {a.n} samples (probability-flow ODE, RK45 at rtol = atol = 1e-3, Hutchinson with one probe, 2 threads): "
          f"{lik['mean_bits_per_dim']:.3f} ± {lik['stderr_nats'] / (3072 * 0.6931471805599453):.3f} bits/dim, "
          f"{lik['nfe']} score evaluations, {lik['seconds']:.1f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ddim": record, "likelihood": lik, "gemm_gflops": rate}, f, indent=1)


if __name__ == "__main__":
    main()
