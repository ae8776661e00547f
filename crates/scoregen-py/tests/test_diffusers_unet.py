"""diffusers checkpoints loaded by scoregen (issue 30): the network equals
diffusers' `UNet2DModel` on every supported block type and option, and a
DDIM run from the same x_T equals diffusers' `DDIMScheduler` loop.

The models are small (a few channels) with random weights, every parameter
drawn (GroupNorm scales and biases included, so a swapped norm is seen), saved
by diffusers' own `save_pretrained` in both layouts. The tolerance, 1e-4
relative to the output's largest entry in float32, is about 100× the float32
round-off that ~30 layers of convolutions, norms and softmaxes accumulate here.
A deliberately wrong mapping fails these tests: swapping the weights of
`to_q`/`to_k` or of `norm1`/`norm2` in the saved file (test below) gives errors
of order 1.
"""

import json

import numpy as np
import pytest

import scoregen

from conftest import diffusers_torch  # noqa: F401  (fixture)

RTOL = 1e-4

# (name, UNet2DModel kwargs, layout): every block type and option the importer supports
CASES = [
    (
        "ddpm-cifar10-like",
        dict(
            sample_size=16,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            norm_num_groups=8,
            norm_eps=1e-6,
            attention_head_dim=None,
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
        ),
        "pipeline",
    ),
    (
        "multihead-scale-shift-classes",
        dict(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            block_out_channels=(16, 32),
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=8,
            resnet_time_scale_shift="scale_shift",
            center_input_sample=True,
            time_embedding_dim=48,
            mid_block_scale_factor=1.5,
            num_class_embeds=3,
        ),
        "model",
    ),
    (
        "ncsnpp-like",
        dict(
            sample_size=16,
            block_out_channels=(32, 32, 64),
            down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
            up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"),
            layers_per_block=1,
            norm_num_groups=None,
            attention_head_dim=8,
            time_embedding_type="fourier",
            mid_block_scale_factor=2**0.5,
            norm_eps=1e-6,
            flip_sin_to_cos=True,
        ),
        "model",
    ),
]


def randomize(model, torch, seed):
    """Every parameter drawn: N(1, 0.3²) for norm scales, N(0, s²) otherwise
    with s = 1/√fan-in, so activations stay O(1) through the layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.startswith("time_proj"):
                p.copy_(16 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else max(1, p.numel())
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def save(tmp_path, name, kwargs, layout, torch, scheduler_config=None):
    from diffusers import DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**kwargs).eval()
    randomize(unet, torch, seed=len(name))
    fourier = kwargs.get("time_embedding_type") == "fourier"
    sched = ScoreSdeVeScheduler(sigma_max=50.0) if fourier else DDPMScheduler(**(scheduler_config or {}))
    root = tmp_path / name
    if layout == "pipeline":
        unet.save_pretrained(root / "unet", safe_serialization=True)
        sched.save_pretrained(root / "scheduler")
        (root / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    else:
        unet.save_pretrained(root, safe_serialization=True)
        sched.save_pretrained(root)
    return unet, sched, root


def max_rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name,kwargs,layout", CASES, ids=[c[0] for c in CASES])
def test_network_equals_diffusers_unet2dmodel(tmp_path, diffusers_torch, name, kwargs, layout):
    torch = diffusers_torch
    unet, sched, root = save(tmp_path, name, kwargs, layout, torch)
    run = scoregen.Run.load(root)
    c = kwargs.get("in_channels", 3)
    size = kwargs["sample_size"]
    rng = np.random.default_rng(1)
    fourier = kwargs.get("time_embedding_type") == "fourier"
    # batch 16: enough 4×4 output tiles (≥ 64) at 16×16 and 8×8 for the
    # convolutions' Winograd path (batches 1 and 3 take the direct product)
    for batch in (1, 3, 16):
        x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
        if fourier:
            # σ at SDE times t; diffusers' model takes σ itself
            t = np.array([0.05, 0.5, 0.93][:batch]) if batch <= 3 else np.linspace(0.05, 0.93, batch)
            sigmas = 0.01 * (50.0 / 0.01) ** t  # ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50)
            model_t = torch.tensor(sigmas, dtype=torch.float32)
        else:
            steps = np.array([0, 417, 999][:batch]) if batch <= 3 else np.linspace(0, 999, batch).round().astype(np.int64)
            t = (steps + 1) / 1000.0  # the chain's timestep i sits at t = (i + 1)/N
            model_t = torch.tensor(steps)
        labels = None
        if kwargs.get("num_class_embeds"):
            labels = np.array([0, 2, 1][:batch]) if batch <= 3 else np.arange(batch) % 3
        with torch.no_grad():
            want = unet(torch.from_numpy(x), model_t, class_labels=None if labels is None else torch.from_numpy(labels)).sample.numpy()
        if labels is None:
            got = run.model_output(x.reshape(batch, -1), t).reshape(want.shape)
        else:
            got = run.model_output(x.reshape(batch, -1), t, labels=labels.astype(np.float64)).reshape(want.shape)
        err = max_rel(got, want)
        print(f"{name} batch {batch}: max relative error {err:.2e}")
        assert err < RTOL, f"{name}, batch {batch}: max relative error {err:.2e}"
        if fourier:
            # ScoreSdeVeScheduler.step_pred takes the network's output as the score
            # itself: scoregen's score at t is the same tensor
            score = run.score(x.reshape(batch, -1), t).reshape(want.shape)
            assert max_rel(score, want) < RTOL


def test_a_wrong_weight_mapping_is_caught(tmp_path, diffusers_torch):
    """The check above can fail: swap two same-shaped tensors in the saved file
    (an attention's to_q and to_k; a residual block's norm1 and norm2 scales)
    and the outputs differ by far more than the tolerance."""
    from safetensors.numpy import load_file, save_file

    torch = diffusers_torch
    name, kwargs, layout = CASES[0]
    unet, _, root = save(tmp_path, name, kwargs, layout, torch)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = unet(torch.from_numpy(x), torch.tensor([3, 600])).sample.numpy()
    path = root / "unet" / "diffusion_pytorch_model.safetensors"
    original = load_file(path)
    for a, b in [
        ("mid_block.attentions.0.to_q.weight", "mid_block.attentions.0.to_k.weight"),
        ("down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.resnets.0.norm2.weight"),
    ]:
        w = dict(original)
        w[a], w[b] = original[b], original[a]
        save_file(w, path)
        got = scoregen.Run.load(root).model_output(x.reshape(2, -1), np.array([4, 601]) / 1000).reshape(want.shape)
        assert max_rel(got, want) > 100 * RTOL, f"swapping {a} and {b} went unnoticed"
    # a missing tensor is refused by name
    w = dict(original)
    del w["conv_out.bias"]
    save_file(w, path)
    with pytest.raises(Exception, match="conv_out.bias"):
        scoregen.Run.load(root)


def test_ddim_from_the_same_noise_equals_diffusers(tmp_path, diffusers_torch):
    """DDIM (η = 0, 10 steps, `leading` spacing, clip_sample=True with the
    model's ε̂ kept, as DDIMPipeline runs it) from the same x_T: scoregen's
    samples equal diffusers' DDIMScheduler loop to float32 round-off."""
    from diffusers import DDIMScheduler

    torch = diffusers_torch
    name, kwargs, layout = CASES[0]
    unet, _, root = save(tmp_path, name, kwargs, layout, torch, scheduler_config={"clip_sample": True})
    sched = DDIMScheduler.from_pretrained(root / "scheduler")
    sched.set_timesteps(10)
    x_t = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    x = torch.from_numpy(x_t)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    want = x.numpy()
    run = scoregen.Run.load(root)
    got = run.sample(sampler="ddim", steps=10, x_init=x_t, dtype="float64").reshape(want.shape)
    err = max_rel(got, want)
    print(f"DDIM-10 against diffusers: max relative error {err:.2e}")
    assert err < 1e-3, f"max relative error {err:.2e}"


def test_a_bin_only_checkpoint_is_refused_then_converted(tmp_path, diffusers_torch):
    """A `.bin`-only folder (PyTorch pickle) is refused with the conversion
    command in the message; after scripts/convert-diffusers-bin.py it loads and
    equals diffusers' network."""
    import subprocess
    import sys

    from conftest import ROOT

    torch = diffusers_torch
    name, kwargs, _ = CASES[1]
    unet, _, root = save(tmp_path, name, kwargs, "model", torch)
    (root / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(root, safe_serialization=False)
    assert (root / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(Exception, match="convert-diffusers-bin.py"):
        scoregen.Run.load(root)
    script = ROOT / "scripts" / "convert-diffusers-bin.py"
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    x = np.random.default_rng(4).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = unet(torch.from_numpy(x), torch.tensor([10, 900]), class_labels=torch.tensor([1, 2])).sample.numpy()
    got = scoregen.Run.load(root).model_output(x.reshape(2, -1), np.array([11, 901]) / 1000, labels=np.array([1.0, 2.0]))
    assert max_rel(got.reshape(want.shape), want) < RTOL
