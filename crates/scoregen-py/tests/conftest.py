"""Shared fixtures: the repository, the `scoregen` binary, one small trained run.

With CI set, a missing dependency (the binary, PyTorch) fails instead of
skipping, so a broken install shows (as the Rust tests do: tests/ci).
"""

import importlib.util
import os
import pathlib
import subprocess

import numpy as np
import pytest

import scoregen

ROOT = pathlib.Path(__file__).resolve().parents[3]
CI = bool(os.environ.get("CI"))


def require(ok: bool, why: str) -> None:
    """Skip with `why` when `ok` is false, or fail when CI is set."""
    if not ok:
        if CI:
            pytest.fail(f"{why} (CI is set, so this fails instead of skipping)")
        pytest.skip(why)


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = pathlib.Path(os.environ.get("SCOREGEN_BIN", target / "release" / "scoregen"))
    require(exe.exists(), f"the scoregen binary {exe} is missing: run `cargo build --release` first")
    return exe


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> pathlib.Path:
    """gmm8-ve trained for 300 steps (about 2 s): enough for a model whose
    samples and likelihoods are worth comparing, not for quality."""
    out = tmp_path_factory.mktemp("runs") / "gmm8-ve"
    scoregen.train(
        ROOT / "configs" / "gmm8-ve.toml",
        out=out,
        overrides={"training.steps": 300, "training.checkpoint_every": 300},
    )
    return out


def run_cli(cli, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli), "--quiet", *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def diffusers_torch():
    """torch (one thread) for the parity tests against diffusers' schedulers."""
    have = all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))
    require(have, "torch and diffusers are not installed (scripts/setup-python.sh installs them with CI or SCOREGEN_TORCH=1)")
    import torch

    torch.set_num_threads(1)
    return torch


class GaussianOnDdpm:
    """The parity tests' problem: data N(μ, S²) on the DDPM chain (β linear
    1e-4 … 0.02, 1000 steps), whose score and ε are closed form.
    `score_fn` records the first state it is called with, which is x_T for
    the σ-space samplers (their first model call is at the starting state),
    so diffusers can start from the same x_T."""

    MU, S = 1.5, 0.5

    def __init__(self):
        from scoregen.sde import DDPM

        self.sde = DDPM()
        self.seen = []

    def score_fn(self, x, t):
        if not self.seen:
            self.seen.append(x.copy())
        m, s = self.sde.marginal(t)
        m, s = (v.reshape(-1, *[1] * (x.ndim - 1)) for v in (m, s))
        return -(x - m * self.MU) / (m * m * self.S * self.S + s * s)

    @property
    def x_t(self):
        return self.seen[0]

    @classmethod
    def eps(cls, x, ab):
        """ε̂(x_t) for ᾱ = `ab` (a torch scalar), in x's dtype arithmetic."""
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return s * (x - a * cls.MU) / (a * a * cls.S * cls.S + s * s)

    @staticmethod
    def alphas_cumprod():
        """diffusers' ᾱ of this chain in float64."""
        return np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
