"""Sample quality against a target, each metric beside its floor.

The floor is the same metric between two independent exact sample sets of the
same size (for images: held-out real images), so a reader can tell a real gap
from noise.
"""

import json
import os
from typing import Any, Dict, Optional, Union

from ._scoregen import evaluate_json


def evaluate(
    samples: Any, target: Any, seed: int = 0, classifier: Optional[Union[str, os.PathLike]] = None
) -> Dict[str, Any]:
    """Metrics of ``samples`` [N, D] against ``target``, as ``scoregen eval --json``.

    ``target``: an image source ("digits", "mnist5k", "fashion-mnist", an IDX
    file or a folder of PNGs), a :class:`scoregen.oracle.GaussianMixture`, a
    mixture name ("gmm8", "gmm25", "unbalanced"), a mixture ``.toml`` or a
    reference ``.npy`` path, or a reference array [M, D]. Returns a dict:

    - for an image source, the image metrics through the clean classifier in
      ``classifier`` (default ``classifiers/TARGET``, as ``scoregen
      train-classifier --data TARGET`` writes it; samples in the data space the
      classifier was trained in, flattened to [N, C·H·W]): ``fd`` (Fréchet
      distance of the classifier's features to the training images') and
      ``fd_floor`` (the same for held-out images), ``class_histogram`` and
      ``real_class_histogram``, ``class_entropy`` and ``max_entropy``,
      ``mean_confidence`` and ``real_confidence``, ``memorization_ratio``,
      ``classifier_accuracy`` and ``n``;
    - otherwise ``distances`` and ``floor``: ``mmd2`` (unbiased MMD², RBF kernels at
      ½h, h, 2h with h the median distance), ``energy`` (energy distance
      2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖), ``sliced_w2`` (sliced Wasserstein-2);
    - for a mixture also ``modes`` and ``modes_floor``: ``weights`` (fraction
      nearest to each component in Mahalanobis distance), ``weight_l1``
      (Σ_k |ŵ_k − w_k|), ``covered``, ``n_modes``, ``off_manifold``,
      ``mean_log_density`` (mean log p(x) in nats); and ``n``.
    """
    return json.loads(evaluate_json(samples, target, seed, classifier))


__all__ = ["evaluate"]
