//! Controllable generation checked against exact answers: imputation of one
//! coordinate from the other with the oracle score against samples of the exact
//! conditional (a mixture in closed form), and class guidance with the exact
//! class posterior p_t(y | x) of a mixture whose components are the classes.

use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use scoregen::data::{toy, Points};
use scoregen::guidance::{ClassifierFree, ClassifierGuided, Inpaint, Labels};
use scoregen::metrics;
use scoregen::oracle::{GaussianMixture, OracleScore};
use scoregen::rng::Rng;
use scoregen::samplers::{
    annealed_langevin_constrained, sample_pc, sample_pc_constrained, AnnealedOptions, LangevinCorrector,
    ReverseDiffusion, ReverseOptions, SampleContext, SamplerKind, SamplerSpec,
};
use scoregen::score::ScoreFn;
use scoregen::sde::{NoiseLadder, Sde, VpSde};
use std::sync::Arc;

const N: usize = 2000;

/// Energy distance of `x` (one coordinate) to exact samples of `target`, and
/// the exact-vs-exact floor at the same n.
fn energy_vs(x: &Points, target: &GaussianMixture, seed: u64) -> (f64, f64) {
    let reference = target.sample(2 * N, &mut Rng::new(seed, 9));
    let (d, floor) = metrics::against_reference(x, &reference, &mut Rng::new(seed, 10));
    (d.energy, floor.energy)
}

/// The free coordinate of inpainted 2-D points, checking that the known one is the observation.
fn free_coordinate(x: &Tensor, known: usize, value: f64) -> Points {
    let pts = Points::from_tensor(x).unwrap();
    assert!(pts.rows().all(|r| r[known] == value), "the known coordinate is the observation");
    Points::new(pts.n, 1, pts.rows().map(|r| r[1 - known]).collect())
}

fn observation(known: usize, value: f64) -> Inpaint {
    let mut obs = [[0.0f64; 2]];
    let mut mask = [[0.0f64; 2]];
    obs[0][known] = value;
    mask[0][known] = 1.0;
    Inpaint::new(Tensor::new(&obs, &Device::Cpu).unwrap(), Tensor::new(&mask, &Device::Cpu).unwrap()).unwrap()
}

/// Tolerance on the energy distance above its floor. Over seeds the floor of
/// two exact sets of 2,000 one-dimensional points spreads by about 0.002, and a
/// wrong answer (the x₂-marginal, which ignores the observation) is at 0.056;
/// the replacement method is an approximation (p_t(x₂ | x₁(t)) for
/// p_t(x₂ | x₁)), so we allow 0.01: five floor spreads, a fifth of the wrong answer.
const TOL: f64 = 0.01;

/// On gmm8, x₁ = 3.4 leaves three of the eight modes: p(x₂ | x₁) puts weights
/// 0.35 / 0.29 / 0.35 on x₂ ≈ −2.8, 0, 2.8 (closed form, `condition`). The PC
/// inpainter (reverse diffusion + Langevin corrector, VP SDE, oracle score)
/// imputes x₂ within TOL of the floor, while the x₂-marginal is far away.
#[test]
fn pc_imputation_matches_the_exact_conditional() {
    scoregen::init();
    let mix = toy::named_mixture("gmm8").unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    let (known, value) = (0, 3.4);
    let out = sample_pc_constrained(
        &oracle,
        sde.as_ref(),
        &ReverseDiffusion,
        &LangevinCorrector::default(),
        &observation(known, value),
        (N, 2),
        &ReverseOptions { steps: 300, ..Default::default() },
        &mut Rng::new(1, 0),
        DType::F64,
        &Device::Cpu,
        &ProgressBar::hidden(),
    )
    .unwrap();
    let x2 = free_coordinate(&out.x, known, value);
    let cond = mix.condition(&[known], &[value]).unwrap();
    let (d, floor) = energy_vs(&x2, &cond, 1);
    assert!(d < floor + TOL, "imputed vs exact conditional: energy {d:.5}, floor {floor:.5}");
    // the test can fail: the marginal of x₂ is far from the conditional
    let marginal = Points::new(N, 1, mix.sample(N, &mut Rng::new(2, 0)).rows().map(|r| r[1]).collect());
    let (wrong, _) = energy_vs(&marginal, &cond, 1);
    assert!(wrong > 4.0 * TOL, "the marginal should be far: {wrong:.5}");
    println!("energy to p(x₂ | x₁ = {value}): imputed {d:.5}, floor {floor:.5}, x₂-marginal {wrong:.5}");
}

/// The σ-space solvers hold the same constraint (the known part y + σ·z at
/// each σ of the grid, y at σ = 0): DPM-Solver++(2M) SDE and Euler-ancestral
/// with 100 steps impute x₂ from x₁ = 3.4 within TOL of the floor, as the PC
/// inpainter does with 300 (and the same x₂-marginal is 0.056 away).
#[test]
fn sigma_space_imputation_matches_the_exact_conditional() {
    scoregen::init();
    let mix = toy::named_mixture("gmm8").unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    let (known, value) = (0, 3.4);
    let cond = mix.condition(&[known], &[value]).unwrap();
    let constraint = observation(known, value);
    for sampler in [SamplerKind::Dpmpp2mSde, SamplerKind::EulerAncestral] {
        let pb = ProgressBar::hidden();
        let ctx = SampleContext {
            constraint: &constraint,
            dtype: DType::F64,
            ..SampleContext::new(&oracle, sde.as_ref(), &pb)
        };
        let spec = SamplerSpec { sampler, steps: 100, ..Default::default() };
        let out = spec.sample(&ctx, (N, 2), &mut Rng::new(5, 0)).unwrap();
        assert_eq!(out.nfe, 100);
        let x2 = free_coordinate(&out.x, known, value);
        let (d, floor) = energy_vs(&x2, &cond, 5);
        println!("{sampler}: energy to p(x₂ | x₁ = {value}) {d:.5}, floor {floor:.5}");
        assert!(d < floor + TOL, "{sampler}: imputed vs exact conditional: energy {d:.5}, floor {floor:.5}");
    }
}

/// Annealed Langevin inpainting (NCSN ladder, exact perturbed scores) imputes x₁
/// from x₂ = −3.4 on gmm8 within the same tolerance.
#[test]
fn annealed_langevin_imputation_matches_the_exact_conditional() {
    scoregen::init();
    let mix = toy::named_mixture("gmm8").unwrap();
    let ladder = NoiseLadder::geometric(0.01, 10.0, 30);
    let oracle = OracleScore::new(mix.clone(), Arc::new(ladder.sde()));
    let (known, value) = (1, -3.4);
    let mut rng = Rng::new(3, 0);
    let x0 = rng.randn((N, 2), DType::F64, &Device::Cpu).unwrap().affine(10.0, 0.0).unwrap();
    let opts = AnnealedOptions { steps_per_level: 30, eps: 5e-5, denoise: true, record_every: None };
    let inpaint = observation(known, value);
    let out =
        annealed_langevin_constrained(&oracle, &ladder, x0, &inpaint, &opts, &mut rng, &ProgressBar::hidden()).unwrap();
    let x1 = free_coordinate(&out.x, known, value);
    let (d, floor) = energy_vs(&x1, &mix.condition(&[known], &[value]).unwrap(), 4);
    println!("energy to p(x₁ | x₂ = {value}): imputed {d:.5}, floor {floor:.5}");
    assert!(d < floor + TOL, "imputed vs exact conditional: energy {d:.5}, floor {floor:.5}");
}

/// Fraction of `x` whose most probable component of `mix` is `y`.
fn fraction_in(x: &Tensor, mix: &GaussianMixture, y: usize) -> f64 {
    let pts = Points::from_tensor(x).unwrap();
    let k = mix.n_components();
    let r = mix.responsibilities(&pts);
    let hits = r.chunks_exact(k).filter(|row| (0..k).all(|j| row[j] <= row[y])).count();
    hits as f64 / pts.n as f64
}

fn sample_with(score: &dyn ScoreFn, sde: &dyn Sde, n: usize, seed: u64) -> Tensor {
    let opts = ReverseOptions { steps: 200, ..Default::default() };
    let corrector = LangevinCorrector::default();
    let pb = ProgressBar::hidden();
    sample_pc(
        score,
        sde,
        &ReverseDiffusion,
        &corrector,
        (n, 2),
        &opts,
        &mut Rng::new(seed, 0),
        DType::F64,
        &Device::Cpu,
        &pb,
    )
    .unwrap()
    .x
}

/// On gmm8 with its components as classes, the exact score plus w·∇ₓ log p_t(y | x)
/// (exact posterior) puts ≥ 99 % of samples in component y, at w = 1 (then it is
/// exactly the score of p_t(x | y)) and w = 4; unguided sampling puts about 1/8 there.
#[test]
fn classifier_guidance_with_exact_posterior_hits_the_class() {
    scoregen::init();
    let mix = toy::named_mixture("gmm8").unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    for (y, w) in [(0, 1.0), (3, 4.0)] {
        let guided = ClassifierGuided { score: &oracle, classifier: &oracle, labels: Labels::All(y), scale: w };
        let x = sample_with(&guided, sde.as_ref(), 1000, y as u64);
        let f = fraction_in(&x, &mix, y);
        assert!(f >= 0.99, "class {y}, scale {w}: {f}");
    }
    let plain = fraction_in(&sample_with(&oracle, sde.as_ref(), 1000, 0), &mix, 0);
    assert!(plain < 0.25, "unguided: {plain}");
}

/// Classifier-free guidance with exact conditional and unconditional scores,
/// (1 + w)·s(x, t, y) − w·s(x, t), puts ≥ 99 % of samples in component y at w = 0
/// and w = 2, on `unbalanced` where the guided class is the rare one (weight 0.2).
#[test]
fn classifier_free_guidance_with_exact_scores_hits_the_class() {
    scoregen::init();
    let mix = toy::named_mixture("unbalanced").unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    for w in [0.0, 2.0] {
        let guided = ClassifierFree { model: &oracle, labels: Labels::All(1), w };
        let f = fraction_in(&sample_with(&guided, sde.as_ref(), 1000, 5), &mix, 1);
        assert!(f >= 0.99, "w = {w}: {f}");
    }
}

/// Classifier guidance with the exact posterior on two overlapping Gaussians,
/// w = 0.7·N((−1, 0), S²I) + 0.3·N((1, 0), S²I), S = 0.8, guiding to class 1.
/// A point is classed 1 when its responsibility is largest, i.e. when
/// x₁ ≥ c = S²·ln(0.7/0.3)/2 (the log-odds are linear in x₁). At w = 1 the
/// guided score is exactly the score of p_t(x | y = 1), so the samples are
/// N((1, 0), S²I) and the fraction classed 1 is Φ((1 − c)/S) = 0.8189; at
/// w = 0 (which runs the same formula with scale 0) they are the mixture, and
/// the fraction is 0.3·Φ((1 − c)/S) + 0.7·Φ((−1 − c)/S) = 0.2849. Between and
/// beyond, the fraction rises strictly with w (same starting noise for every
/// w; measured 0.291, 0.540, 0.812, 0.9985, 1.0 at w = 0, 0.5, 1, 2, 4).
///
/// Sampler: EDM Heun, 40 steps on the Karras grid (79 NFE) from σ_max·z,
/// deterministic given z. Tolerance 0.015 on n = 20,000: four binomial
/// standard errors (√(0.82·0.18/20,000) = 0.0027) plus 0.004 for the sampler:
/// 160 steps move the fractions by ≤ 0.002, and starting at σ_max·z rather
/// than at mean μ_y shifts the samples by |μ_y|·S/σ_max ≈ 0.005, the fraction
/// by ≈ 0.002 (over four seeds the w = 1 fraction was 0.812 … 0.815). A
/// guidance scale off by a factor 1.5 moves the w = 1 fraction by ≥ 0.04.
#[test]
fn classifier_guidance_gives_the_exact_class_fraction_and_rises_with_w() {
    use scoregen::samplers::{karras_sigmas, sample_heun, Churn, Denoiser, ScoreDenoiser};
    use scoregen::sde::ladder::normal_cdf;
    scoregen::init();
    let s = 0.8;
    let mix = GaussianMixture::isotropic(vec![0.7, 0.3], vec![vec![-1.0, 0.0], vec![1.0, 0.0]], &[s, s]).unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    let c = s * s * (0.7f64 / 0.3).ln() / 2.0;
    let exact_w1 = normal_cdf((1.0 - c) / s);
    let exact_w0 = 0.3 * exact_w1 + 0.7 * normal_cdf((-1.0 - c) / s);
    let n = 20_000;
    let z = Rng::new(12, 0).randn((n, 2), DType::F64, &Device::Cpu).unwrap();
    let fraction = |w: f64| {
        let guided = ClassifierGuided { score: &oracle, classifier: &oracle, labels: Labels::All(1), scale: w };
        let den = ScoreDenoiser::new(&guided, sde.as_ref(), None);
        let (lo, hi) = den.sigma_range();
        let sigmas = karras_sigmas(40, lo, hi, 7.0);
        let x = z.affine(sigmas[0], 0.0).unwrap();
        let out =
            sample_heun(&den, x, &sigmas, &Churn::default(), &mut Rng::new(0, 0), &ProgressBar::hidden()).unwrap();
        fraction_in(&out.x, &mix, 1)
    };
    // w = 0 goes through s + 0·∇ log p_t(y | x) and gives the plain score, value for value
    let x = z.affine(2.0, 0.0).unwrap();
    let t = scoregen::sde::time_batch(0.3, &x).unwrap();
    let plain = oracle.score(&x, &t).unwrap().to_vec2::<f64>().unwrap();
    let w0 = ClassifierGuided { score: &oracle, classifier: &oracle, labels: Labels::All(1), scale: 0.0 };
    assert_eq!(w0.score(&x, &t).unwrap().to_vec2::<f64>().unwrap(), plain);
    let cond = oracle.class_score(&x, &t, 1).unwrap().to_vec2::<f64>().unwrap();
    let free = ClassifierFree { model: &oracle, labels: Labels::All(1), w: 0.0 };
    assert_eq!(free.score(&x, &t).unwrap().to_vec2::<f64>().unwrap(), cond);
    // one label per row: each row of the guided score is that of its own class
    // (the exact posterior's gradient and the exact class score, per row)
    let ys: Vec<usize> = (0..x.dim(0).unwrap()).map(|i| (i * 7 + i / 3) % 2).collect();
    for w in [0.0, 1.5] {
        let rows = ClassifierGuided { score: &oracle, classifier: &oracle, labels: Labels::Rows(ys.clone()), scale: w };
        let free = ClassifierFree { model: &oracle, labels: Labels::Rows(ys.clone()), w };
        let (gr, fr) = (
            rows.score(&x, &t).unwrap().to_vec2::<f64>().unwrap(),
            free.score(&x, &t).unwrap().to_vec2::<f64>().unwrap(),
        );
        for y in [0, 1] {
            let one = ClassifierGuided { score: &oracle, classifier: &oracle, labels: Labels::All(y), scale: w };
            let g1 = one.score(&x, &t).unwrap().to_vec2::<f64>().unwrap();
            let f1 = ClassifierFree { model: &oracle, labels: Labels::All(y), w }
                .score(&x, &t)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            for i in (0..ys.len()).filter(|&i| ys[i] == y) {
                assert_eq!(gr[i], g1[i], "classifier guidance, row {i}, class {y}, w = {w}");
                assert_eq!(fr[i], f1[i], "classifier-free, row {i}, class {y}, w = {w}");
            }
        }
    }
    let ws = [0.0, 0.5, 1.0, 2.0, 4.0];
    let fs: Vec<f64> = ws.iter().map(|&w| fraction(w)).collect();
    println!("class-1 fraction at w = {ws:?}: {fs:?}; exact at w = 0: {exact_w0:.4}, w = 1: {exact_w1:.4}");
    assert!((fs[0] - exact_w0).abs() < 0.015, "w = 0: {} vs exact {exact_w0}", fs[0]);
    assert!((fs[2] - exact_w1).abs() < 0.015, "w = 1: {} vs exact {exact_w1}", fs[2]);
    assert!(fs.windows(2).all(|p| p[1] > p[0]), "not rising with w: {fs:?} at {ws:?}");
}
