//! The scheduler options of the σ-space samplers, run through the dispatcher
//! as `scoregen sample` runs them: the grids (`sampling.grid`), clipping and
//! dynamic thresholding of x̂₀, the VP start, and the adapter for ε- and
//! v-models defined on the DDPM chain's integer timesteps — each against its
//! definition, diffusers' formula, Ho et al.'s algorithm or the oracle.

use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use scoregen::named::Named;
use scoregen::oracle::{named_mixture, OracleScore};
use scoregen::rng::Rng;
use scoregen::samplers::grid::timestep_spacing;
use scoregen::samplers::{
    sample_ddim, sample_sigma_steps, Grid, LimitedDenoiser, Method, SampleContext, SamplerKind, SamplerSpec,
    ScoreDenoiser, X0Limit, SAMPLERS,
};
use scoregen::score::{DiscreteTimeModel, Output, ScoreFn};
use scoregen::sde::{DiscreteVp, Sde, VpSde};
use std::cell::RefCell;
use std::sync::Arc;

/// Every σ-space sampler of the sampler table (a new one is tested here by being added there).
fn sigma_samplers() -> Vec<SamplerKind> {
    let kinds: Vec<SamplerKind> = SAMPLERS.iter().filter(|s| s.kind.is_denoiser()).map(|s| s.kind).collect();
    assert!(kinds.len() >= 9, "the table lost its σ-space samplers: {kinds:?}");
    kinds
}

fn chain() -> Arc<DiscreteVp> {
    scoregen::init();
    Arc::new(DiscreteVp::ddpm())
}

fn vp() -> Arc<dyn Sde> {
    scoregen::init();
    Arc::new(VpSde::default())
}

fn draw(score: &dyn ScoreFn, sde: &dyn Sde, spec: &SamplerSpec, n: usize, seed: u64) -> scoregen::samplers::Sampled {
    let hidden = ProgressBar::hidden();
    let ctx = SampleContext { dtype: DType::F64, ..SampleContext::new(score, sde, &hidden) };
    spec.sample(&ctx, (n, 2), &mut Rng::new(seed, 0)).unwrap()
}

fn flat(x: &Tensor) -> Vec<f64> {
    x.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    flat(a).iter().zip(flat(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A score that records the time of every call.
struct Recording<'a> {
    inner: &'a dyn ScoreFn,
    times: RefCell<Vec<f64>>,
}

impl ScoreFn for Recording<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.times.borrow_mut().push(scoregen::sde::times(t)?[0]);
        self.inner.score(x, t)
    }
}

/// Every σ-space sampler runs on every grid, on the DDPM chain and on VP,
/// with the NFE its steps cost (N, Heun 2N − 1, DPM-Solver++(3M) N + 1) and finite samples; leaving `grid` unset is
/// the sampler's default grid bit for bit (behaviour unchanged: uniform-t for
/// DDPM and DDIM, Karras for the others); and the grid reaches the score: DDIM
/// with `trailing` on the chain calls it exactly at the chain's times
/// t_i = (i + 1)/1000 of diffusers' timesteps 999, 874, …, 124.
#[test]
fn every_sigma_sampler_runs_on_every_grid() {
    let chain = chain();
    let sdes: [Arc<dyn Sde>; 2] = [chain.clone(), vp()];
    let mix = named_mixture("gmm8").unwrap();
    for sde in &sdes {
        let o = OracleScore::new(mix.clone(), sde.clone());
        for kind in sigma_samplers() {
            for &grid in Grid::all() {
                let spec = SamplerSpec { sampler: kind, steps: 8, grid: Some(grid), ..Default::default() };
                let out = draw(&o, sde.as_ref(), &spec, 32, 1);
                // Heun's last step is Euler's; DPM-Solver++(3M)'s first is 2S
                let want = match kind {
                    SamplerKind::Heun => 15,
                    SamplerKind::Dpmpp3m => 9,
                    _ => 8,
                };
                assert_eq!(out.nfe, want, "{kind} {grid} on {}", sde.name());
                assert!(flat(&out.x).iter().all(|v| v.is_finite()), "{kind} {grid} on {}", sde.name());
            }
            let own = SamplerSpec { sampler: kind, steps: 8, ..Default::default() };
            let explicit = SamplerSpec { grid: kind.default_grid(), ..own };
            let (a, b) = (draw(&o, sde.as_ref(), &own, 32, 2).x, draw(&o, sde.as_ref(), &explicit, 32, 2).x);
            assert_eq!(flat(&a), flat(&b), "{kind} on {}", sde.name());
        }
    }
    let o = OracleScore::new(mix, chain.clone());
    let rec = Recording { inner: &o, times: RefCell::new(Vec::new()) };
    let spec = SamplerSpec { sampler: SamplerKind::Ddim, steps: 8, grid: Some(Grid::Trailing), ..Default::default() };
    draw(&rec, chain.as_ref(), &spec, 4, 3);
    let idx = timestep_spacing(Grid::Trailing, 1000, 8).unwrap();
    assert_eq!(idx, [999, 874, 749, 624, 499, 374, 249, 124]);
    let times = rec.times.borrow();
    assert_eq!(times.len(), 8);
    for (t, i) in times.iter().zip(idx) {
        assert!((t - chain.time_of(i)).abs() < 1e-12, "{t} vs t_{i} = {}", chain.time_of(i));
    }
}

/// diffusers' `DDIMScheduler.step` (η = 0) with `clip_sample` and
/// `use_clipped_model_output=True` (not diffusers' default, which keeps the
/// model's ε: see docs/guide.md §13) on the DDPM chain from timestep 500 to
/// 400, written out: ε = −√(1 − ᾱ)·s,
/// x̂₀ = clamp((x − √(1 − ᾱ)·ε)/√ᾱ, −1, 1), ε ← (x − √ᾱ·x̂₀)/√(1 − ᾱ),
/// x' = √ᾱ'·x̂₀ + √(1 − ᾱ')·ε. The σ-space DDIM step through the clipping
/// denoiser equals it to 1e-9; the same with thresholding (diffusers'
/// `_threshold_sample` in place of the clamp). Without the recomputed ε
/// (x' from the unclipped ε) the difference is of order one here, which this
/// tolerance would catch.
#[test]
fn limited_ddim_step_is_diffusers_ddim_with_clip_sample() {
    let chain = chain();
    let o = OracleScore::new(named_mixture("gmm8").unwrap(), chain.clone());
    let den = ScoreDenoiser::new(&o, chain.as_ref(), None);
    let (i, j) = (500usize, 400usize);
    let (ab, ab2) = (chain.alphas_cumprod[i], chain.alphas_cumprod[j]);
    let x_t = Rng::new(8, 0).randn((64, 2), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.0).unwrap();
    let eps = o.score_at(&x_t, chain.time_of(i)).unwrap().affine(-(1.0 - ab).sqrt(), 0.0).unwrap();
    let x0_raw = (&x_t - eps.affine((1.0 - ab).sqrt(), 0.0).unwrap()).unwrap().affine(1.0 / ab.sqrt(), 0.0).unwrap();
    for limit in [X0Limit::Clip { range: 1.0 }, X0Limit::Threshold { ratio: 0.9, range: 1.0, max: f64::INFINITY }] {
        let x0 = limit.apply(&x0_raw).unwrap();
        assert!(max_diff(&x0, &x0_raw) > 0.1, "the limit must bite for the test to mean anything");
        let eps2 = (&x_t - x0.affine(ab.sqrt(), 0.0).unwrap()).unwrap().affine(1.0 / (1.0 - ab).sqrt(), 0.0).unwrap();
        let want = (x0.affine(ab2.sqrt(), 0.0).unwrap() + eps2.affine((1.0 - ab2).sqrt(), 0.0).unwrap()).unwrap();
        let limited = LimitedDenoiser { inner: &den, limit };
        let x_sigma = x_t.affine(1.0 / ab.sqrt(), 0.0).unwrap();
        let sig = [chain.sigma(i), chain.sigma(j)];
        let out = sample_ddim(&limited, x_sigma, &sig, 0.0, &mut Rng::new(0, 0), &ProgressBar::hidden()).unwrap().x;
        let ours = out.affine(ab2.sqrt(), 0.0).unwrap();
        let d = max_diff(&ours, &want);
        assert!(d < 1e-9, "{limit:?}: max difference {d}");
        let stale = (x0.affine(ab2.sqrt(), 0.0).unwrap() + eps.affine((1.0 - ab2).sqrt(), 0.0).unwrap()).unwrap();
        assert!(max_diff(&stale, &want) > 1e-3, "{limit:?}: recomputing ε must matter here");
    }
}

/// diffusers' default `DDIMScheduler.step` (η = 0, `clip_sample`,
/// `use_clipped_model_output=False`, as `DDIMPipeline` runs it), written out:
/// x̂₀ limited, ε kept, x' = √ᾱ'·limit(x̂₀) + √(1 − ᾱ')·ε. `ddim` with
/// `keep_model_eps` equals it to 1e-9 (clipping and thresholding), through the
/// sampler table's row and the limiting denoiser; without the option it is the
/// recomputed-ε step above, O(1) away.
#[test]
fn ddim_keeping_the_model_eps_is_diffusers_default_clip_sample() {
    let chain = chain();
    let o = OracleScore::new(named_mixture("gmm8").unwrap(), chain.clone());
    let (i, j) = (500usize, 400usize);
    let (ab, ab2) = (chain.alphas_cumprod[i], chain.alphas_cumprod[j]);
    let x_t = Rng::new(8, 0).randn((64, 2), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.0).unwrap();
    let eps = o.score_at(&x_t, chain.time_of(i)).unwrap().affine(-(1.0 - ab).sqrt(), 0.0).unwrap();
    let x0_raw = (&x_t - eps.affine((1.0 - ab).sqrt(), 0.0).unwrap()).unwrap().affine(1.0 / ab.sqrt(), 0.0).unwrap();
    let x_sigma = x_t.affine(1.0 / ab.sqrt(), 0.0).unwrap();
    let sig = [chain.sigma(i), chain.sigma(j)];
    for limit in [X0Limit::Clip { range: 1.0 }, X0Limit::Threshold { ratio: 0.9, range: 1.0, max: f64::INFINITY }] {
        let x0 = limit.apply(&x0_raw).unwrap();
        assert!(max_diff(&x0, &x0_raw) > 0.1, "the limit must bite for the test to mean anything");
        let want = (x0.affine(ab2.sqrt(), 0.0).unwrap() + eps.affine((1.0 - ab2).sqrt(), 0.0).unwrap()).unwrap();
        let spec = SamplerSpec { sampler: SamplerKind::Ddim, keep_model_eps: true, ..Default::default() }
            .with_limit(Some(limit));
        spec.validate("test").unwrap();
        let Method::SigmaSpace { step, .. } = spec.sampler.method() else { panic!("ddim is a σ-space sampler") };
        let den = ScoreDenoiser::new(&o, chain.as_ref(), None);
        let limited = LimitedDenoiser { inner: &den, limit };
        let hidden = ProgressBar::hidden();
        let run = |s: &SamplerSpec| {
            let mut stepper = step(s);
            sample_sigma_steps(&limited, stepper.as_mut(), x_sigma.clone(), &sig, &mut Rng::new(0, 0), None, &hidden)
                .unwrap()
                .x
                .affine(ab2.sqrt(), 0.0)
                .unwrap()
        };
        let d = max_diff(&run(&spec), &want);
        assert!(d < 1e-9, "{limit:?}: max difference {d}");
        let recomputed = run(&SamplerSpec { keep_model_eps: false, ..spec });
        assert!(max_diff(&recomputed, &want) > 1e-3, "{limit:?}: keeping ε must matter here");
    }
    // only ddim, and only with a limit
    let e = SamplerSpec { sampler: SamplerKind::Ddim, keep_model_eps: true, ..Default::default() }.validate("c.toml");
    assert!(e.unwrap_err().to_string().contains("sampling.keep_model_eps"));
    let heun =
        SamplerSpec { sampler: SamplerKind::Heun, keep_model_eps: true, clip_denoised: true, ..Default::default() };
    assert!(heun.validate("c.toml").is_err());
}

/// Every σ-space sampler ends with x = D(x, σ_{N−1}) (the step to σ = 0), so
/// with clipping or thresholding to [−1, 1] every sample of gmm8 (radius 4)
/// lies in [−1, 1], while without a limit some lie outside.
#[test]
fn limited_samplers_end_inside_the_range() {
    let sde = vp();
    let o = OracleScore::new(named_mixture("gmm8").unwrap(), sde.clone());
    for kind in sigma_samplers() {
        let free = SamplerSpec { sampler: kind, steps: 10, ..Default::default() };
        let biggest =
            |s: &SamplerSpec| flat(&draw(&o, sde.as_ref(), s, 200, 4).x).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(biggest(&free) > 1.5, "{kind}");
        for limit in [X0Limit::Clip { range: 1.0 }, X0Limit::Threshold { ratio: 0.995, range: 1.0, max: f64::INFINITY }]
        {
            let m = biggest(&free.with_limit(Some(limit)));
            assert!(m <= 1.0 + 1e-12, "{kind} {limit:?}: max |x| = {m}");
        }
    }
}

/// With `vp_start` the σ-space samplers start at √(1 + σ₀²)·z, which on VP is
/// x_T = m(T)·x_σ₀ = z exactly (the VP prior N(0, I)); without it, at σ₀·z,
/// i.e. x_T = m(T)·σ₀·z. Read from the first recorded state (t, x_t).
#[test]
fn vp_start_starts_from_the_vp_prior() {
    let sde = vp();
    let o = OracleScore::new(named_mixture("gmm8").unwrap(), sde.clone());
    let z = Rng::new(5, 0).randn((16, 2), DType::F64, &Device::Cpu).unwrap();
    for kind in [SamplerKind::Ddim, SamplerKind::Dpmpp2m] {
        for vp_start in [false, true] {
            let spec = SamplerSpec { sampler: kind, steps: 6, vp_start, record_every: Some(1), ..Default::default() };
            let out = draw(&o, sde.as_ref(), &spec, 16, 5);
            let (t0, x_t0) = &out.trajectory[0];
            let (m, s) = sde.marginal(*t0);
            let sigma0 = s / m;
            let want = if vp_start { z.clone() } else { z.affine(m * sigma0, 0.0).unwrap() };
            assert!((t0 - 1.0).abs() < 1e-9, "{t0}");
            assert!(max_diff(x_t0, &want) < 1e-12, "{kind} vp_start={vp_start}");
        }
    }
}

/// ε_θ(x, i) = −√(1 − ᾱ_i)·∇ log p_{t_i}(x): the exact ε-model of the DDPM
/// chain at its integer timesteps.
fn eps_model(o: &OracleScore, chain: &DiscreteVp, x: &Tensor, i: usize) -> candle_core::Result<Tensor> {
    o.score_at(x, chain.time_of(i))?.affine(-(1.0 - chain.alphas_cumprod[i]).sqrt(), 0.0)
}

/// The ε-model above, wrapped by [`DiscreteTimeModel`] and sampled by `ddpm`
/// on the `linspace` grid of 1000 steps (all timesteps 999, …, 0) with
/// `vp_start`, reproduces Ho et al.'s Algorithm 2 written with that model —
/// x_T = z, x_{i−1} = (x_i − β_i/√(1 − ᾱ_i)·ε_θ(x_i, i))/√α_i + √β̃_i·z, no
/// noise at the last step — with the same normal draws, to 1e-8 after 1000
/// steps. An adapter off by one timestep fails by far more.
#[test]
fn eps_model_on_integer_timesteps_reproduces_ho_et_al_algorithm_2() {
    let chain = chain();
    let o = OracleScore::new(named_mixture("gmm8").unwrap(), chain.clone());
    let model =
        DiscreteTimeModel::new(|x: &Tensor, i| eps_model(&o, &chain, x, i), chain.clone(), Output::Epsilon).unwrap();
    let spec = SamplerSpec {
        sampler: SamplerKind::Ddpm,
        steps: 1000,
        grid: Some(Grid::Linspace),
        vp_start: true,
        ..Default::default()
    };
    let n = 64;
    let ours = draw(&model, chain.as_ref(), &spec, n, 6);
    assert_eq!(ours.nfe, 1000);
    let mut rng = Rng::new(6, 0);
    let mut x = rng.randn((n, 2), DType::F64, &Device::Cpu).unwrap();
    for i in (0..1000).rev() {
        let (ab, beta) = (chain.alphas_cumprod[i], chain.betas[i]);
        let eps = eps_model(&o, &chain, &x, i).unwrap();
        let mean = (&x - eps.affine(beta / (1.0 - ab).sqrt(), 0.0).unwrap())
            .unwrap()
            .affine(1.0 / (1.0 - beta).sqrt(), 0.0)
            .unwrap();
        x = if i > 0 {
            let var = (1.0 - chain.alphas_cumprod[i - 1]) / (1.0 - ab) * beta;
            (mean + rng.randn((n, 2), DType::F64, &Device::Cpu).unwrap().affine(var.sqrt(), 0.0).unwrap()).unwrap()
        } else {
            mean
        };
    }
    let d = max_diff(&ours.x, &x);
    println!("ddpm through the adapter vs Ho et al. Alg. 2: max difference {d:.3e}");
    assert!(d < 1e-8, "max difference {d}");
}

/// The same model as a v-prediction, v = √ᾱ·ε − √(1 − ᾱ)·x̂₀, samples what
/// the ε-model samples, and both what the oracle score itself samples, when
/// the grid lands on the timesteps (DDIM, `trailing` and `leading`, 20 steps):
/// to 1e-9.
#[test]
fn v_model_samples_as_the_eps_model_and_the_oracle() {
    let chain = chain();
    let o = OracleScore::new(named_mixture("gmm8").unwrap(), chain.clone());
    let v_of = |x: &Tensor, i: usize| -> candle_core::Result<Tensor> {
        let ab = chain.alphas_cumprod[i];
        let eps = eps_model(&o, &chain, x, i)?;
        let x0 = (x - eps.affine((1.0 - ab).sqrt(), 0.0)?)?.affine(1.0 / ab.sqrt(), 0.0)?;
        eps.affine(ab.sqrt(), 0.0)? - x0.affine((1.0 - ab).sqrt(), 0.0)?
    };
    let eps_m =
        DiscreteTimeModel::new(|x: &Tensor, i| eps_model(&o, &chain, x, i), chain.clone(), Output::Epsilon).unwrap();
    let v_m = DiscreteTimeModel::new(v_of, chain.clone(), Output::V).unwrap();
    for grid in [Grid::Trailing, Grid::Leading] {
        let spec = SamplerSpec { sampler: SamplerKind::Ddim, steps: 20, grid: Some(grid), ..Default::default() };
        let (a, b, c) = (
            draw(&eps_m, chain.as_ref(), &spec, 64, 7).x,
            draw(&v_m, chain.as_ref(), &spec, 64, 7).x,
            draw(&o, chain.as_ref(), &spec, 64, 7).x,
        );
        assert!(
            max_diff(&a, &b) < 1e-9 && max_diff(&a, &c) < 1e-9,
            "{grid}: {} {}",
            max_diff(&a, &b),
            max_diff(&a, &c)
        );
    }
}

/// A time between two timesteps is evaluated at the nearest one; a batch
/// with mixed times sends each row to its own timestep; a continuous SDE is
/// refused.
#[test]
fn off_grid_times_go_to_the_nearest_timestep() {
    let chain = chain();
    let seen = RefCell::new(Vec::new());
    let model = DiscreteTimeModel::new(
        |x: &Tensor, i: usize| {
            seen.borrow_mut().push(i);
            x.zeros_like()
        },
        chain.clone(),
        Output::Epsilon,
    )
    .unwrap();
    let h = 1.0 / 1000.0;
    for (t, want) in [
        (chain.time_of(0), 0),
        (chain.time_of(41) + 0.4 * h, 41),
        (chain.time_of(41) + 0.6 * h, 42),
        (0.0, 0),
        (1.0, 999),
    ] {
        assert_eq!(model.timestep_of(t), want, "t = {t}");
    }
    let x = Tensor::zeros((3, 2), DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[chain.time_of(10), chain.time_of(10), chain.time_of(700)], &Device::Cpu).unwrap();
    model.score(&x, &t).unwrap();
    assert_eq!(*seen.borrow(), [10, 10, 700]);
    assert!(DiscreteTimeModel::new(|x: &Tensor, _| Ok(x.clone()), vp(), Output::Epsilon).is_err());
}
