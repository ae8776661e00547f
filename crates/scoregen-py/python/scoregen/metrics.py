"""Sample quality against a target, each metric beside its floor.

The floor is the same metric between two independent exact sample sets of the
same size, so a reader can tell a real gap from noise.
"""

import json
from typing import Any, Dict

from ._scoregen import evaluate_json


def evaluate(samples: Any, target: Any, seed: int = 0) -> Dict[str, Any]:
    """Metrics of ``samples`` [N, D] against ``target``, as ``scoregen eval --json``.

    ``target``: a :class:`scoregen.oracle.GaussianMixture`, a mixture name
    ("gmm8", "gmm25", "unbalanced"), a mixture ``.toml`` or a reference ``.npy``
    path, or a reference array [M, D]. Returns a dict:

    - ``distances`` and ``floor``: ``mmd2`` (unbiased MMD², RBF kernels at
      ½h, h, 2h with h the median distance), ``energy`` (energy distance
      2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖), ``sliced_w2`` (sliced Wasserstein-2);
    - for a mixture also ``modes`` and ``modes_floor``: ``weights`` (fraction
      nearest to each component in Mahalanobis distance), ``weight_l1``
      (Σ_k |ŵ_k − w_k|), ``covered``, ``n_modes``, ``off_manifold``,
      ``mean_log_density`` (mean log p(x) in nats); and ``n``.
    """
    return json.loads(evaluate_json(samples, target, seed))


__all__ = ["evaluate"]
