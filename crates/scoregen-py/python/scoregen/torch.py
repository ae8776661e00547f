"""A trained run's network as a ``torch.nn.Module`` (needs PyTorch).

``scoregen.torch.load(run)`` rebuilds the network of a ``time-mlp`` run (the
MLP score nets of the gmm8 presets: Fourier time features, SiLU layers) in
PyTorch, with the weights read from the run's safetensors checkpoint by this
module's own reader, and returns a module whose ``forward(x, t)`` is the score
s_θ(x, t), as :meth:`scoregen.Run.score` computes it in Rust:

    e(t) = [sin(2πWt), cos(2πWt)]            (W fixed, from the run's seed)
    h₀   = SiLU(W_in [x, e] + b_in)
    h_l  = SiLU(W_l h_{l−1} + b_l + T_l e + c_l)
    out  = W_out h_L + b_out
    s    = out / s(t)   (output = "score-over-std"), out (output = "score"),
           −out / s(t)  (output = "epsilon")

with s(t) the SDE's marginal std. Other models (the U-Net, energy and NCSN
nets, EDM preconditioning, v/x₀ outputs) are refused with a ValueError.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Dict, Union

import numpy as np
import torch
from torch import nn

from ._scoregen import Run

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


class TimeMlp(nn.Module):
    """The ``time-mlp`` score network of a run (see the module docstring)."""

    def __init__(self, tensors: Dict[str, np.ndarray], freqs: np.ndarray, output: str, sde: dict):
        super().__init__()
        t = {k: torch.from_numpy(v.astype(np.float32)) for k, v in tensors.items()}
        self.register_buffer("freqs", torch.from_numpy(np.asarray(freqs, np.float32)).reshape(1, -1))
        self.input = nn.Linear(t["input.weight"].shape[1], t["input.weight"].shape[0])
        depth = sum(1 for k in t if k.startswith("hidden.") and k.endswith(".weight"))
        width = t["input.weight"].shape[0]
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.time = nn.ModuleList(nn.Linear(self.freqs.shape[1] * 2, width) for _ in range(depth))
        self.output = nn.Linear(width, t["output.weight"].shape[0])
        state = {}
        for k, v in t.items():
            state[k] = v
        missing = set(self.state_dict()) - set(state) - {"freqs"}
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)}")
        state["freqs"] = self.freqs
        self.load_state_dict(state)
        self.output_kind = output
        self.sde = sde

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """s(t) of the run's SDE, in float64: VE σ_min(σ_max/σ_min)^t; VP √(1 − m²);
        sub-VP 1 − m², with log m = −¼t²(β_max − β_min) − ½tβ_min."""
        t = t.to(torch.float64)
        kind = self.sde.get("kind", "ve")
        if kind == "ve":
            lo, hi = self.sde.get("sigma_min", 0.01), self.sde.get("sigma_max", 10.0)
            return lo * (hi / lo) ** t
        b0, b1 = self.sde.get("beta_min", 0.1), self.sde.get("beta_max", 20.0)
        lm = -0.25 * t * t * (b1 - b0) - 0.5 * t * b0
        one_minus_m2 = -torch.expm1(2.0 * lm)
        return torch.sqrt(one_minus_m2) if kind == "vp" else one_minus_m2

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The score s_θ(x, t) for x [N, D] and t [N] (or a float)."""
        x = x.to(torch.float32)
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        arg = t[:, None] * self.freqs
        e = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        h = nn.functional.silu(self.input(torch.cat([x, e], dim=1)))
        for layer, time in zip(self.hidden, self.time):
            h = nn.functional.silu(layer(h) + time(e))
        out = self.output(h)
        if self.output_kind == "score":
            return out
        inv = (1.0 / self.marginal_std(t)).to(out.dtype)[:, None]
        return out * inv if self.output_kind == "score-over-std" else -out * inv


def load(run: Union[Run, str, os.PathLike]) -> nn.Module:
    """The network of ``run`` (a :class:`scoregen.Run` or its folder) as a
    ``torch.nn.Module`` in eval mode, ``forward(x, t)`` = the score; the same
    weights (EMA unless the run says otherwise) as ``scoregen.Run.load``."""
    if not isinstance(run, Run):
        run = Run.load(str(run))
    cfg = _toml(run.config)
    model = cfg.get("model", {})
    kind = model.get("kind", "time-mlp")
    if kind != "time-mlp":
        raise ValueError(f"scoregen.torch.load: model.kind = \"{kind}\" is not supported (only \"time-mlp\")")
    if model.get("preconditioning", "none") != "none" or model.get("classes", 0):
        raise ValueError("scoregen.torch.load: EDM preconditioning and class-conditional models are not supported")
    output = model.get("output", "score-over-std")
    if output not in ("score", "score-over-std", "epsilon"):
        raise ValueError(f"scoregen.torch.load: model.output = \"{output}\" is not supported")
    net = TimeMlp(read_safetensors(run.weights), run.time_frequencies(), output, cfg.get("sde", {}))
    return net.eval()


__all__ = ["load", "read_safetensors", "TimeMlp"]
