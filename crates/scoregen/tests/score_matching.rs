//! Score matching without noise: energy models, implicit and sliced score
//! matching, their gradients, their identities, and training them.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use scoregen::data::Points;
use scoregen::nets::{seeded_var_builder, Conditioning, EnergyMlp, EnergyScore, Mlp, MlpConfig, Network};
use scoregen::objectives::{Implicit, Projection, Sliced};
use scoregen::oracle::GaussianMixture;
use scoregen::rng::Rng;
use scoregen::score::ScoreFn;

fn tiny() -> MlpConfig {
    MlpConfig { width: 8, depth: 2, embed_dim: 4, embed_scale: 1.0 }
}

/// f64 models for finite differences.
fn energy_f64(vm: &VarMap) -> EnergyMlp {
    EnergyMlp {
        mlp: Mlp::new(seeded_var_builder(vm, 1, DType::F64, &Device::Cpu), 2, 1, &tiny(), Conditioning::None, 1)
            .unwrap(),
    }
}
fn score_net_f64(vm: &VarMap) -> Mlp {
    Mlp::new(seeded_var_builder(vm, 2, DType::F64, &Device::Cpu), 2, 2, &tiny(), Conditioning::None, 2).unwrap()
}

struct Direct<'a>(&'a Mlp);
impl ScoreFn for Direct<'_> {
    fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.0.forward(x, t)
    }
}

fn data(n: usize, seed: u64) -> Tensor {
    let mix = GaussianMixture::isotropic(vec![0.5, 0.5], vec![vec![-1.0, 0.5], vec![1.0, -0.5]], &[0.6, 0.6]).unwrap();
    mix.sample(n, &mut Rng::new(seed, 0)).to_tensor(DType::F64, &Device::Cpu).unwrap()
}

/// −∇ₓ f by autodiff equals central differences of f (f64, h = 1e-6).
#[test]
fn energy_input_gradient_matches_finite_differences() {
    scoregen::init();
    let vm = VarMap::new();
    let e = energy_f64(&vm);
    let x = data(5, 0);
    let t = Tensor::zeros(5, DType::F64, &Device::Cpu).unwrap();
    let s = EnergyScore(&e).score(&x, &t).unwrap().to_vec2::<f64>().unwrap();
    let xs = x.to_vec2::<f64>().unwrap();
    let h = 1e-6;
    for i in 0..5 {
        for j in 0..2 {
            let f_at = |d: f64| {
                let mut p = xs[i].clone();
                p[j] += d;
                let xt = Tensor::new(&[[p[0], p[1]]], &Device::Cpu).unwrap();
                e.energy(&xt, &Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap()).unwrap().to_vec1::<f64>().unwrap()
                    [0]
            };
            let fd = -(f_at(h) - f_at(-h)) / (2.0 * h);
            assert!((fd - s[i][j]).abs() < 1e-7 * fd.abs().max(1.0), "({i},{j}): fd {fd} vs {}", s[i][j]);
        }
    }
}

/// ∂L/∂θ by autodiff against central differences of L for a few parameters.
fn check_theta_gradient(vm: &VarMap, loss: &dyn Fn() -> Tensor, label: &str) {
    let l = loss();
    let grads = scoregen::autodiff::backward(&l).unwrap();
    let mut checked = 0;
    for (name, var) in scoregen::nets::named_vars(vm) {
        // a parameter the loss does not depend on (an energy's output bias
        // does not change ∇ₓf) gets no gradient: it must then be zero by FD too
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            None => vec![0.0; var.elem_count()],
        };
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for k in [0, base.len() / 2, base.len() - 1] {
            let h = 1e-5;
            let at = |d: f64| {
                let mut v = base.clone();
                v[k] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            // error O(h²·|L'''|) plus rounding O(ε_f64·|L|/h) ≈ 1e-11
            assert!((fd - g[k]).abs() < 1e-6 * fd.abs().max(1.0), "{label} {name}[{k}]: fd {fd} vs autodiff {}", g[k]);
            checked += 1;
        }
    }
    assert!(checked >= 9, "{label}: too few parameters checked");
}

#[test]
fn implicit_and_sliced_theta_gradients_match_finite_differences() {
    scoregen::init();
    let x = data(16, 1);
    let implicit = Implicit { max_dim: 16 };
    let sliced = Sliced { projections: 2, projection: Projection::Gaussian, variance_reduced: false };
    let vs: Vec<Tensor> = {
        let mut rng = Rng::new(5, 0);
        (0..2).map(|_| sliced.draw(&x, &mut rng).unwrap()).collect()
    };
    for vr in [false, true] {
        let sl = Sliced { variance_reduced: vr, ..sliced };
        let vm = VarMap::new();
        let net = score_net_f64(&vm);
        check_theta_gradient(
            &vm,
            &|| sl.per_example(&Direct(&net), &x, &vs).unwrap().mean_all().unwrap(),
            "sliced score net",
        );
        let vm = VarMap::new();
        let e = energy_f64(&vm);
        check_theta_gradient(
            &vm,
            &|| sl.per_example(&EnergyScore(&e), &x, &vs).unwrap().mean_all().unwrap(),
            "sliced energy",
        );
    }
    let vm = VarMap::new();
    let net = score_net_f64(&vm);
    check_theta_gradient(
        &vm,
        &|| implicit.per_example(&Direct(&net), &x).unwrap().mean_all().unwrap(),
        "implicit score net",
    );
    let vm = VarMap::new();
    let e = energy_f64(&vm);
    check_theta_gradient(
        &vm,
        &|| implicit.per_example(&EnergyScore(&e), &x).unwrap().mean_all().unwrap(),
        "implicit energy",
    );
}

/// s_θ(x) = −A(x − b): a Gaussian model family, differentiable in x.
struct Linear {
    a: Tensor,
    b: Tensor,
}
impl ScoreFn for Linear {
    fn score(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        x.broadcast_sub(&self.b)?.matmul(&self.a.t()?)?.neg()
    }
}

/// Hyvärinen's identity: J(θ) = ½E‖s_θ − ∇log p‖² − ½E‖∇log p‖², so J − ½·Fisher is the
/// same constant −½ tr Σ⁻¹ for every θ (data N(μ, Σ)); checked within 4 Monte-Carlo
/// standard errors. And E_v[sliced] = implicit: with 400 projections the
/// sliced estimate on the same points is within 4 standard errors of it.
#[test]
fn implicit_minus_half_fisher_is_constant_and_sliced_matches_implicit() {
    scoregen::init();
    let mu = [0.5, -1.0];
    let mix = GaussianMixture::new(vec![1.0], vec![mu.to_vec()], vec![vec![vec![1.0, 0.3], vec![0.3, 0.5]]]).unwrap();
    let p = mix.precision(0).clone();
    let want = -0.5 * (p[(0, 0)] + p[(1, 1)]);
    let n = 20_000;
    let pts = mix.sample(n, &mut Rng::new(8, 0));
    let x = pts.to_tensor(DType::F64, &Device::Cpu).unwrap();
    let exact = mix.score(&pts);
    let dev = Device::Cpu;
    for (k, (a, b)) in [
        ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
        ([[2.0, 0.5], [0.1, 1.0]], [1.0, 1.0]),
        ([[0.3, -0.2], [0.4, 3.0]], [-2.0, 0.5]),
    ]
    .iter()
    .enumerate()
    {
        let model = Linear { a: Tensor::new(a, &dev).unwrap(), b: Tensor::new(b, &dev).unwrap() };
        let j = Implicit { max_dim: 16 }.per_example(&model, &x).unwrap().to_vec1::<f64>().unwrap();
        let s = Points::from_tensor(&model.score_at(&x, 0.0).unwrap()).unwrap();
        let diffs: Vec<f64> = (0..n)
            .map(|i| {
                let f: f64 = s.row(i).iter().zip(exact.row(i)).map(|(u, v)| (u - v).powi(2)).sum();
                j[i] - 0.5 * f
            })
            .collect();
        let m = diffs.iter().sum::<f64>() / n as f64;
        let se = (diffs.iter().map(|d| (d - m).powi(2)).sum::<f64>() / n as f64 / n as f64).sqrt();
        assert!((m - want).abs() < 4.0 * se, "θ #{k}: J − F/2 = {m} vs {want} (se {se})");

        let sliced = Sliced { projections: 400, projection: Projection::Rademacher, variance_reduced: false };
        let small = x.narrow(0, 0, 200).unwrap();
        let vs: Vec<Tensor> = (0..400).map(|q| sliced.draw(&small, &mut Rng::new(100 + q, 0)).unwrap()).collect();
        let sl = sliced.per_example(&model, &small, &vs).unwrap().to_vec1::<f64>().unwrap();
        let im = &j[..200];
        let d: Vec<f64> = sl.iter().zip(im).map(|(a, b)| a - b).collect();
        let md = d.iter().sum::<f64>() / 200.0;
        let sd = (d.iter().map(|v| (v - md).powi(2)).sum::<f64>() / 200.0 / 200.0).sqrt();
        assert!(md.abs() < 4.0 * sd + 1e-12, "θ #{k}: sliced − implicit = {md} (se {sd})");
    }
}

#[test]
fn implicit_refuses_high_dimension_and_points_to_sliced() {
    let x = Tensor::zeros((4, 20), DType::F32, &Device::Cpu).unwrap();
    let vm = VarMap::new();
    let net = Mlp::build(&vm, 20, 20, &tiny(), Conditioning::None, 0, &Device::Cpu).unwrap();
    let err = Implicit { max_dim: 16 }.per_example(&Direct(&net), &x).unwrap_err().to_string();
    assert!(err.contains("D = 20") && err.contains("sliced"), "{err}");
}

/// Fisher divergence E_p‖s_θ(x) − ∇log p(x)‖² of a model's score at t = 0 on exact samples.
fn fisher(score: &dyn ScoreFn, mix: &GaussianMixture, n: usize) -> f64 {
    let x = mix.sample(n, &mut Rng::new(77, 0));
    let s =
        Points::from_tensor(&score.score_at(&x.to_tensor(DType::F32, &Device::Cpu).unwrap(), 0.0).unwrap()).unwrap();
    let exact = mix.score(&x);
    s.data.iter().zip(&exact.data).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n as f64
}

/// Every noise-free objective trains both a score network and an energy model
/// on a two-mode mixture (means (±1.5, 0), std 0.7): the Fisher divergence
/// against the exact score falls below 0.8, under a quarter of a zero score's
/// E‖∇log p‖² ≈ 3.7 for this mixture, and at most a third of the initial
/// model's; Langevin from the trained model then puts 30–70 % of the samples
/// in each mode (true: 50 %).
#[test]
fn every_objective_trains_score_nets_and_energies() {
    use scoregen::app::config::RunConfig;
    use scoregen::samplers::{langevin, LangevinOptions, Start};
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("two.toml");
    std::fs::write(&spec, "[[component]]\nweight = 1\nmean = [-1.5, 0.0]\nstd = 0.7\n[[component]]\nweight = 1\nmean = [1.5, 0.0]\nstd = 0.7\n").unwrap();
    let mix = scoregen::data::spec::read_mixture(&spec).unwrap();
    let zero = mix.score(&mix.sample(4000, &mut Rng::new(77, 0))).data.iter().map(|v| v * v).sum::<f64>() / 4000.0;
    assert!((zero - 3.7).abs() < 0.2, "E‖∇log p‖² = {zero}");
    for model in ["mlp", "energy-mlp"] {
        for (objective, extra) in
            [("implicit", ""), ("sliced", "projections = 2\n"), ("sliced-vr", ""), ("dsm", "sigma = 0.1\n")]
        {
            let text = format!(
                "[data]\nsource = \"{}\"\nn_train = 4000\n[model]\nkind = \"{model}\"\noutput = \"score\"\nwidth = 32\ndepth = 2\n\
                 [objective]\nkind = \"{objective}\"\n{extra}[training]\nsteps = 500\nbatch_size = 128\nlr = 5e-3\nwarmup = 20\n\
                 [sampling]\nsampler = \"langevin\"\n",
                spec.display()
            );
            let cfg = RunConfig::parse(&text, "test", &[]).unwrap();
            let mut t = scoregen::app::factory::trainer(&cfg).unwrap();
            let before = fisher(t.model.score(cfg.sde()).as_ref(), &mix, 2000);
            for _ in 0..500 {
                t.train_step("none").unwrap();
            }
            let score = t.model.score(cfg.sde());
            let after = fisher(score.as_ref(), &mix, 2000);
            let label = format!("{model} + {objective}");
            assert!(after < 0.8 && after < before / 3.0, "{label}: Fisher {before:.3} → {after:.3}");
            let mut rng = Rng::new(9, 0);
            let x0 =
                Start::Uniform { lo: -4.0, hi: 4.0 }.sample((1000, 2), &mut rng, DType::F32, &Device::Cpu).unwrap();
            let opts = LangevinOptions { steps: 400, eps: 0.01, t: 0.0, record_every: None };
            let x = langevin(score.as_ref(), x0, &opts, &mut rng, &indicatif::ProgressBar::hidden()).unwrap().x;
            let w = scoregen::metrics::mode_stats(&Points::from_tensor(&x).unwrap(), &mix).weights;
            assert!(w.iter().all(|&w| (0.3..=0.7).contains(&w)), "{label}: Langevin weights {w:?}");
            eprintln!("{label}: Fisher {before:.3} → {after:.3}, Langevin weights {w:?}");
        }
    }
}
