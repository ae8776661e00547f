"""Forward SDEs dx = f(x, t) dt + g(t) dw (Song et al. 2021), t ∈ [0, 1].

- ``VE(sigma_min=0.01, sigma_max=10)``: σ(t) = σ_min (σ_max/σ_min)^t, m = 1, s = σ(t).
- ``VP(beta_min=0.1, beta_max=20)``: β(t) = β_min + t(β_max − β_min),
  m(t) = exp(−¼t²(β_max − β_min) − ½tβ_min), s(t)² = 1 − m(t)².
- ``SubVP(beta_min=0.1, beta_max=20)``: VP's drift, s(t) = 1 − m(t)².
- ``DDPM(schedule="linear", n=1000)``: the discrete chain ᾱ_i = Π_{j≤i}(1 − β_j)
  (Ho et al. 2020), whose σ grids land on diffusers' integer timesteps.

Each has ``marginal(t) -> (m, s)``, ``drift(x, t) = a(t)·x``, ``diffusion(t) = g(t)``,
``prior_std`` and ``sampling_eps``.
"""

from ._scoregen import DDPM, VE, VP, Sde, SubVP

__all__ = ["Sde", "VE", "VP", "SubVP", "DDPM"]
