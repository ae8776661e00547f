"""UniPC (`unipc-bh1`, `unipc-bh2`: UniPC-3, data prediction) against
diffusers' `UniPCMultistepScheduler` on the same problem: data N(μ, S²), whose
ε and score are closed form, on the DDPM chain (β linear 1e-4 … 0.02, 1000
steps), on the same σ grid (scoregen's `trailing` is diffusers'
`timestep_spacing="trailing"`: 999, 899, …, 99 for 10 steps; diffusers' UniPC
"linspace" and "leading" drop the last of N + 1 points and match none of
ours), ending at σ = 0 (`final_sigmas_type="zero"`, `lower_order_final`).

scoregen draws x_T from its seed; the score callable records the first state
it is called with, which is x_T itself (UniPC's first model call is at σ_0 on
the starting state), and diffusers starts from it.

The last step to σ = 0 is x = D at the uncorrected state in both, except that
diffusers' `bh1` gives NaN there (B(h) = −h = −∞ times an empty sum), so for
`bh1` that one step is taken by hand, as ε → x₀ (what `bh2` does).

Two comparisons (diffusers 0.42.1, torch 2.15): diffusers as shipped (float32
ᾱ, σ and coefficients) agrees to float32 round-off (measured ≤ 7.0e-7 on
samples of size ≈ 2, asserted 5e-6); with its ᾱ and σ set in float64 it
agrees to double round-off (measured 1.1e-15, asserted 1e-11). Comparing
`unipc-bh1` with diffusers' bh2, or `dpmpp-3m` with diffusers' UniPC, differs
by 1.7e-2 and 1.5e-2 (10 steps).
"""

import numpy as np
import pytest

import scoregen
from conftest import GaussianOnDdpm


def ours(sampler, steps):
    """scoregen's samples and the x_T it drew, for 16 points of N(μ, S²)."""
    p = GaussianOnDdpm()
    x = scoregen.sample(p.score_fn, p.sde, (16, 1), sampler=sampler, steps=steps, seed=3, grid="trailing", dtype="float64")
    return x, p.x_t


def theirs(torch, variant, steps, x_t, exact):
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=3,
        solver_type=variant, predict_x0=True, timestep_spacing="trailing", lower_order_final=True,
        final_sigmas_type="zero",
    )
    dtype = torch.float64 if exact else torch.float32
    if exact:
        sched.alphas_cumprod = torch.from_numpy(GaussianOnDdpm.alphas_cumprod())
    sched.set_timesteps(steps)
    if exact:
        ab = sched.alphas_cumprod.numpy()[sched.timesteps.numpy()]
        sched.sigmas = torch.from_numpy(np.append(np.sqrt((1 - ab) / ab), 0.0))
    x = torch.from_numpy(x_t).to(dtype)
    for k, t in enumerate(sched.timesteps):
        ab = sched.alphas_cumprod[t].double()
        eps = GaussianOnDdpm.eps(x.double(), ab).to(dtype)
        if k == len(sched.timesteps) - 1 and variant == "bh1":
            x = (x - (1 - ab).sqrt().to(dtype) * eps) / ab.sqrt().to(dtype)
        else:
            x = sched.step(eps, t, x).prev_sample
    return x.double().numpy()


@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("exact", [False, True], ids=["float32", "float64"])
def test_unipc_matches_diffusers(diffusers_torch, variant, steps, exact):
    got, x_t = ours(f"unipc-{variant}", steps)
    want = theirs(diffusers_torch, variant, steps, x_t, exact)
    assert np.all(np.isfinite(want))
    tol = 1e-11 if exact else 5e-6
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
