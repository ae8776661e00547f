#!/usr/bin/env python3
"""Speed at the field's model sizes (issue 31): `bench/run field`.

Two networks, each step timed in scoregen (`scoregen bench step … --json`) and in
PyTorch, eager and `torch.compile` (inductor, CPU), at 1 and 2 threads, every
case in its own process (so its peak RSS is that case's), the three sides
alternating which goes first in each round:

  mnist5k   configs/mnist5k-vp.toml's U-Net (the fashion-vp preset has the same
            network): 28×28, 16 → 32 → 64 channels, self-attention at 7×7, 10
            classes + the null label, EDM preconditioning; batch 64. PyTorch side:
            its twin below (same layers, same parameter count).
  cifar     google/ddpm-cifar10-32's UNet2DModel (35.7 M parameters, random
            weights; scoregen's `model.kind = "unet2d"`), ε-prediction on the VP
            SDE; PyTorch side: diffusers' own UNet2DModel.

Phases: `train` (forward, backward, clipping at 1, Adam, EMA), `sample` (one
Euler–Maruyama step of the reverse SDE with the frozen model; classifier-free
guidance with the preset's w for mnist5k: two network evaluations), `vjp` (the
likelihood's integrand: s(x, t) and one vector–Jacobian product with respect to
x, weights frozen).

FLOPs per step: conv, linear and attention-matmul multiply–adds ×2, counted
analytically by scoregen (UNetConfig/UNet2DConfig::forward_flops) for the
forward pass, times 3 for a training step (forward + backward = 3× forward,
the usual convention), 2 for a guided sampling step, 2 for forward + VJP (∇ₓ
only: one GEMM per layer in the backward). The same number serves both sides;
torch.utils.flop_counter's count of the PyTorch forward is printed beside it
as a check. % of peak: that rate over the machine's GEMM 1024³ rate (the
larger of candle's and PyTorch's at that thread count).

  python3 bench/field.py --scoregen target/release/scoregen [--threads 1,2] [--rounds 3]
  python3 bench/field.py torch --mode eager --model cifar --phase train --batch 8   (one PyTorch case)
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# (model, phase, batch, warm-up, repetitions): each step is timed `reps` times after `warmup`.
# Both sides take three to four calls to settle at the CIFAR size (first-touched memory, caches):
# measured per call at 2 threads, PyTorch eager's forward + VJP ran 1973, 1693, 1591, 1470 ms and
# scoregen's 2114, 1180, 1221, 1022 ms before holding steady, so the frozen CIFAR rows, which stand
# for sampling and likelihood loops of hundreds of steps, are timed after three calls on each side.
CASES = [
    ("mnist5k", "train", 64, 2, 5),
    ("mnist5k", "sample", 64, 2, 5),
    ("mnist5k", "vjp", 64, 2, 5),
    ("cifar", "train", 8, 1, 3),
    ("cifar", "train", 32, 1, 1),
    ("cifar", "sample", 16, 3, 5),
    ("cifar", "vjp", 8, 3, 5),
]
FORWARDS = {"train": 3, "sample": None, "vjp": 2}  # sample: 2 with guidance (mnist5k), else 1
BETA_MIN, BETA_MAX = 0.1, 20.0


# ---------------------------------------------------------------- the PyTorch side


def vp_marginal(t):
    lm = -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    return lm.exp(), (-torch.expm1(2.0 * lm)).sqrt()


def vp_beta(t):
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


def mnist5k_net(**sizes):
    """Twin of nets/unet.rs with configs/mnist5k-vp.toml's sizes: torch_ref.py's
    U-Net with the attention at the lowest resolution and the class embedding."""
    from torch_ref import UNet

    sizes = {"c": 1, "ch": 16, "mult": (1, 2, 4), "groups": 8, "embed": 32, "scale": 4.0, "classes": 10, **sizes}
    return UNet(attention=True, **sizes)


SIGMA_DATA = 0.5


def edm_denoise(net, xhat, sigma, y):
    """EDM's D(x̂; σ) = c_skip x̂ + c_out F(c_in x̂, c_noise) (Karras et al. 2022, Table 1)."""
    s2 = sigma * sigma + SIGMA_DATA**2
    c_skip, c_out, c_in = SIGMA_DATA**2 / s2, sigma * SIGMA_DATA / s2.sqrt(), 1.0 / s2.sqrt()
    v = lambda a: a.view(-1, 1, 1, 1)
    return v(c_skip) * xhat + v(c_out) * net(v(c_in) * xhat, sigma.log() / 4, y)


def mnist5k_score(net, x, t, y):
    """The VP SDE's score through the EDM denoiser: x = m·x̂, σ = std/m, s = (m·D − x)/std²."""
    mean, std = vp_marginal(t)
    v = lambda a: a.view(-1, 1, 1, 1)
    d = edm_denoise(net, x / v(mean), std / mean, y)
    return (v(mean) * d - x) / v(std * std)


def cifar_net():
    from diffusers import UNet2DModel
    from pretrained import DDPM_CIFAR10

    return UNet2DModel(**DDPM_CIFAR10)


def cifar_score(net, x, t, _y=None):
    """ε-prediction on the VP SDE, the network asked at 999·t: s = −ε̂/std."""
    _, std = vp_marginal(t)
    return -net(x, 999.0 * t).sample / std.view(-1, 1, 1, 1)


def forward_gflop(model, base, batch):
    """torch.utils.flop_counter's count of one forward pass (a check of scoregen's analytic count)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, *model["shape"])
    t = torch.full((batch,), 0.5)
    y = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model["score"](base, x, t, y)
    return fc.get_total_flops() / 1e9


MODELS = {
    "mnist5k": {"net": mnist5k_net, "score": mnist5k_score, "shape": (1, 28, 28), "lr": 2e-3, "ema": 0.999,
                "guidance": 0.3, "classes": 10},
    "cifar": {"net": cifar_net, "score": cifar_score, "shape": (3, 32, 32), "lr": 2e-4, "ema": 0.9999,
              "guidance": 0.0, "classes": 0},
}


def torch_case(a):
    """One PyTorch case in this process: JSON with the fields `scoregen bench` prints, plus compile_s."""
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MODELS[a.model]
    base = model["net"]()
    net = base
    if a.mode == "compile":
        net = torch.compile(base)
    score, shape, b, k = model["score"], model["shape"], a.batch, model["classes"]
    data = torch.rand(256, *shape) * 2 - 1
    labels = torch.randint(0, max(k, 1), (256,))
    v = lambda z: z.view(-1, 1, 1, 1)

    if a.phase == "train":
        params = list(base.parameters())
        opt = torch.optim.Adam(params, lr=model["lr"], betas=(0.9, 0.999), eps=1e-8)
        shadow = [p.detach().clone() for p in params]
        updates = [0]

        def step():
            idx = torch.randint(0, data.shape[0], (b,))
            x0, z = data[idx], torch.randn(b, *shape)
            if a.model == "mnist5k":
                # EDM weighting, log-normal σ (ln σ ~ N(−1.2, 1.2²)), 10% of the labels dropped to the null label
                y = torch.where(torch.rand(b) < 0.1, torch.full((b,), k), labels[idx])
                sigma = (-1.2 + 1.2 * torch.randn(b)).exp()
                d = edm_denoise(net, x0 + v(sigma) * z, sigma, y)
                lam = (sigma * sigma + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
                loss = (0.5 * lam * (d - x0).square().flatten(1).mean(1)).mean()
            else:
                t = torch.rand(b) * (1.0 - 1e-5) + 1e-5
                mean, std = vp_marginal(t)
                eps = net(v(mean) * x0 + v(std) * z, 999.0 * t).sample
                loss = (0.5 * (eps - z).square().flatten(1).mean(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            n = updates[0]
            with torch.no_grad():
                torch._foreach_lerp_(shadow, params, 1.0 - min(model["ema"], (1 + n) / (10 + n)))
            updates[0] += 1
            return loss.item()

        f, forwards = step, 3
    else:
        base.requires_grad_(False)
        base.eval()
        y = torch.arange(b) % max(k, 1)
        null = torch.full((b,), k)
        w = model["guidance"]

        def guided(x, t):
            s = score(net, x, t, y)
            return (1 + w) * s - w * score(net, x, t, null) if w > 0 else s

        if a.phase == "sample":
            steps, eps_t = 1, 1e-3
            h = -(1.0 - eps_t) / steps

            def f():
                with torch.no_grad():
                    x = torch.randn(b, *shape)
                    t = torch.ones(b)
                    beta = vp_beta(t)
                    drift = -0.5 * v(beta) * x - v(beta) * guided(x, t)
                    return x + drift * h + v((beta * abs(h)).sqrt()) * torch.randn_like(x)

            forwards = 2 if w > 0 else 1
        else:
            x0 = torch.randn(b, *shape)
            probe = (torch.rand(b, *shape) < 0.5).float() * 2 - 1
            t = torch.full((b,), 0.5)

            def f():
                x = x0.clone().requires_grad_(True)
                s = guided(x, t)
                g = torch.autograd.grad((s * probe).sum(), x)[0]
                return s.detach(), (g * probe).flatten(1).sum(1)

            forwards = 2

    compile_s = None
    warmup = a.warmup
    if a.mode == "compile":
        # the first call compiles (forward, and backward where there is one); the second may specialize once more
        start = time.perf_counter()
        try:
            f()
            f()
        except Exception as e:  # inductor cannot build here: say so instead of failing the table
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            return {"case": f"{a.model} {a.phase} B={b}", "error": msg[:300],
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        compile_s = time.perf_counter() - start
        warmup = max(0, warmup - 2)
    warm = []
    for _ in range(warmup):
        start = time.perf_counter()
        f()
        warm.append((time.perf_counter() - start) * 1e3)
    ms, cpu = [], []
    for _ in range(max(1, a.reps)):
        start, cpu0 = time.perf_counter(), time.process_time()
        f()
        ms.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - cpu0) * 1e3)
    med = sorted(ms)[len(ms) // 2]
    if compile_s is not None:
        compile_s = max(0.0, compile_s - 2 * med / 1e3)  # the two first calls' own run time excluded
    out = {
        "case": f"{a.model} {a.phase} B={b}",
        "median_ms": med,
        "reps_ms": ms,
        "warmup_ms": warm,
        "cpu_ms": sorted(cpu)[len(cpu) // 2],
        "items_per_s": b / (med / 1e3),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "compile_s": compile_s,
        "forwards": forwards,
        "parameters": sum(p.numel() for p in base.parameters()),
    }
    if a.mode == "eager":
        out["torch_forward_gflop"] = forward_gflop(model, base, b)
    return out


# ---------------------------------------------------------------- the driver


def mem_total_mib():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return float("inf")


def run_json(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:  # something else printed before the JSON line
        return json.loads(proc.stdout.strip().splitlines()[-1])


def median_round(results):
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    if not ok:
        return results[-1]
    ordered = sorted(ok, key=lambda r: r["median_ms"])
    return ordered[(len(ordered) - 1) // 2]


def load():
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def summarize(sides):
    """Each side's median round; the compiled side with its compile time cold (round 1, an empty
    inductor cache: the driver gives the run a fresh one) and cached (the median of later rounds)."""
    s, e, c = (median_round(sides[k]) for k in ("scoregen", "eager", "compile"))
    times = [r.get("compile_s") for r in sides["compile"]]
    later = [x for x in times[1:] if x is not None]
    c = dict(c, compile_cold_s=times[0], compile_cached_s=statistics.median(later) if later else None)
    return s, e, c


def driver(a):
    threads = [int(t) for t in a.threads.split(",")]
    cases = [c for c in CASES if not a.only or f"{c[0]}-{c[1]}" in a.only.split(",")]
    record = {"cases": [], "gemm": {}, "loads": [load()], "rounds": a.rounds, "mem_mib": mem_total_mib()}
    mem = record["mem_mib"]
    started = time.time()
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="field-inductor-")
    for th in threads:
        env = dict(os.environ, RAYON_NUM_THREADS=str(th), CANDLE_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th),
                   MKL_NUM_THREADS=str(th))
        gemm = lambda: [
            run_json([a.scoregen, "--quiet", "--json", "bench", "gemm", "--n", "1024", "--reps", "10"], env),
            run_json([sys.executable, os.path.join(HERE, "torch_ref.py"), "--threads", str(th), "gemm"], env),
        ]
        # measured before and after the cases: the faster of the two is the peak (a busy machine lowers one)
        record["gemm"][str(th)] = gemm()
        peaks = {}  # scoregen's peak RSS per (model, phase, batch), for the memory guard
        for i, (model, phase, batch, warmup, reps) in enumerate(cases):
            args = ["--model", model, "--phase", phase, "--batch", str(batch), "--warmup", str(warmup),
                    "--reps", str(reps)]
            ours = [a.scoregen, "--quiet", "--json", "bench", "step"] + args
            theirs = lambda mode: [sys.executable, os.path.abspath(__file__), "torch", "--threads", str(th),
                                   "--mode", mode] + args
            # the memory guard: a batch we have measured smaller, scaled linearly, must fit in 80% of RAM
            guard = None
            smaller = [(bb, p) for (m, ph, bb), p in peaks.items() if (m, ph) == (model, phase) and bb < batch]
            if smaller:
                bb, p = max(smaller)
                need = p * batch / bb
                if need > 0.8 * mem:
                    guard = (f"not run: needs ≈{need / 1024:.0f} GiB ({batch / bb:.0f}× the B={bb} row's "
                             f"{p / 1024:.1f} GiB), the machine has {mem / 1024:.0f} GiB")
            sides = {"scoregen": [], "eager": [], "compile": []}
            for r in range(max(1, a.rounds)):
                order = [("scoregen", ours), ("eager", theirs("eager")), ("compile", theirs("compile"))]
                shift = (i + r) % 3
                for name, cmd in order[shift:] + order[:shift]:
                    if name == "scoregen" and guard:
                        sides[name].append({"skipped": guard})
                        continue
                    sides[name].append(run_json(cmd, env))
            s, e, c = summarize(sides)
            if "peak_rss_mib" in s and "skipped" not in s:
                peaks[(model, phase, batch)] = s["peak_rss_mib"]
            record["cases"].append({"threads": th, "model": model, "phase": phase, "batch": batch, "sides": sides,
                                    "load": load()})
            brief = lambda r: f"{r['median_ms']:.0f} ms" if "median_ms" in r else r.get("error", r.get("skipped"))
            print(f"  {th}T {model} {phase} B={batch}: scoregen {brief(s)}, eager {brief(e)}, compiled {brief(c)}"
                  f" ({load()})", file=sys.stderr)
            record["minutes"] = (time.time() - started) / 60
            if a.json:  # after every case, so an interrupted run keeps what it measured (--table FILE prints it)
                with open(a.json, "w") as f:
                    json.dump(record, f, indent=1)
        record.setdefault("gemm_after", {})[str(th)] = gemm()
        record["loads"].append(load())
    record["minutes"] = (time.time() - started) / 60
    if a.json:
        with open(a.json, "w") as f:
            json.dump(record, f, indent=1)
    render(record)


def render(record):
    """The Markdown tables of a run's record (one per thread count)."""
    from compare import cpu_flags, cpu_model

    mem = record["mem_mib"]
    print(f"CPU: {cpu_model()}; flags: {' '.join(cpu_flags()) or 'none of avx2, fma, avx512*'}; "
          f"{os.cpu_count()} logical CPUs, {mem / 1024:.0f} GiB")
    try:
        import diffusers
        import torch as _torch

        print(f"PyTorch {_torch.__version__}, diffusers {diffusers.__version__}")
    except ImportError:
        pass
    print(f"machine load: {'; '.join(record['loads'])} (at the start and after each thread count); "
          f"{record['rounds']} round(s), median round per side; whole run {record.get('minutes', 0):.0f} min")
    for th, gemm in record["gemm"].items():
        g = lambda r: r["gflop"] / (r["median_ms"] / 1e3)
        after = record.get("gemm_after", {}).get(th, gemm)
        rates = [max(g(b), g(e)) for b, e in zip(gemm, after)]
        peak = max(rates)
        th = int(th)
        print(f"\n**{th} thread{'s' if th > 1 else ''}**: GEMM 1024³ f32 candle {rates[0]:.0f} GFLOP/s "
              f"(kernel {gemm[0].get('kernel', '?')}), PyTorch {rates[1]:.0f} GFLOP/s "
              f"(kernel {gemm[1].get('kernel', '?')}), the faster of before and after the cases; "
              f"peak = {peak:.0f} GFLOP/s\n")
        print("| case | GFLOP/step | scoregen ms | eager ms | compiled ms | vs eager | vs compiled | "
              "best round ms scoregen / eager / compiled | best vs eager / compiled | "
              "first call ms scoregen / eager | compile s cold / cached | % peak scoregen / eager / compiled | "
              "peak RSS MiB scoregen / eager / compiled | load |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        notes = []
        for case in (c for c in record["cases"] if c["threads"] == th):
            model, phase, batch = case["model"], case["phase"], case["batch"]
            s, e, c = summarize(case["sides"])
            flop = s.get("gflop")
            if flop is None and "torch_forward_gflop" in e:
                flop = e.get("forwards", 1) * e["torch_forward_gflop"]
            ms = lambda r: f"{r['median_ms']:.0f}" if "median_ms" in r else "–"
            best = {k: min((x["median_ms"] for x in v if "median_ms" in x), default=None)
                    for k, v in case["sides"].items()}
            ratio = lambda r: f"{r['median_ms'] / s['median_ms']:.2f}×" if "median_ms" in r and "median_ms" in s else "–"
            pct = lambda r: f"{100 * flop / (r['median_ms'] / 1e3) / peak:.0f}%" if flop and "median_ms" in r else "–"
            rss = lambda r: f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r and "skipped" not in r else "–"
            fmt = lambda x: f"{x:.0f}" if x is not None else "–"
            comp = f"{fmt(c.get('compile_cold_s'))} / {fmt(c.get('compile_cached_s'))}"
            lavg = case.get("load", "").replace("load average ", "").split(",")[0]
            bst = lambda k: f"{best[k]:.0f}" if best[k] else "–"
            bratio = lambda k: f"{best[k] / best['scoregen']:.2f}×" if best[k] and best["scoregen"] else "–"
            firsts = lambda k: [x["warmup_ms"][0] for x in case["sides"][k] if x.get("warmup_ms")]
            first = lambda k: fmt(statistics.median_low(firsts(k)) if firsts(k) else None)
            print(f"| {model} {phase} B={batch} | {flop or 0:.1f} | {ms(s)} | {ms(e)} | {ms(c)} | {ratio(e)} | "
                  f"{ratio(c)} | {bst('scoregen')} / {bst('eager')} / {bst('compile')} | "
                  f"{bratio('eager')} / {bratio('compile')} | {first('scoregen')} / {first('eager')} | {comp} | {pct(s)} / {pct(e)} / {pct(c)} | {rss(s)} / {rss(e)} / {rss(c)} | {lavg} |")
            for side, r in (("scoregen", s), ("compiled", c), ("eager", e)):
                if "error" in r or "skipped" in r:
                    notes.append(f"{model} {phase} B={batch}, {side}: {r.get('error') or r.get('skipped')}")
            if s.get("gflop") and "torch_forward_gflop" in e:
                ours = s["gflop"] / e.get("forwards", 1)
                if abs(ours - e["torch_forward_gflop"]) > 0.02 * ours:
                    notes.append(f"{model} B={batch}: forward GFLOP scoregen {ours:.2f}, "
                                 f"torch.utils.flop_counter {e['torch_forward_gflop']:.2f}")
        for n in notes:
            print(f"- {n}")
    print("\nvs eager / vs compiled = PyTorch ms / scoregen ms (above 1: scoregen is faster). GFLOP/step: "
          "conv, linear and attention matmuls (2 per multiply–add), training = 3× forward, guided sampling "
          "step = 2× forward, forward + VJP = 2× forward. compile s: torch.compile's first two calls less "
          "two steps, into an empty inductor cache (round 1) / the median of later rounds (cached kernels). "
          "best round: each side's fastest round (the least disturbed by other processes). "
          "first call: the first, untimed warm-up call (median over rounds; fresh memory, and scoregen's "
          "frozen layers making the transforms they keep), what a command of a few steps pays once. "
          "load: the 1-minute load average when the case finished.")


def _has_diffusers():
    try:
        import diffusers  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "torch":
        p = argparse.ArgumentParser()
        p.add_argument("torch")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--mode", choices=["eager", "compile"], default="eager")
        p.add_argument("--model", choices=list(MODELS), required=True)
        p.add_argument("--phase", choices=["train", "sample", "vjp"], required=True)
        p.add_argument("--batch", type=int, required=True)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--reps", type=int, default=3)
        a = p.parse_args()
        global torch
        import torch
        print(json.dumps(torch_case(a)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scoregen")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--only", help="comma-separated model-phase names (mnist5k-train,cifar-vjp,…)")
    p.add_argument("--json", help="also write every measurement to this file (after every case)")
    p.add_argument("--table", metavar="FILE", help="print the tables of a --json file (also of an interrupted run)")
    a = p.parse_args()
    if a.table:
        with open(a.table) as f:
            render(json.load(f))
        return
    if not a.scoregen:
        p.error("--scoregen EXE is needed to run the cases")
    driver(a)


if __name__ == "__main__":
    main()
