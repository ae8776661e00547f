"""A trained run's network as a ``torch.nn.Module`` (needs PyTorch), and back.

``scoregen.torch.load(run)`` rebuilds the network of any run in PyTorch, with
the weights read from the run's safetensors checkpoint by this module's own
reader, and returns a :class:`ScoreModule` whose ``forward(x, t, labels=None)``
is the score s_θ(x, t), as :meth:`scoregen.Run.score` computes it in Rust, and
whose ``net`` is the network itself (``net(x, t)`` = :meth:`scoregen.Run.model_output`).
Every network kind of ``model.kind``:

- ``time-mlp``, ``mlp``, ``ncsn-mlp`` (:class:`Mlp`): Fourier time features
  e(t) = [sin(2πWt), cos(2πWt)] (W fixed, from the run's seed), none, or a
  learned embedding of the noise level i = round(t·(L − 1)); class-conditional
  ``time-mlp`` adds a learned class embedding to e (label K: no label):
  h₀ = SiLU(W_in [x, e] + b_in), h_l = SiLU(W_l h_{l−1} + b_l + T_l e + c_l),
  out = W_out h_L + b_out.
- ``energy-mlp`` (:class:`EnergyModule`): f_θ(x) the same MLP with one output;
  the score is −∇ₓ f_θ (by autograd, differentiable again).
- ``unet`` (:class:`UNet`): scoregen's U-Net (GroupNorm–SiLU–conv residual
  blocks, one self-attention block at the lowest resolution, nearest ×2
  upsampling, class embeddings), the function scoregen's fused kernels compute.
- ``unet2d``: a ``diffusers.UNet2DModel`` built from the run's
  ``[model.unet2d]`` table (needs diffusers), its time input the run's
  (the chain's nearest timestep, σ(t) for VE, 999·t otherwise).

The network's output becomes a score as the run's ``[model]`` says: ``score``,
``score-over-std`` (out/s(t)), ``epsilon`` (−out/s(t)), ``v``, ``x0``, or EDM's
preconditioning (``preconditioning = "edm"``: c_skip, c_out, c_in, c_noise),
with m(t), s(t) the run's SDE marginal (computed by scoregen, in float64).

``scoregen.torch.save(module, run)`` writes the module's parameters back as the
run's weights (model and EMA), in scoregen's names, so a network fine-tuned in
PyTorch samples in scoregen.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._scoregen import Run, _save_weights

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "U8": np.uint8}


def read_safetensors(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file: an 8-byte little-endian header size,
    a JSON header {name: {dtype, shape, data_offsets}}, then the raw bytes."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        body = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor `{name}` has dtype {info['dtype']}, which this reader does not know")
        out[name] = np.frombuffer(body[lo:hi], dtype=np.dtype(dt).newbyteorder("<")).reshape(info["shape"]).copy()
    return out


def _toml(text: str) -> dict:
    try:
        import tomllib  # Python ≥ 3.11
    except ModuleNotFoundError:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _times(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class Embedding(nn.Embedding):
    """A lookup table (``weight`` [rows, dim], as candle's) indexed by any integer or float ids."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids.long())


class Mlp(nn.Module):
    """scoregen's MLP (``time-mlp``, ``mlp``, ``ncsn-mlp``, and the energy's f_θ);
    ``embed``: "fourier", "levels" or "none" (see the module docstring)."""

    def __init__(self, in_dim, out_dim, width, depth, embed="none", embed_dim=0, freqs=None, levels=0, classes=0):
        super().__init__()
        self.embed = embed
        e = 0 if embed == "none" else embed_dim
        if embed == "fourier":
            self.register_buffer("freqs", torch.as_tensor(np.asarray(freqs, np.float32)).reshape(1, -1), persistent=False)
        elif embed == "levels":
            self.levels = Embedding(levels, embed_dim)
            self.n_levels = levels
        self.input = nn.Linear(in_dim + e, width)
        self.time = nn.ModuleList(nn.Linear(e, width) for _ in range(max(depth - 1, 0)) if e)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(max(depth - 1, 0)))
        self.output = nn.Linear(width, out_dim)
        self.n_classes = classes
        if classes:
            self.classes = Embedding(classes + 1, e)

    def embedding(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        if self.embed == "fourier":
            arg = t[:, None].to(torch.float32) * self.freqs
            return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        if self.embed == "levels":
            top = self.n_levels - 1
            ids = torch.floor(t.to(torch.float64) * top + 0.5).clamp(0, top)  # f64::round of t ≥ 0
            return self.levels(ids)
        return None

    def forward(self, x: torch.Tensor, t=None, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x.to(torch.float32)
        e = self.embedding(_times(0.0 if t is None else t, x))
        if self.n_classes:
            if labels is None:
                labels = torch.full((x.shape[0],), self.n_classes, device=x.device)
            e = e + self.classes(labels)
        elif labels is not None:
            raise ValueError("this network is not class-conditional (train it with model.classes = K)")
        h = F.silu(self.input(x if e is None else torch.cat([x, e], dim=1)))
        for l, layer in enumerate(self.hidden):
            pre = layer(h)
            if e is not None:
                pre = pre + self.time[l](e)
            h = F.silu(pre)
        return self.output(h)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.skip = nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        skip = self.skip(x) if hasattr(self, "skip") else x
        return (self.conv2(F.silu(self.norm2(h))) + skip) * 0.5**0.5


class _Attention(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.out = nn.Linear(ch, ch)

    def forward(self, x):
        n, c, h, w = x.shape
        seq = self.norm(x).reshape(n, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(seq).split(c, dim=2)
        att = torch.softmax(q @ k.transpose(1, 2) / c**0.5, dim=-1)
        y = self.out(att @ v).transpose(1, 2).reshape(n, c, h, w)
        return (x + y) / 2**0.5


class UNet(nn.Module):
    """scoregen's ``unet`` (crates/scoregen-nets/src/nets/unet.rs), images [N, C, H, W]
    or flattened [N, C·H·W]; the parameter names are scoregen's."""

    def __init__(self, image, channels, channel_mult, groups, attention, embed_dim, freqs, classes=0):
        super().__init__()
        c_img = image[0]
        self.image = tuple(image)
        chs = [channels * m for m in channel_mult]
        temb = 4 * channels
        levels = len(chs)
        self.register_buffer("freqs", torch.as_tensor(np.asarray(freqs, np.float32)).reshape(1, -1), persistent=False)
        self.temb1 = nn.Linear(embed_dim, temb)
        self.temb2 = nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(c_img, channels, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        prev = channels
        for l, c in enumerate(chs):
            self.down.append(_ResBlock(prev, c, temb, groups))
            prev = c
            if l + 1 < levels:
                self.downsample.append(nn.Conv2d(prev, prev, 3, stride=2, padding=1))
        self.mid1 = _ResBlock(prev, prev, temb, groups)
        if attention:
            self.attention = _Attention(prev, groups)
        self.mid2 = _ResBlock(prev, prev, temb, groups)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for l in range(levels):
            src = chs[l + 1] if l + 1 < levels else prev
            self.up.append(_ResBlock(src + chs[l], chs[l], temb, groups))
            if l + 1 < levels:
                self.upsample.append(nn.Conv2d(chs[l + 1], chs[l + 1], 3, padding=1))
        self.norm_out = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv_out = nn.Conv2d(channels, c_img, 3, padding=1)
        self.n_classes = classes
        if classes:
            self.classes = Embedding(classes + 1, temb)

    def forward(self, x: torch.Tensor, t, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape
        x = x.to(torch.float32).reshape(shape[0], *self.image)
        arg = _times(t, x)[:, None] * self.freqs
        emb = F.silu(self.temb2(F.silu(self.temb1(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)))))
        if self.n_classes:
            if labels is None:
                labels = torch.full((x.shape[0],), self.n_classes, device=x.device)
            emb = emb + self.classes(labels)
        elif labels is not None:
            raise ValueError("this network is not class-conditional (train it with model.classes = K)")
        h = self.conv_in(x)
        skips = []
        for l, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if l < len(self.downsample):
                h = self.downsample[l](h)
        h = self.mid1(h, emb)
        if hasattr(self, "attention"):
            h = self.attention(h)
        h = self.mid2(h, emb)
        for l in reversed(range(len(self.up))):
            if l < len(self.upsample):
                h = self.upsample[l](F.interpolate(h, scale_factor=2, mode="nearest"))
            h = self.up[l](torch.cat([h, skips[l]], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))).reshape(shape)


class Diffusers(nn.Module):
    """A ``diffusers.UNet2DModel`` (``net.model``) with the run's time input:
    forward(x, t) = model(x, τ(t)).sample, τ the chain's nearest timestep, σ(t)
    (VE) or 999·t, as scoregen's ``ImportedUNet``. The parameter names are diffusers'."""

    def __init__(self, model, image, sde):
        super().__init__()
        self.model = model
        self.image = tuple(image)
        self._sde = sde
        times = sde.timestep_times
        self._timesteps = None if times is None else torch.as_tensor(np.asarray(times, np.float64))

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        t64 = t.detach().to("cpu", torch.float64)
        if self._timesteps is not None:
            tau = (t64[:, None] - self._timesteps[None, :]).abs().argmin(dim=1).to(torch.float64)
        elif self._sde.name == "ve":
            m, s = self._sde.marginal(t64.numpy())
            tau = torch.as_tensor(np.asarray(s) / np.asarray(m))
        else:
            tau = 999.0 * t64
        return tau.to(torch.float32).to(t.device)

    def forward(self, x: torch.Tensor, t, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape
        x = x.to(torch.float32).reshape(shape[0], *self.image)
        out = self.model(x, self.time_input(_times(t, x)), class_labels=labels).sample
        return out.reshape(shape)


class ScoreModule(nn.Module):
    """``forward(x, t, labels=None)``: the score s_θ(x, t) of ``net`` under the
    run's head (output kind or EDM preconditioning) and SDE; ``net(x, t)`` is the
    network's raw output, :meth:`scoregen.Run.model_output`."""

    def __init__(self, net: nn.Module, model_cfg: dict, sde):
        super().__init__()
        self.net = net
        self.preconditioning = model_cfg.get("preconditioning", "none")
        self.output_kind = model_cfg.get("output", "score-over-std")
        self.sigma_data = float(model_cfg.get("sigma_data", 0.5))
        self._sde = sde

    def marginal(self, t: torch.Tensor):
        """(m(t), s(t)) of the run's SDE, float64 tensors [N] (scoregen computes them)."""
        m, s = self._sde.marginal(t.detach().to("cpu", torch.float64).numpy())
        dev = t.device
        return torch.as_tensor(np.asarray(m, np.float64), device=dev), torch.as_tensor(np.asarray(s, np.float64), device=dev)

    @staticmethod
    def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # per-example factors computed in float64, rounded once to the output's dtype (as scoregen)
        return v.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def forward(self, x: torch.Tensor, t, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x.to(torch.float32)
        t = _times(t, x)
        m, s = self.marginal(t)
        col = self._col
        if self.preconditioning == "edm":
            sd2 = self.sigma_data**2
            sigma = s / m
            r = torch.sqrt(sigma * sigma + sd2)
            c_skip, c_out, c_in, c_noise = sd2 / (r * r), sigma * self.sigma_data / r, 1.0 / r, 0.25 * torch.log(sigma)
            out = self.net(x * col(c_in / m, x), c_noise.to(torch.float32), labels)
            return x * col((c_skip - 1.0) / (s * s), x) + out * col(m * c_out / (s * s), x)
        out = self.net(x, t, labels)
        kind = self.output_kind
        if kind == "score":
            return out
        if kind == "score-over-std":
            return out * col(1.0 / s, out)
        if kind == "epsilon":
            eps = out
        elif kind == "v":
            eps = out * col(m / (m * m + s * s), out) + x * col(s / (m * m + s * s), x)
        elif kind == "x0":
            eps = (x - out * col(m, out)) * col(1.0 / s, x)
        else:
            raise ValueError(f"model.output = \"{kind}\" is not known to scoregen.torch")
        return eps * col(-1.0 / s, eps)


class EnergyModule(nn.Module):
    """An ``energy-mlp`` run: ``energy(x)`` = f_θ(x) (p ∝ e^{−f}), ``forward(x, t)``
    the score −∇ₓ f_θ(x) (t is ignored, as scoregen's energy does), with the
    graph kept so it can be differentiated again (training through it)."""

    def __init__(self, net: Mlp):
        super().__init__()
        self.net = net

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.float32))[:, 0]

    def forward(self, x: torch.Tensor, t=None, labels=None) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().to(torch.float32).requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(x).sum(), x, create_graph=True)
        return -g


def _build(run: Run, cfg: dict) -> nn.Module:
    model = cfg.get("model", {})
    kind = model.get("kind", "time-mlp")
    dim = run.dim
    width, depth, embed_dim = model.get("width", 128), model.get("depth", 3), model.get("embed_dim", 32)
    classes = int(model.get("classes", 0) or 0)
    if kind == "time-mlp":
        return Mlp(dim, dim, width, depth, "fourier", embed_dim, run.time_frequencies(), classes=classes)
    if kind in ("mlp", "score-mlp"):
        return Mlp(dim, dim, width, depth)
    if kind == "ncsn-mlp":
        return Mlp(dim, dim, width, depth, "levels", embed_dim, levels=cfg.get("noise", {}).get("levels", 10))
    if kind == "energy-mlp":
        return Mlp(dim, 1, width, depth)
    if kind == "unet":
        c = model.get("image_channels", 1)
        side = int(round((dim // c) ** 0.5))
        return UNet(
            (c, side, side),
            model.get("channels", 32),
            model.get("channel_mult", [1, 2, 2]),
            model.get("groups", 8),
            model.get("attention", True),
            embed_dim,
            run.time_frequencies(),
            classes,
        )
    if kind == "unet2d":
        try:
            from diffusers import UNet2DModel
        except ModuleNotFoundError as e:  # pragma: no cover
            raise ModuleNotFoundError("scoregen.torch.load: a unet2d run needs diffusers (pip install diffusers)") from e
        u = dict(model["unet2d"])
        # config.toml spells diffusers' null "none" (TOML has no null)
        u = {k: (None if v == "none" else v) for k, v in u.items()}
        c = u.get("in_channels", 3)
        side = int(round((dim // c) ** 0.5))
        return Diffusers(UNet2DModel(**u), (c, side, side), run.sde)
    raise ValueError(f"scoregen.torch.load: model.kind = \"{kind}\" is not known to scoregen.torch")


def load(run: Union[Run, str, os.PathLike]) -> nn.Module:
    """The network of ``run`` (a :class:`scoregen.Run` or its folder) as a
    ``torch.nn.Module`` in eval mode: a :class:`ScoreModule` (or
    :class:`EnergyModule`) whose ``forward(x, t, labels=None)`` is the score and
    whose ``net`` holds the parameters, with the same weights (EMA unless the
    run says otherwise) as ``scoregen.Run.load``."""
    if not isinstance(run, Run):
        run = Run.load(str(run))
    cfg = _toml(run.config)
    net = _build(run, cfg)
    tensors = read_safetensors(run.weights)
    target = net.model if isinstance(net, Diffusers) else net  # diffusers' names, without the wrapper's prefix
    want = target.state_dict()
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(f"scoregen.torch.load: {run.weights}: missing {missing[:5]}, unexpected {extra[:5]}")
    state = {}
    for k, v in want.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"scoregen.torch.load: {run.weights}: `{k}` is {tensors[k].shape}, expected {tuple(v.shape)}")
        state[k] = torch.from_numpy(tensors[k].astype(np.float32))
    target.load_state_dict(state)
    model = cfg.get("model", {})
    module = EnergyModule(net) if model.get("kind") == "energy-mlp" else ScoreModule(net, model, run.sde)
    return module.eval()


def state_dict(module: nn.Module) -> Dict[str, np.ndarray]:
    """The parameters of a module from :func:`load` (or its ``net``) in scoregen's
    names, as float32 NumPy arrays."""
    net = module.net if isinstance(module, (ScoreModule, EnergyModule)) else module
    net = net.model if isinstance(net, Diffusers) else net
    return {k: v.detach().to("cpu", torch.float32).numpy() for k, v in net.state_dict().items()}


def save(module: nn.Module, run: Union[Run, str, os.PathLike]) -> "os.PathLike":
    """Writes ``module``'s parameters (a module from :func:`load`, perhaps
    fine-tuned) as the weights of ``run``'s newest checkpoint, both the model
    and the EMA copy, in scoregen's names; names and shapes are checked against
    the run's model first. The optimizer state and step are kept. Returns the
    checkpoint folder. ``scoregen.Run.load(run)`` then gives the module's outputs."""
    path = run.path if isinstance(run, Run) else run
    return _save_weights(str(path), state_dict(module))


__all__ = ["load", "save", "state_dict", "read_safetensors", "ScoreModule", "EnergyModule", "Mlp", "UNet", "Diffusers"]
