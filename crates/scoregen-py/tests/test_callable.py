"""A Python callable through every sampler: the exact oracle score, called
back with the whole batch per step, reaches the metric floor."""

import numpy as np
import pytest

import scoregen
from scoregen.oracle import GaussianMixture
from scoregen.sde import VE, VP

GMM8 = GaussianMixture.named("gmm8")

# Reverse-time SDE samplers take many small steps; the σ-space solvers and the ODE few.
STEPS = {
    "em": 500, "reverse-diffusion": 500, "ancestral": 500, "pc": 500, "ode": 1,
    "ddpm": 200, "ddim": 100, "dpmpp-2m": 50, "heun": 50, "dpmpp-3m": 50,
    "dpmpp-2m-sde": 100, "euler-ancestral": 200, "unipc-bh1": 50, "unipc-bh2": 50,
}


def oracle(sde):
    calls = []

    def score_fn(x, t):
        assert x.ndim == 2 and t.shape == (x.shape[0],) and x.dtype == t.dtype
        calls.append(x.shape[0])
        return GMM8.score(x, t, sde=sde)

    return score_fn, calls


def test_every_sampler_is_covered():
    langevin_family = {"langevin", "mala", "annealed-langevin"}
    assert set(scoregen.sampler_names()) - langevin_family == set(STEPS)


@pytest.mark.parametrize("sampler", sorted(STEPS))
@pytest.mark.parametrize("sde", [VE(0.01, 10.0), VP()], ids=["ve", "vp"])
def test_python_oracle_through_every_sampler_reaches_the_floor(sampler, sde):
    """Tolerances as crates/scoregen/tests/oracle_samplers.rs: n = 2000, so each
    weight has binomial sd √(⅛·⅞/2000) ≈ 0.0074 and the L1 error of 8 weights is
    ≈ 0.047 on average (we allow 0.1); the energy distance between exact sets of
    2000 has sd ≈ 0.003 (we allow the floor + 0.015)."""
    score_fn, calls = oracle(sde)
    x = scoregen.sample(score_fn, sde, (2000, 2), sampler=sampler, steps=STEPS[sampler], seed=11)
    assert x.shape == (2000, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert len(calls) >= (STEPS[sampler] if sampler != "ode" else 10) and set(calls) == {2000}
    r = scoregen.metrics.evaluate(x, GMM8, seed=3)
    m = r["modes"]
    assert m["covered"] == 8, r
    assert m["weight_l1"] < 0.1, r
    assert m["off_manifold"] < 0.01, r
    assert r["distances"]["energy"] < abs(r["floor"]["energy"]) + 0.015, r


def test_a_wrong_sign_fails_the_same_checks():
    sde = VP()
    x = scoregen.sample(lambda x, t: -GMM8.score(x, t, sde=sde), sde, (2000, 2), sampler="dpmpp-2m", steps=50)
    r = scoregen.metrics.evaluate(x, GMM8, seed=3)
    assert r["modes"]["covered"] < 8 or r["distances"]["energy"] > abs(r["floor"]["energy"]) + 0.015


def test_same_seed_same_samples_and_float64():
    sde = VE(0.01, 10.0)
    f, _ = oracle(sde)
    a = scoregen.sample(f, sde, (100, 2), sampler="em", steps=50, seed=4, dtype="float64")
    b = scoregen.sample(f, sde, (100, 2), sampler="em", steps=50, seed=4, dtype="float64")
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, scoregen.sample(f, sde, (100, 2), sampler="em", steps=50, seed=5, dtype="float64"))


def test_python_callable_likelihood_matches_the_exact_log_density():
    """log p_ε by the ODE with the oracle score: the exact log p₀ within 0.05 nats
    (ε = 1e-3 perturbs the density slightly; divergence by central differences)."""
    sde = VP()
    x = GMM8.sample(64, seed=8)
    nats, bpd = scoregen.log_likelihood(lambda x, t: GMM8.score(x, t, sde=sde), sde, x)
    exact = GMM8.log_prob(x)
    assert np.abs(nats - exact).mean() < 0.05, (nats - exact)
    np.testing.assert_allclose(bpd, -nats / (2 * np.log(2)), rtol=1e-12)
    # Hutchinson with 8 probes: unbiased, noisier
    h, _ = scoregen.log_likelihood(lambda x, t: GMM8.score(x, t, sde=sde), sde, x, trace="hutchinson", probes=8)
    assert abs(h.mean() - exact.mean()) < 0.2


def test_eps_is_the_langevin_step_as_on_the_command_line_and_t_eps_the_final_time():
    """`eps` means what `scoregen sample --eps` and `Run.sample(eps=)` mean (the
    Langevin step size), `t_eps` the reverse process's final time."""
    sde = VE(0.01, 10.0)
    draw = lambda **k: scoregen.sample(GMM8, sde, (200, 2), seed=3, dtype="float64", **k)
    lan = draw(sampler="langevin", steps=40, eps=0.01)
    assert not np.array_equal(lan, draw(sampler="langevin", steps=40, eps=0.02))
    # Langevin's step is not the final time
    assert np.array_equal(lan, draw(sampler="langevin", steps=40, eps=0.01, t_eps=0.5))
    em = draw(sampler="em", steps=40)
    assert np.array_equal(em, draw(sampler="em", steps=40, eps=0.5))  # the step of a sampler without Langevin steps
    assert not np.array_equal(em, draw(sampler="em", steps=40, t_eps=0.05))
    # refused with Run.sample's message (one app check: SamplerOverrides::apply)
    with pytest.raises(ValueError, match=r"^eps: must be a finite number > 0 \(got -1\)$"):
        draw(sampler="langevin", eps=-1.0)
    with pytest.raises(ValueError, match="t_eps must be a finite number > 0"):
        draw(t_eps=0.0)
    with pytest.raises(TypeError):
        scoregen.log_likelihood(GMM8, sde, np.zeros((2, 2)), eps=1e-3)
    nats, _ = scoregen.log_likelihood(GMM8, sde, np.zeros((2, 2)), t_eps=1e-3)
    assert np.isfinite(nats).all()
