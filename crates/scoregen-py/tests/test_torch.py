"""scoregen.torch: the run's network in PyTorch gives the Rust outputs."""

import importlib.util
import os

import numpy as np
import pytest

import scoregen
from conftest import ROOT, require

HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def torch():
    require(HAVE_TORCH, "PyTorch is not installed (scripts/setup-python.sh installs it with CI or SCOREGEN_TORCH=1)")
    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    return torch


@pytest.mark.parametrize("config", ["gmm8-ve", "gmm8-vp", "gmm8-subvp"])
def test_torch_module_matches_rust(torch, tmp_path, config, trained_run):
    import scoregen.torch as st

    if config == "gmm8-ve":
        run_dir = trained_run
    else:
        run_dir = tmp_path / config
        scoregen.train(ROOT / "configs" / f"{config}.toml", out=run_dir, overrides={"training.steps": 50})
    run = scoregen.Run.load(run_dir)
    net = st.load(run)
    rng = np.random.default_rng(1)
    x = (3 * rng.standard_normal((256, 2))).astype(np.float32)
    t = rng.uniform(1e-3, 1.0, 256).astype(np.float32)
    want = run.score(x, t)
    with torch.no_grad():
        got = net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    # float32 arithmetic in a different order: agreement to a few float32 ulps of the output scale
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    assert isinstance(net, torch.nn.Module)


def test_torch_refuses_what_it_cannot_rebuild(torch, tmp_path):
    import scoregen.torch as st

    run_dir = tmp_path / "ncsn"
    scoregen.train(ROOT / "configs" / "ncsn-gmm8.toml", out=run_dir, overrides={"training.steps": 10})
    with pytest.raises(ValueError, match="not supported"):
        st.load(run_dir)
