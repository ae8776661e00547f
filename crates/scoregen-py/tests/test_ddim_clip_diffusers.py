"""DDIM with x̂₀ clipping against diffusers' `DDIMScheduler` (clip_sample=True,
its default), both ways it can treat ε̂: its default
`use_clipped_model_output=False` (x̂₀ clipped, the model's ε kept) is
scoregen's `ddim --keep-model-eps`; `use_clipped_model_output=True` (ε
recomputed from the clipped x̂₀) is scoregen's plain `ddim --clip-denoised`.

The problem is closed form: data N(μ, S²) with μ = 1.5 outside [−1, 1], so
clipping acts at every step, on the DDPM chain (β linear 1e-4 … 0.02, 1000
steps) and on `DDIMScheduler`'s own "leading" timesteps (scoregen's `leading`
grid: 900, 800, …, 0 for 10 steps, then ᾱ = 1, `set_alpha_to_one`). scoregen
draws x_T from its seed; the score callable records the first state it sees,
which is x_T (DDIM's first model call is at the starting state), and diffusers
starts from it. With diffusers' ᾱ in float64 the two agree to double round-off
(asserted 1e-10); each pairing of the wrong ε treatment differs by O(0.1).
"""

import numpy as np
import pytest

import scoregen
from conftest import GaussianOnDdpm


def ours(steps, keep):
    p = GaussianOnDdpm()
    x = scoregen.sample(
        p.score_fn, p.sde, (32, 1), sampler="ddim", steps=steps, seed=5, grid="leading", dtype="float64",
        clip_denoised=True, keep_model_eps=keep,
    )
    return x, p.x_t


def theirs(torch, steps, x_t, use_clipped_model_output):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True,
        timestep_spacing="leading", set_alpha_to_one=True,
    )
    sched.alphas_cumprod = torch.from_numpy(GaussianOnDdpm.alphas_cumprod())
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_t)
    for t in sched.timesteps:
        eps = GaussianOnDdpm.eps(x, sched.alphas_cumprod[t])
        x = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=use_clipped_model_output).prev_sample
    return x.numpy()


@pytest.mark.parametrize("steps", [5, 10, 50])
@pytest.mark.parametrize("keep", [True, False], ids=["keep-model-eps", "recomputed-eps"])
def test_ddim_clip_sample_matches_diffusers(diffusers_torch, steps, keep):
    got, x_t = ours(steps, keep)
    want = theirs(diffusers_torch, steps, x_t, use_clipped_model_output=not keep)
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    other = theirs(diffusers_torch, steps, x_t, use_clipped_model_output=keep)
    assert np.abs(got - other).max() > 1e-2, "the two ε treatments must differ here for the test to mean anything"
