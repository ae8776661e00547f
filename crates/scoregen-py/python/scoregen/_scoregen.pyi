"""Type stubs of the native module (the Rust half of scoregen)."""

import os
import pathlib
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
FloatArray = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]
Times = Union[float, FloatArray]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
PathLike = Union[str, os.PathLike[str]]

class Sde:
    """A forward SDE dx = a(t)·x dt + g(t) dw with kernel N(m(t)·x(0), s(t)²·I)."""
    @property
    def name(self) -> str: ...
    @property
    def prior_std(self) -> float: ...
    @property
    def sampling_eps(self) -> float: ...
    def marginal(self, t: Times) -> Tuple[Any, Any]:
        """(m(t), s(t)): floats for a float t, arrays for an array."""
    @property
    def timestep_times(self) -> Optional[npt.NDArray[np.float64]]:
        """A discrete chain's times t_i of its timesteps i, or None (continuous SDE)."""
    def diffusion(self, t: Times) -> Any:
        """g(t)."""
    def drift(self, x: FloatArray, t: Times) -> Array:
        """f(x, t) = a(t)·x, x [N, D], t a float or [N]."""

class VE(Sde):
    """σ(t) = σ_min (σ_max/σ_min)^t."""
    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0) -> None: ...

class VP(Sde):
    """β(t) = β_min + t(β_max − β_min), s(t)² = 1 − m(t)²."""
    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None: ...

class SubVP(Sde):
    """VP's drift, s(t) = 1 − m(t)²."""
    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None: ...

class DDPM(Sde):
    """The discrete chain ᾱ_i = Π_{j≤i}(1 − β_j): β linear 1e-4 … 0.02 or cosine, n timesteps."""
    def __init__(self, schedule: str = "linear", n: int = 1000) -> None: ...

class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k), exact under any SDE."""
    def __init__(
        self, weights: Sequence[float], means: Sequence[Sequence[float]], covs: Sequence[Sequence[Sequence[float]]]
    ) -> None: ...
    @staticmethod
    def named(name: str) -> "GaussianMixture": ...
    @property
    def dim(self) -> int: ...
    @property
    def weights(self) -> list[float]: ...
    @property
    def means(self) -> npt.NDArray[np.float64]: ...
    @property
    def covs(self) -> npt.NDArray[np.float64]: ...
    def sample(self, n: int, seed: int = 0) -> npt.NDArray[np.float64]: ...
    def log_prob(self, x: FloatArray) -> Array: ...
    def score(self, x: FloatArray, t: Optional[Times] = None, sde: Optional[Sde] = None) -> Array:
        """∇ₓ log p(x), or ∇ₓ log p_t(x) under `sde` at time t."""

class Run:
    """A trained run folder, or a diffusers checkpoint (a pipeline folder with
    model_index.json, unet/ and scheduler/, or a UNet2DModel folder with
    config.json and its safetensors; docs/pretrained.md), loaded once."""
    @staticmethod
    def load(path: PathLike, use_ema: Optional[bool] = None) -> "Run": ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def step(self) -> int: ...
    @property
    def use_ema(self) -> bool: ...
    @property
    def weights(self) -> pathlib.Path:
        """The safetensors file the weights were read from."""
    @property
    def config(self) -> str: ...
    @property
    def sde(self) -> Sde: ...
    def sample(
        self,
        n: Optional[int] = None,
        sampler: Optional[str] = None,
        steps: int = 50,
        grid: Optional[str] = None,
        seed: int = 0,
        dtype: str = "float32",
        class_: Optional[Union[int, str]] = None,
        guidance: Optional[float] = None,
        x_init: Optional[FloatArray] = None,
        eta: Optional[float] = None,
        corrector: Optional[str] = None,
        snr: Optional[float] = None,
        rtol: Optional[float] = None,
        atol: Optional[float] = None,
        eps: Optional[float] = None,
        steps_per_level: Optional[int] = None,
        churn: Optional[float] = None,
        clip_denoised: bool = False,
        threshold: Optional[float] = None,
        clip_range: Optional[float] = None,
        keep_model_eps: bool = False,
        vp_start: bool = False,
        classifier: Optional[PathLike] = None,
        progress_bar: Optional[bool] = None,
    ) -> Array:
        """The same numbers as `scoregen sample` with the same settings and seed
        (`sampler` left out: "dpmpp-2m"). Every other flag is the keyword of its
        name (`-` as `_`), default the run's `[sampling]`: `corrector`, `snr`,
        `rtol`, `atol`, `eps` (the Langevin step size, as `--eps`),
        `steps_per_level`, `eta`, `churn`, `grid`, `clip_denoised`, `threshold`,
        `clip_range`, `keep_model_eps`, `vp_start`; `class_` (K or "all"),
        `guidance` and `classifier` (a noise-aware classifier folder) as
        `--class`, `--guidance`, `--classifier`; `x_init` ([n, D] or [n, C, H, W])
        the x_T to start from, as `--init-noise` (n defaults to its rows).
        `progress_bar`: a tqdm bar (None: when tqdm is installed and the output
        is a notebook or a terminal; True: always; False: never)."""
    def inpaint(
        self,
        x: Union[FloatArray, PathLike],
        mask: Union[str, FloatArray],
        per_input: int = 1,
        sampler: Optional[str] = None,
        steps: Optional[int] = None,
        seed: int = 0,
        dtype: str = "float32",
        progress_bar: Optional[bool] = None,
    ) -> Array:
        """`scoregen inpaint`'s completions of observations x [N, D] (or images
        [N, C, H, W]), or of what `--input` takes: "held-out[:N]" (the run's
        held-out images), a .npy path (data space) or a PNG path (pixels);
        mask "half", "box", "random:P", a .npy/.png path, or D values (1 known,
        0 missing); `per_input` completions per observation, in order; returns
        [N·per_input, …] shaped like x (images: [N·per_input, C, H, W])."""
    def report(self) -> Dict[str, Any]:
        """Writes RUN/report.html as `scoregen report --run RUN`; returns what
        `--json` prints: {"html", "figures", "skipped", "seconds"}."""
    def _repr_html_(self) -> str:
        """The run's settings and a picture of its samples (this object's last
        `sample`, else the run's saved samples), an inline PNG."""
    def log_likelihood(
        self,
        x: FloatArray,
        trace: str = "exact",
        probes: int = 1,
        seed: int = 0,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(nats, bits_per_dim) per row, by the probability-flow ODE."""
    def score(self, x: FloatArray, t: Times) -> Array: ...
    def model_output(self, x: FloatArray, t: Times, labels: Optional[FloatArray] = None) -> npt.NDArray[np.float32]:
        """The network's raw output (ε̂, v̂, x̂₀, or the score) at SDE times t; for an
        imported diffusers model, UNet2DModel(x, timestep).sample at the timestep
        (or σ) nearest to t. `labels`: class indices of a class-conditional model."""
    def time_frequencies(self) -> npt.NDArray[np.float32]: ...

def train(
    config: Union[PathLike, Dict[str, Any]],
    out: Optional[PathLike] = None,
    overrides: Optional[Dict[str, Union[bool, int, float, str]]] = None,
    progress: Optional[Callable[[Dict[str, float]], None]] = None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    data: Optional[FloatArray] = None,
    labels: Optional[Any] = None,
    progress_bar: Optional[bool] = None,
) -> Dict[str, Any]:
    """Trains a config (TOML file or dict of its tables) into `out`, then (unless
    report=False) writes RUN/report.html, as `scoregen train`; `data` [N, D] or
    [N, C, H, W] (and `labels` [N]) in memory instead of `data.source`, saved
    as RUN/data.npy, the run's source. `progress_bar` as `Run.sample`'s."""
def train_classifier(
    data: Optional[str] = None,
    run: Optional[PathLike] = None,
    noisy: bool = False,
    out: Optional[PathLike] = None,
    width: int = 32,
    blocks: int = 2,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress_bar: Optional[bool] = None,
) -> Dict[str, Any]:
    """`scoregen train-classifier`, each keyword its flag: the classifier behind
    the image metrics (`data`: digits, mnist5k, fashion-mnist, an IDX file, a
    PNG folder, or a Gaussian mixture), or with `noisy` a noise-aware one for
    classifier guidance on `run`'s SDE; `out` default classifiers/DATA (or
    RUN/classifier-noisy). Returns what `--json` prints: {"dir", "meta",
    "train_images", "test_images", "final_loss", "seconds"}."""
def sample(
    score_fn: ScoreFn,
    sde: Sde,
    shape: Sequence[int],
    sampler: Optional[str] = None,
    steps: int = 50,
    seed: int = 0,
    grid: Optional[str] = None,
    dtype: str = "float32",
    eps: Optional[float] = None,
    t_eps: Optional[float] = None,
    denoise: bool = True,
    clip_denoised: bool = False,
    threshold: Optional[float] = None,
    keep_model_eps: bool = False,
    eta: float = 0.0,
    clip_range: float = 1.0,
    threshold_max: float = float("inf"),
    dpmpp_3m_form: str = "taylor",
    progress_bar: Optional[bool] = None,
) -> Array:
    """`eps`: the Langevin step size, as `scoregen sample --eps` and `Run.sample`'s
    `eps` (config `sampling.step_size`); `t_eps`: the final time ε of the
    reverse process (config `sampling.eps`; default the SDE's `sampling_eps`);
    `progress_bar` as `Run.sample`'s.
    `clip_denoised`, `threshold`, `keep_model_eps`: as `scoregen sample`'s
    `--clip-denoised`, `--threshold P`, `--keep-model-eps` (σ-space samplers);
    `eta` (`ddim`'s η), `clip_range` (diffusers' `clip_sample_range`),
    `threshold_max` (`sample_max_value`), `dpmpp_3m_form` ("taylor", third
    order, or "k-diffusion", k-diffusion's and diffusers' 3M): the config's
    `sampling.*` keys of the same names."""
def sampling_noise(seed: int, n: int) -> npt.NDArray[np.float32]:
    """The first `n` standard normals that `sample(..., seed=seed)` draws, in
    its order: a σ-space sampler's x_T (N·D), then N·D per noisy step."""
def log_likelihood(
    score_fn: ScoreFn,
    sde: Sde,
    x: FloatArray,
    trace: str = "exact",
    probes: int = 1,
    seed: int = 0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: Optional[float] = None,
    divergence: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    fd_step: float = 1e-3,
) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """`t_eps`: the final time ε of the integral (default the SDE's `sampling_eps`)."""
def evaluate_json(
    samples: FloatArray,
    target: Any,
    seed: int = 0,
    classifier: Optional[PathLike] = None,
    inception: Optional[PathLike] = None,
) -> str: ...
def inception(images: FloatArray, weights: PathLike) -> tuple[FloatArray, FloatArray]: ...
def frechet_distance(a: FloatArray, b: FloatArray) -> float: ...
def inception_score(logits: FloatArray, splits: int = 10) -> tuple[float, float]: ...
def precision_recall(real: FloatArray, generated: FloatArray, k: int = 3) -> tuple[float, float]: ...
def sampler_names() -> list[str]: ...
def _save_weights(path: PathLike, tensors: Dict[str, FloatArray]) -> pathlib.Path:
    """scoregen.torch.save's native half: `tensors` become the newest checkpoint's
    model and EMA weights (checked against the run's model first)."""
