#!/usr/bin/env python3
"""PyTorch reference for `scoregen bench`: the same models, data, loss,
optimizer and samplers, timed the same way (median of `reps` after `warmup`).

Mirrors crates/scoregen/src/app/commands/bench.rs case by case and prints one JSON object
with the fields scoregen prints under --json (case, median_ms, reps_ms,
items_per_s, gflop, peak_rss_mib).

The models:
  mlp  configs/gmm8-vp.toml: h0 = [x, γ(t)], h1 = SiLU(W_in h0), then per
       hidden layer h = SiLU(W h + U γ(t)), out = W_out h; γ(t) Gaussian
       Fourier features (32, scale 4); output scaled by 1/std(t) (score-over-std).
  unet configs/digits-vp.toml: see UNet below (nets/unet.rs).
Training step: DSM on the VP SDE (β 0.1 → 20) with λ = σ², mean reduction,
t ~ U(t_eps, 1), global-norm clipping at 1, Adam (β 0.9/0.999, ε 1e-8, lr 2e-3),
EMA with decay min(0.999, (1+n)/(10+n)).

--device cpu (default) or cuda[:N] runs every case on that device (like
`scoregen --device`); each timed repetition then ends with a CUDA synchronize.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BETA_MIN, BETA_MAX = 0.1, 20.0
DEVICE = torch.device("cpu")  # set from --device in main()


def sync():
    """Waits for the GPU's queued kernels (nothing to wait for on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def vp_log_mean(t):
    return -0.25 * t * t * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN


def vp_marginal(t):
    lm = vp_log_mean(t)
    return torch.exp(lm), torch.sqrt(-torch.expm1(2.0 * lm))


def vp_beta(t):
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


class Fourier(nn.Module):
    def __init__(self, dim, scale):
        super().__init__()
        self.register_buffer("w", 2 * math.pi * scale * torch.randn(1, dim // 2))

    def forward(self, t):
        a = t[:, None] * self.w
        return torch.cat([a.sin(), a.cos()], 1)


class Mlp(nn.Module):
    def __init__(self, dim=2, width=128, depth=3, embed=32, scale=4.0):
        super().__init__()
        self.embed = Fourier(embed, scale)
        self.input = nn.Linear(dim + embed, width)
        self.time = nn.ModuleList([nn.Linear(embed, width) for _ in range(depth - 1)])
        self.hidden = nn.ModuleList([nn.Linear(width, width) for _ in range(depth - 1)])
        self.output = nn.Linear(width, dim)

    def forward(self, x, t):
        e = self.embed(t)
        h = F.silu(self.input(torch.cat([x, e], 1)))
        for lin, tim in zip(self.hidden, self.time):
            h = F.silu(lin(h) + tim(e))
        return self.output(h)


class Conv(nn.Module):
    """k×k "same" conv, stride 1 or 2 (nets/unet.rs Conv)."""

    def __init__(self, cin, cout, k=3, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)

    def forward(self, x):
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = Conv(cin, cout)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = Conv(cout, cout)
        self.skip = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        s = self.skip(x) if self.skip is not None else x
        return (s + h) / math.sqrt(2.0)


class Attention(nn.Module):
    """out = (x + W_o V softmax(QᵀK/√C)) / √2, Q, K, V 1×1 projections of GN(x) (single head)."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.qkv = nn.Linear(c, 3 * c)
        self.out = nn.Linear(c, c)

    def forward(self, x):
        n, c, h, w = x.shape
        seq = self.norm(x).reshape(n, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(seq).chunk(3, dim=2)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        y = self.out(att @ v).transpose(1, 2).reshape(n, c, h, w)
        return (x + y) / math.sqrt(2.0)


class UNet(nn.Module):
    """conv_in → [ResBlock, ↓]ₗ → ResBlock, (Attention,) ResBlock → [↑, ResBlock(concat skip)]ₗ → GN, SiLU, conv_out;
    with `classes` K, the embedding of label y ∈ 0..K (K: no label) joins the time embedding (bench/field.py's
    mnist5k twin has both; this file's cases neither)."""

    def __init__(self, c=1, ch=16, mult=(1, 2), groups=4, embed=32, scale=4.0, attention=False, classes=0):
        super().__init__()
        temb = 4 * ch
        self.fourier = Fourier(embed, scale)
        self.emb1 = nn.Linear(embed, temb)
        self.emb2 = nn.Linear(temb, temb)
        self.classes = nn.Embedding(classes + 1, temb) if classes else None
        self.conv_in = Conv(c, ch)
        chans = [ch * m for m in mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = ch
        for l, co in enumerate(chans):
            self.down.append(ResBlock(prev, co, temb, groups))
            prev = co
            if l + 1 < len(chans):
                self.downsample.append(Conv(co, co, 3, 2))
        self.mid1 = ResBlock(prev, prev, temb, groups)
        self.attention = Attention(prev, groups) if attention else nn.Identity()
        self.mid2 = ResBlock(prev, prev, temb, groups)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for l in reversed(range(len(chans))):
            co = chans[l]
            if l + 1 < len(chans):
                self.upsample.append(Conv(prev, prev))
            self.up.append(ResBlock(prev + co, co, temb, groups))
            prev = co
        self.norm_out = nn.GroupNorm(groups, prev, eps=1e-6)
        self.conv_out = Conv(prev, c)

    def forward(self, x, t, y=None):
        emb = F.silu(self.emb2(F.silu(self.emb1(self.fourier(t)))))
        if self.classes is not None:
            emb = emb + self.classes(y)
        h = self.conv_in(x)
        skips = []
        for l, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if l < len(self.downsample):
                h = self.downsample[l](h)
        h = self.mid2(self.attention(self.mid1(h, emb)), emb)
        ups = iter(self.upsample)
        for i, block in enumerate(self.up):
            if i > 0:
                h = next(ups)(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = block(torch.cat([h, skips.pop()], 1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def score(net, x, t):
    """score-over-std: s = net(x, t) / std(t)."""
    _, std = vp_marginal(t)
    return net(x, t) / std.view(-1, *([1] * (x.dim() - 1)))


def timed(case, items, warmup, reps, f):
    for _ in range(warmup):
        f()
    sync()
    ms, cpu = [], []
    for _ in range(max(reps, 1)):
        start, cpu_start = time.perf_counter(), time.process_time()
        f()
        sync()
        ms.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - cpu_start) * 1e3)
    med = sorted(ms)[len(ms) // 2]
    return {
        "case": case,
        "median_ms": med,
        "reps_ms": ms,
        "cpu_ms": sorted(cpu)[len(cpu) // 2],
        "items_per_s": items / (med / 1e3),
        "gflop": None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def train(args):
    if args.model == "mlp":
        net = Mlp(width=args.width).to(DEVICE)
        data = torch.randn(10_000, 2, device=DEVICE)
        t_eps, case = 1e-5, f"train mlp W={args.width} B={args.batch}"
    else:
        net = UNet().to(DEVICE)
        data = torch.rand(256, 1, args.side, args.side, device=DEVICE)
        t_eps, case = 1e-3, f"train unet {args.side}x{args.side} B={args.batch}"
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8)
    shadow = [p.detach().clone() for p in params]
    ema_updates = [0]

    def step():
        x0 = data[torch.randint(0, data.shape[0], (args.batch,), device=DEVICE)]
        t = torch.rand(args.batch, device=DEVICE) * (1.0 - t_eps) + t_eps
        z = torch.randn_like(x0)
        mean, std = vp_marginal(t)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        xt = mean.view(shape) * x0 + std.view(shape) * z
        s = score(net, xt, t)
        residual = (s * std.view(shape) + z).flatten(1)
        loss = (0.5 * residual.square().mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        n = ema_updates[0]
        d = min(0.999, (1 + n) / (10 + n))
        with torch.no_grad():
            torch._foreach_lerp_(shadow, params, 1.0 - d)
        ema_updates[0] += 1
        return loss.item()

    out = timed(case, args.batch, args.warmup, args.reps, step)
    if args.model == "mlp":
        w, e, b = args.width, 32, args.batch
        macs = (2 + e) * w + 2 * (w * w + e * w) + w * 2
        out["gflop"] = 3 * 2 * b * macs / 1e9
    return out


def model_and_shape(args, n):
    """The model of a sampling or likelihood case and the shape of its batch."""
    if args.model == "mlp":
        return Mlp(width=128), (n, 2), ""
    return UNet(), (n, 1, args.side, args.side), f"unet {args.side}x{args.side} "


@torch.no_grad()
def sample(args):
    eps, n, steps = 1e-3, args.n, args.steps
    net, shape, label = model_and_shape(args, n)
    net = net.to(DEVICE)
    net.requires_grad_(False)
    h = -(1.0 - eps) / steps

    def drift(x, t, c):
        tb = torch.full((x.shape[0],), t, device=DEVICE)
        beta = vp_beta(t)
        return -0.5 * beta * x - c * beta * score(net, x, tb)

    def em():
        x = torch.randn(shape, device=DEVICE)
        for i in range(steps):
            t = 1.0 + i * h
            mean = x + drift(x, t, 1.0) * h
            x = mean + math.sqrt(vp_beta(t) * abs(h)) * torch.randn_like(x)
        return x

    def heun():
        x = torch.randn(shape, device=DEVICE)
        for i in range(steps):
            t = 1.0 + i * h
            k1 = drift(x, t, 0.5)
            k2 = drift(x + h * k1, t + h, 0.5)
            x = x + h * (0.5 * k1 + 0.5 * k2)
        return x

    name = {"em": "em", "ode": "ode-heun"}[args.sampler]
    f = em if args.sampler == "em" else heun
    return timed(f"sample {label}{name} n={n} steps={steps}", n, 0, args.reps, f)


def likelihood(args):
    eps, n, steps = 1e-3, args.n, args.steps
    net, shape, label = model_and_shape(args, n)
    net = net.to(DEVICE)
    # evaluation only, as scoregen's frozen EMA copy: no parameter gradients
    net.requires_grad_(False)
    d = math.prod(shape[1:])
    x0 = torch.randn(n, d, dtype=torch.float64, device=DEVICE)
    h = (1.0 - eps) / steps
    # exact divergence for the 2-D MLP; one Rademacher probe (Hutchinson) for images, as scoregen's default
    probe = (torch.rand(shape) < 0.5).float() * 2 - 1

    def rhs(t, y):
        xs = y[:, :d].float().reshape(shape).requires_grad_(True)
        tb = torch.full((n,), t, device=DEVICE)
        s = score(net, xs, tb)
        if d <= 16:
            s = s.reshape(n, d)
            div = sum(torch.autograd.grad(s[:, i].sum(), xs, retain_graph=i + 1 < d)[0][:, i] for i in range(d))
        else:
            vjp = torch.autograd.grad((s * probe).sum(), xs)[0]
            div = (vjp * probe).flatten(1).sum(1)
        s = s.reshape(n, d)
        beta = vp_beta(t)
        a = -0.5 * beta
        dx = a * y[:, :d] - 0.5 * beta * s.detach().double()
        ddiv = a * d - 0.5 * beta * div.double()
        return torch.cat([dx, ddiv[:, None]], 1)

    def run():
        y = torch.cat([x0, torch.zeros(n, 1, dtype=torch.float64, device=DEVICE)], 1)
        for i in range(steps):
            t = eps + i * h
            k1 = rhs(t, y)
            k2 = rhs(t + h, y + h * k1)
            y = y + h * (0.5 * k1 + 0.5 * k2)
        return y

    return timed(f"likelihood {label}n={n} steps={steps}", n, 0, args.reps, run)


def gemm(args):
    a, b = torch.randn(args.n, args.n, device=DEVICE), torch.randn(args.n, args.n, device=DEVICE)
    out = timed(f"gemm {args.n}x{args.n}", 1, 2, args.reps, lambda: a @ b)
    out["gflop"] = 2 * args.n**3 / 1e9
    out["kernel"] = torch.backends.cpu.get_cpu_capability()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", default="mlp", choices=["mlp", "unet"])
    t.add_argument("--width", type=int, default=128)
    t.add_argument("--side", type=int, default=28)
    t.add_argument("--batch", type=int, default=512)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--reps", type=int, default=30)
    s = sub.add_parser("sample")
    s.add_argument("--model", default="mlp", choices=["mlp", "unet"])
    s.add_argument("--side", type=int, default=28)
    s.add_argument("--sampler", default="em", choices=["em", "ode"])
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--reps", type=int, default=3)
    lk = sub.add_parser("likelihood")
    lk.add_argument("--model", default="mlp", choices=["mlp", "unet"])
    lk.add_argument("--side", type=int, default=28)
    lk.add_argument("--n", type=int, default=1000)
    lk.add_argument("--steps", type=int, default=100)
    lk.add_argument("--reps", type=int, default=3)
    g = sub.add_parser("gemm")
    g.add_argument("--n", type=int, default=1024)
    g.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"torch_ref.py: --device {args.device}, but this torch has no CUDA device")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(json.dumps({"train": train, "sample": sample, "likelihood": likelihood, "gemm": gemm}[args.cmd](args)))


if __name__ == "__main__":
    main()
