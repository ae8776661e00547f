"""The oracle and the SDEs from Python: scores against finite differences of
log-densities, and arrays in any float dtype and layout."""

import numpy as np
import pytest

import scoregen
from scoregen.oracle import GaussianMixture
from scoregen.sde import VE, VP, SubVP


def fd_grad(f, x, h=1e-5):
    """Central differences of a per-row scalar function: error O(h²) ≈ 1e-10
    for these smooth densities, far below the 1e-6 tolerance."""
    g = np.zeros_like(x)
    for i in range(x.shape[1]):
        e = np.zeros_like(x)
        e[:, i] = h
        g[:, i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def mixture():
    cov2 = [[1.0, 0.3], [0.3, 0.5]]
    return GaussianMixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]], [np.eye(2).tolist(), cov2, [[0.2, 0.0], [0.0, 0.8]]])


def test_score_matches_finite_differences_of_log_prob():
    mix = mixture()
    x = mix.sample(200, seed=1)
    s = mix.score(x)
    np.testing.assert_allclose(s, fd_grad(mix.log_prob, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sde", [VE(0.01, 10.0), VP(), SubVP()], ids=["ve", "vp", "subvp"])
@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_perturbed_score_matches_finite_differences_of_perturbed_log_prob(sde, t):
    """p_t = Σ w_k N(m μ_k, m²Σ_k + s²I), built here from sde.marginal(t)."""
    mix = mixture()
    m, s = sde.marginal(t)
    pt = GaussianMixture(mix.weights, (m * mix.means).tolist(), (m * m * mix.covs + s * s * np.eye(2)).tolist())
    x = m * mix.sample(100, seed=2) + s * np.random.default_rng(0).standard_normal((100, 2))
    got = mix.score(x, t, sde=sde)
    np.testing.assert_allclose(got, fd_grad(pt.log_prob, x), rtol=1e-5, atol=1e-6)
    # one time per row gives the same
    np.testing.assert_allclose(mix.score(x, np.full(100, t), sde=sde), got, rtol=0, atol=0)


def test_float32_and_strided_inputs():
    mix = GaussianMixture.named("gmm8")
    x = mix.sample(50, seed=3)
    s64 = mix.score(x)
    s32 = mix.score(x.astype(np.float32))
    assert s32.dtype == np.float32 and s64.dtype == np.float64
    np.testing.assert_allclose(s32, s64, rtol=1e-4, atol=1e-4)
    # a transposed (Fortran-order) and a strided view give the same numbers
    xf = np.asfortranarray(x)
    assert not xf.flags.c_contiguous
    np.testing.assert_array_equal(mix.score(xf), s64)
    wide = np.zeros((50, 4))
    wide[:, ::2] = x
    np.testing.assert_array_equal(mix.score(wide[:, ::2]), s64)


def test_sde_formulas():
    ve = VE(0.01, 10.0)
    for t in [0.0, 0.5, 1.0]:
        m, s = ve.marginal(t)
        assert m == 1.0 and s == pytest.approx(0.01 * 1000.0**t)
    vp = VP(0.1, 20.0)
    t = np.array([0.1, 0.5])
    m, s = vp.marginal(t)
    lm = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    np.testing.assert_allclose(m, np.exp(lm), rtol=1e-12)
    np.testing.assert_allclose(s, np.sqrt(1 - np.exp(2 * lm)), rtol=1e-12)
    np.testing.assert_allclose(vp.diffusion(t), np.sqrt(0.1 + t * 19.9), rtol=1e-12)
    x = np.ones((2, 2))
    np.testing.assert_allclose(vp.drift(x, t), -0.5 * (0.1 + t * 19.9)[:, None] * x, rtol=1e-12)
    assert isinstance(vp, scoregen.sde.Sde) and vp.name == "vp"


def test_evaluate_exact_samples_sit_at_the_floor():
    mix = GaussianMixture.named("gmm8")
    r = scoregen.metrics.evaluate(mix.sample(1000, seed=5), mix, seed=1)
    assert set(r) >= {"distances", "floor", "modes", "modes_floor"}
    assert r["modes"]["covered"] == 8
    assert r["distances"]["energy"] < abs(r["floor"]["energy"]) + 0.02
    # a shifted set is far from it
    bad = scoregen.metrics.evaluate(mix.sample(1000, seed=5) + 3.0, "gmm8")
    assert bad["distances"]["energy"] > 10 * abs(bad["floor"]["energy"]) + 0.1
