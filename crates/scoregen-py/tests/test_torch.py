"""scoregen.torch: every network kind rebuilt in PyTorch gives the Rust outputs,
and a module saved back samples in scoregen with the module's numbers.

Each case trains a tiny run for a few steps (random-ish weights are what a
parity test wants: every parameter matters) and compares, on random float32
inputs, the network output (`Run.model_output`) and the score (`Run.score`)
with the module's. The tolerance, max |Δ| ≤ 1e-5 · max |Rust output|, is
float32 round-off of sums taken in another order (measured: ~1e-7 to 1e-6).
"""

import importlib.util
import os

import numpy as np
import pytest

import scoregen
from conftest import ROOT, require

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
REL = 1e-5

UNET2D_TOML = """
[model]
kind = "unet2d"
output = "epsilon"
[model.unet2d]
sample_size = 8
in_channels = 1
out_channels = 1
block_out_channels = [8, 16]
down_block_types = ["DownBlock2D", "AttnDownBlock2D"]
up_block_types = ["AttnUpBlock2D", "UpBlock2D"]
layers_per_block = 1
norm_num_groups = 4
attention_head_dim = 8
"""

# name: (preset, overrides, extra TOML appended to the preset or None)
IMG = {"training.steps": 3, "training.batch_size": 8, "training.log_every": 1, "training.checkpoint_every": 3}
MLP = {"training.steps": 20, "training.checkpoint_every": 20}
CASES = {
    "time-mlp-ve": ("gmm8-ve", MLP, None),
    "time-mlp-classes-v-subvp": ("gmm8-subvp", {**MLP, "model.classes": 8, "model.output": "v"}, None),
    "time-mlp-x0-vp": ("gmm8-vp", {**MLP, "model.output": "x0"}, None),
    "mlp": ("sliced-unbalanced", MLP, None),
    "ncsn-mlp": ("ncsn-gmm8", MLP, None),
    "energy-mlp": ("sliced-energy-gmm8", MLP, None),
    "unet-attention-classes": (
        "digits-vp",
        {**IMG, "model.attention": True, "model.classes": "auto", "model.channels": 8},
        None,
    ),
    "unet-edm-ve": ("digits-ve", {**IMG, "model.preconditioning": "edm", "model.channels": 8}, None),
    "unet2d-vp": ("digits-vp", IMG, UNET2D_TOML),
}


@pytest.fixture(scope="module")
def torch():
    require(HAVE_TORCH, "PyTorch is not installed (scripts/setup-python.sh installs it with CI or SCOREGEN_TORCH=1)")
    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    return torch


def train_case(tmp_path, name):
    preset, overrides, extra = CASES[name]
    config = ROOT / "configs" / f"{preset}.toml"
    if extra is not None:
        text = config.read_text()
        # the preset's own [model] table gives way to the one appended
        head, _, rest = text.partition("[model]")
        rest = rest[rest.index("\n[") :]
        config = tmp_path / f"{name}.toml"
        config.write_text(head + rest + extra)
    run_dir = tmp_path / name
    scoregen.train(config, out=run_dir, overrides=overrides, report=False)
    return scoregen.Run.load(run_dir)


def inputs(run, n=6, seed=1):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal((n, run.dim))).astype(np.float32)
    t = rng.uniform(0.05, 1.0, n).astype(np.float32)
    return x, t


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(CASES))
def test_torch_module_matches_rust(torch, tmp_path, name):
    import scoregen.torch as st

    if name.startswith("unet2d"):
        require(HAVE_DIFFUSERS, "diffusers is not installed")
    run = train_case(tmp_path, name)
    module = st.load(run)
    assert isinstance(module, torch.nn.Module)
    x, t = inputs(run)
    with torch.no_grad() if name != "energy-mlp" else torch.enable_grad():
        got = module(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy()
    score_err = rel_err(got, run.score(x, t))
    out_err = 0.0
    if name != "energy-mlp":
        labels = None
        if "classes" in name:
            labels = np.arange(len(x)) % module.net.n_classes
        want = run.model_output(x, t, labels=None if labels is None else labels.astype(np.float64))
        with torch.no_grad():
            lab = None if labels is None else torch.from_numpy(labels)
            got_out = module.net(torch.from_numpy(x), torch.from_numpy(t), lab).numpy()
        out_err = rel_err(got_out, want)
    print(f"\nparity {name}: network output {out_err:.2e}, score {score_err:.2e} (relative to max |Rust|)")
    assert out_err <= REL and score_err <= REL, (out_err, score_err)


@pytest.mark.parametrize("name", ["unet-attention-classes", "energy-mlp"])
def test_save_round_trip(torch, tmp_path, name):
    """A weight changed in PyTorch, saved, and the run reloaded in scoregen:
    scoregen's score is the changed module's (and no longer the old one)."""
    import scoregen.torch as st

    run = train_case(tmp_path, name)
    module = st.load(run)
    x, t = inputs(run, seed=2)
    before = run.score(x, t)
    with torch.no_grad():
        layer = module.net.up[0].conv2 if name.startswith("unet") else module.net.hidden[0]
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    st.save(module, run)
    with torch.enable_grad():
        want = module(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy()
    after = scoregen.Run.load(run.path)
    got = after.score(x, t)
    assert rel_err(got, want) <= REL
    assert rel_err(before, want) > 1e-3  # the change is seen
    # both the EMA and the raw weights were replaced, and the checkpoint still verifies
    raw = scoregen.Run.load(run.path, use_ema=False).score(x, t)
    assert rel_err(raw, want) <= REL


def test_save_refuses_a_module_of_another_shape(torch, tmp_path):
    import scoregen.torch as st

    run = train_case(tmp_path, "ncsn-mlp")
    module = st.load(run)
    state = st.state_dict(module)
    state["output.weight"] = state["output.weight"][:, :-1]
    with pytest.raises(ValueError, match="output.weight"):
        scoregen._scoregen._save_weights(str(run.path), state)
