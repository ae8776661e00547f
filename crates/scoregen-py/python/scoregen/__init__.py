"""scoregen: score-based generative modeling (a Rust library) from Python.

Learn the score ∇ₓ log p(x) of data by denoising score matching, generate by
the reverse-time SDE, the probability-flow ODE or the σ-space solvers, and
compute exact log-likelihoods, all checked against an exact Gaussian-mixture
oracle. Arrays go in and out as NumPy arrays (float32 or float64, any strides).

- :class:`Run`: a trained run folder (``Run.load(path)``): ``sample``,
  ``inpaint``, ``log_likelihood``, ``score``, ``report``; in a notebook it
  shows its settings and a picture of its samples.
- :func:`train`: train a config (TOML) into a run folder, with a progress callback,
  then write its report ``RUN/report.html`` (``report=True`` by default, as ``scoregen train``).
- :func:`train_classifier`: the classifier behind the image metrics, or a
  noise-aware one for classifier guidance (``scoregen train-classifier``).
- :func:`sample`, :func:`log_likelihood`: any Python callable
  ``score_fn(x, t) -> s`` (a NumPy or PyTorch model) through scoregen's samplers
  and the probability-flow likelihood.
- :mod:`scoregen.oracle`, :mod:`scoregen.sde`, :mod:`scoregen.metrics`;
  :mod:`scoregen.torch` (needs PyTorch): a run's network as a ``torch.nn.Module``.

Errors in the input are ``ValueError`` or ``TypeError`` with the message the
command line prints; a missing file is ``FileNotFoundError``. Training,
sampling and inpainting show tqdm bars when tqdm is installed and the output
is a notebook or a terminal (``progress_bar=False`` hides them).
"""

from ._scoregen import Run, log_likelihood, sample, sampler_names, sampling_noise, train, train_classifier
from . import metrics, oracle, sde

__all__ = ["Run", "train", "train_classifier", "sample", "log_likelihood", "sampler_names", "sampling_noise", "oracle", "sde", "metrics"]
