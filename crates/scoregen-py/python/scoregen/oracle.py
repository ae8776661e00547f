"""The exact oracle: Gaussian mixtures whose density and score are known at every noise level.

``GaussianMixture(weights, means, covs)``: p(x) = Σ_k w_k N(x; μ_k, Σ_k)
(weights are normalized). Under an SDE with kernel N(m(t)·x(0), s(t)²·I) the
perturbed density is again a mixture, p_t = Σ_k w_k N(m μ_k, m²Σ_k + s²I), so
``score(x, t, sde=...)`` is exact at every t. ``GaussianMixture.named("gmm8")``
gives the project's data sets (gmm8, gmm25, unbalanced).
"""

from ._scoregen import GaussianMixture

__all__ = ["GaussianMixture"]
