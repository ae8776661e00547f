//! `scoregen likelihood`: log-likelihoods of a data set under a trained run,
//! beside the exact log-density when the data come from a known mixture.

use crate::app::budget;
use crate::app::run_dir::LoadedModel;
use crate::data;
use crate::error::Result;
use crate::io::npy;
use crate::likelihood::{self, log_likelihood_with_progress, Dequantization, LikelihoodOptions, TraceEstimator};
use crate::points::Points;
use crate::rng::{streams, Rng};
use crate::samplers::OdeMethod;
use candle_core::{DType, Device};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;
/// What `scoregen likelihood` was asked for.
#[derive(Debug, Clone)]
pub struct LikelihoodRequest {
    /// A `.npy` file of shape [N, D], a mixture name (fresh points are drawn) or an
    /// image source (the first n images of its held-out split).
    pub data: String,
    /// Points drawn from a named set (a `.npy` file is used whole).
    pub n: usize,
    pub seed: u64,
    pub trace: Option<TraceEstimator>,
    pub rtol: f64,
    pub atol: f64,
    pub dequantize: Option<Dequantization>,
    pub use_ema: bool,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Where the model is loaded and the ODE is integrated.
    pub device: Device,
}

/// Mean log-likelihood and its comparison with the exact density.
#[derive(Debug, Clone, Serialize)]
pub struct LikelihoodReport {
    pub n: usize,
    pub dim: usize,
    /// Mean log p(x) in nats and its standard error over the points.
    pub mean_nats: f64,
    pub stderr_nats: f64,
    /// Mean bits/dim, −log p/(D ln 2) + bpd_offset.
    pub mean_bits_per_dim: f64,
    pub bpd_offset: f64,
    pub trace: TraceEstimator,
    pub nfe: usize,
    pub seconds: f64,
    /// Mean exact log p₀(x) when the data are a known mixture (not dequantized).
    pub oracle_mean_nats: Option<f64>,
    /// Mean of model − oracle log-density, and the mean absolute difference.
    pub gap_nats: Option<f64>,
    pub mean_abs_gap_nats: Option<f64>,
    /// log p(x) per point.
    pub nats: Vec<f64>,
}

/// Loads the run, reads or draws the points, and integrates the likelihood
/// (score in f32, ODE state in f64).
pub fn likelihood_of_run(run_dir: &Path, req: &LikelihoodRequest) -> Result<LikelihoodReport> {
    let model = LoadedModel::from_run(run_dir, req.use_ema, &req.device)?;
    // The ODE carries each point with its log-density and trace probes: like sampling, plus a few copies.
    // A `.npy` file is used whole, so its own row count is what counts (read first: it is small next to the ODE).
    let rows = if req.data.ends_with(".npy") { npy::read_points(Path::new(&req.data))?.n } else { req.n };
    crate::io::memory::check(
        &format!("log p of {rows} points of dimension {}", model.state.dim),
        2.0 * budget::sampling(&model.cfg, rows, model.state.dim, 0),
        "ask for fewer (--n)",
    )?;
    let mut rng = Rng::new(req.seed, streams::EVAL);
    let (points, oracle) = if req.data.ends_with(".npy") {
        (npy::read_points(Path::new(&req.data))?, None)
    } else if data::is_image_source(&req.data) {
        // Images: the held-out split, scaled and split as the run's training data were.
        let set = data::load_images(&req.data, false, &model.cfg.data.image_options())?;
        let set = set.select(&(0..set.len().min(req.n)).collect::<Vec<_>>());
        (set.to_points(model.cfg.data.scale), None)
    } else {
        let ds = data::load(&req.data, req.n, &mut rng)?;
        (ds.points, ds.oracle)
    };
    let start = Instant::now();
    let stop = crate::progress::Interruptible::enter();
    let ll = likelihood_of_points(&model, &points, req, &mut rng)
        .map_err(|e| stop.explain(e, "log-likelihood stopped; nothing was written"))?;
    let seconds = start.elapsed().as_secs_f64();
    let trace = req.trace.unwrap_or(TraceEstimator::default_for(ll.dim));
    let n = ll.nats.len();
    let mean = ll.nats.iter().sum::<f64>() / n as f64;
    let var = ll.nats.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    let exact = oracle
        .filter(|_| req.dequantize.is_none())
        .map(|m| m.log_prob(&Points::new(points.n, points.d, points.data.clone())));
    let (oracle_mean, gap, abs_gap) = match &exact {
        Some(e) => {
            let om = e.iter().sum::<f64>() / n as f64;
            let abs = e.iter().zip(&ll.nats).map(|(a, b)| (a - b).abs()).sum::<f64>() / n as f64;
            (Some(om), Some(mean - om), Some(abs))
        }
        None => (None, None, None),
    };
    Ok(LikelihoodReport {
        n,
        dim: ll.dim,
        mean_nats: mean,
        stderr_nats: (var / n as f64).sqrt(),
        mean_bits_per_dim: ll.bits_per_dim.iter().sum::<f64>() / n as f64,
        bpd_offset: ll.bpd_offset,
        trace,
        nfe: ll.nfe,
        seconds,
        oracle_mean_nats: oracle_mean,
        gap_nats: gap,
        mean_abs_gap_nats: abs_gap,
        nats: ll.nats,
    })
}

/// log p(x) of `points` under a loaded run, as `scoregen likelihood` computes
/// it: the probability-flow ODE from the run's ε (RK45 at the request's
/// tolerances, score in f32, state in f64), probes and dequantization noise
/// drawn from `rng`. The Python package calls this with its arrays.
pub fn likelihood_of_points(
    model: &LoadedModel,
    points: &Points,
    req: &LikelihoodRequest,
    rng: &mut Rng,
) -> Result<likelihood::LogLikelihood> {
    if points.d != model.state.dim {
        return Err(crate::Error::Invalid(format!(
            "data `{}` have dimension {}, the model was trained on dimension {}",
            req.data, points.d, model.state.dim
        )));
    }
    let x = points.to_tensor(DType::F64, &model.device)?;
    let opts = LikelihoodOptions {
        trace: req.trace,
        method: OdeMethod::Rk45 { rtol: req.rtol, atol: req.atol },
        eps: model.cfg.sampling.eps,
        score_dtype: DType::F32,
        dequantize: req.dequantize,
    };
    let score = model.score();
    let sde = model.cfg.sde();
    let pb = crate::progress::bar(likelihood::PROGRESS_TICKS, "log p", req.quiet);
    log_likelihood_with_progress(score.as_ref(), sde.as_ref(), &x, &opts, rng, &pb)
}

/// The dequantization grid for `scoregen likelihood --dequantize`: the given
/// levels and range, else those of the run's image data (its pixel levels and
/// pixel scale, e.g. 17 levels over [−1, 1] for symmetric `digits`), else 256
/// levels over [0, 1].
pub fn dequantization_for(run_dir: &Path, levels: Option<u32>, range: Option<(f64, f64)>) -> Result<Dequantization> {
    let cfg = crate::app::run_dir::config_of(run_dir)?;
    let image = data::is_image_source(&cfg.data.source) || cfg.model.kind == crate::app::config::ModelKind::Unet2d;
    let default = if image {
        let (lo, hi) = match cfg.data.scale {
            data::PixelScale::Symmetric => (-1.0, 1.0),
            data::PixelScale::Unit => (0.0, 1.0),
        };
        Dequantization { levels: data::images::levels_of(&cfg.data.source), lo, hi }
    } else {
        Dequantization::default()
    };
    let (lo, hi) = range.unwrap_or((default.lo, default.hi));
    let dq = Dequantization { levels: levels.unwrap_or(default.levels), lo, hi };
    if dq.levels < 2 || !(dq.lo.is_finite() && dq.hi.is_finite() && dq.hi > dq.lo) {
        return Err(crate::Error::Invalid(format!(
            "dequantization needs ≥ 2 levels and LO < HI (got {} levels over [{}, {}])",
            dq.levels, dq.lo, dq.hi
        )));
    }
    Ok(dq)
}
