"""Sample quality against a target, each metric beside its floor.

The floor is the same metric between two independent exact sample sets of the
same size (for images: held-out real images), so a reader can tell a real gap
from noise. With pytorch-fid's Inception weights, images get the papers' FID,
Inception Score and precision/recall (:func:`inception_features`, :func:`fid`,
:func:`inception_score`, :func:`precision_recall`).
"""

import json
import os
from typing import Any, Dict, Optional, Tuple, Union

from ._scoregen import evaluate_json
from ._scoregen import frechet_distance as _frechet_distance
from ._scoregen import inception as _inception
from ._scoregen import inception_score as _inception_score
from ._scoregen import precision_recall as _precision_recall


def evaluate(
    samples: Any,
    target: Any,
    seed: int = 0,
    classifier: Optional[Union[str, os.PathLike]] = None,
    inception: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, Any]:
    """Metrics of ``samples`` [N, D] against ``target``, as ``scoregen eval --json``.

    ``target``: an image source ("digits", "mnist5k", "fashion-mnist", an IDX
    file or a folder of PNGs), a :class:`scoregen.oracle.GaussianMixture`, a
    mixture name ("gmm8", "gmm25", "unbalanced"), a mixture ``.toml`` or a
    reference ``.npy`` path, or a reference array [M, D]. Returns a dict:

    - with ``inception`` (pytorch-fid's Inception-v3 weights as safetensors),
      for an image source or a pytorch-fid statistics ``.npz`` target: ``fid``,
      ``inception_score`` (``mean``, ``std``, ``splits``), ``precision_recall``
      (against images only), ``n``, ``n_reference``, ``seconds_per_image``;
      samples are square images in [−1, 1], flattened;
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
    return json.loads(evaluate_json(samples, target, seed, classifier, inception))


def inception_features(images: Any, weights: Union[str, os.PathLike]) -> Tuple[Any, Any]:
    """pytorch-fid's Inception-v3 on ``images`` [N, 3, H, W] in [0, 1].

    Resized to 299×299 bilinearly and mapped to [−1, 1] as pytorch-fid does;
    ``weights`` is its state dict as safetensors (``scripts/convert-inception.py``).
    Returns (pool3 features [N, 2048], logits of the ``fc`` layer without its
    bias [N, 1008]), float64.
    """
    return _inception(images, os.fspath(weights))


def fid(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets, as pytorch-fid."""
    return _frechet_distance(features_a, features_b)


def inception_score(logits: Any, splits: int = 10) -> Tuple[float, float]:
    """Inception Score (mean, std over ``splits`` consecutive parts) of logits [N, K]."""
    return _inception_score(logits, splits)


def precision_recall(real: Any, generated: Any, k: int = 3) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls."""
    return _precision_recall(real, generated, k)


__all__ = ["evaluate", "fid", "inception_features", "inception_score", "precision_recall"]
