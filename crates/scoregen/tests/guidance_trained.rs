//! Guidance with trained parts on gmm8 (components = classes), judged by the
//! exact class of each sample: a class-conditional MLP trained with label
//! dropout (classifier-free guidance) and the project's classifier, noise-aware,
//! trained on VP-perturbed data (classifier guidance), each trained for a few seconds.

use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use scoregen::app::config::RunConfig;
use scoregen::app::run_dir::LoadedModel;
use scoregen::data::{toy, Points};
use scoregen::guidance::{ClassPosterior, ClassifierFree, ClassifierGuided, Labels};
use scoregen::nets::ClassifierSpec;
use scoregen::nets::ModelConditional;
use scoregen::oracle::{GaussianMixture, OracleScore};
use scoregen::rng::Rng;
use scoregen::samplers::{sample_pc, LangevinCorrector, ReverseDiffusion, ReverseOptions};
use scoregen::score::ScoreFn;
use scoregen::sde::{Sde, VpSde};
use scoregen::train::classifier::{self, ClassifierTraining, Labelled, NoiseAware};
use scoregen::train::TrainOptions;
use std::sync::Arc;

/// Fraction of `x` whose most probable component of `mix` is `y`.
fn fraction_in(x: &Tensor, mix: &GaussianMixture, y: usize) -> f64 {
    let pts = Points::from_tensor(x).unwrap();
    let k = mix.n_components();
    let r = mix.responsibilities(&pts);
    r.chunks_exact(k).filter(|row| (0..k).all(|j| row[j] <= row[y])).count() as f64 / pts.n as f64
}

fn sample_with(score: &dyn ScoreFn, sde: &dyn Sde, n: usize, seed: u64, dtype: DType) -> Tensor {
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
        dtype,
        &Device::Cpu,
        &pb,
    )
    .unwrap()
    .x
}

/// A time-MLP with model.classes = 8 and label dropout 0.2, trained 800 steps,
/// sampled with (1 + w)·s(x, t, y) − w·s(x, t) at w = 1: ≥ 90 % of samples land
/// in the requested component (the bar for class-conditional samples;
/// chance is 12.5 %), for two classes.
#[test]
fn classifier_free_guidance_of_a_trained_conditional_mlp_hits_the_class() {
    scoregen::init();
    let text = "name = \"cfg\"\n[data]\nsource = \"gmm8\"\nn_train = 4000\n[sde]\nkind = \"vp\"\n\
                [model]\nwidth = 64\ndepth = 3\nclasses = 8\n[training]\nsteps = 800\nbatch_size = 256\nlr = 3e-3\n\
                log_every = 100\ncheckpoint_every = 800\n";
    let cfg = RunConfig::parse(text, "test.toml", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    scoregen::app::commands::train::train(&cfg, dir.path(), &TrainOptions { quiet: true, ..Default::default() })
        .unwrap();
    let model = LoadedModel::from_run(dir.path(), true, &Device::Cpu).unwrap();
    assert_eq!(model.model.classes(), 8);
    let cond = ModelConditional { model: &model.model, sde: cfg.sde() };
    let mix = toy::named_mixture("gmm8").unwrap();
    for y in [2, 5] {
        let guided = ClassifierFree { model: &cond, labels: Labels::All(y), w: 1.0 };
        let f = fraction_in(&sample_with(&guided, cfg.sde().as_ref(), 500, y as u64, DType::F32), &mix, y);
        println!("classifier-free, class {y}, w = 1: {f:.3} in the class");
        assert!(f >= 0.9, "class {y}: {f}");
    }
    // One label per row asks the net with a label tensor [N]: row i of the
    // per-row score is row i of the score with every row given yᵢ
    let x = Rng::new(3, 0).randn((6, 2), DType::F32, &Device::Cpu).unwrap();
    let t = scoregen::sde::time_batch(0.4, &x).unwrap();
    let ys = vec![0, 7, 3, 3, 0, 5];
    let rows = ClassifierFree { model: &cond, labels: Labels::Rows(ys.clone()), w: 1.0 };
    let per_row = rows.score(&x, &t).unwrap().to_vec2::<f32>().unwrap();
    for (i, &y) in ys.iter().enumerate() {
        let one = ClassifierFree { model: &cond, labels: Labels::All(y), w: 1.0 };
        let whole = one.score(&x, &t).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in per_row[i].iter().zip(&whole[i]) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "row {i} (class {y}): {a} vs {b}");
        }
    }
}

/// A noise-aware classifier trained 600 steps on VP-perturbed gmm8 data is close
/// to the exact posterior p_t(y | x) (excess cross-entropy over the exact one
/// < 0.1 nats at t = 0.3, where the classes still overlap), knows nothing at
/// t = T (accuracy near 1/8), and guides the exact unconditional score to the
/// class: ≥ 95 % of samples in the requested component at scale 2.
#[test]
fn noise_aware_classifier_matches_the_exact_posterior_and_guides() {
    scoregen::init();
    let mix = toy::named_mixture("gmm8").unwrap();
    let sde: Arc<dyn Sde> = Arc::new(VpSde::default());
    let (x, labels) = mix.sample_labeled(4000, &mut Rng::new(1, 0));
    let (xt, yt) = mix.sample_labeled(500, &mut Rng::new(6, 0));
    let spec = ClassifierSpec {
        classes: 8,
        dim: 2,
        image_shape: None,
        width: 64,
        noise_aware: true,
        embed_dim: 16,
        embed_scale: 4.0,
        seed: 0,
        blocks: 1,
    };
    let opts = ClassifierTraining {
        steps: 600,
        batch_size: 256,
        lr: 3e-3,
        seed: 2,
        noise: Some(NoiseAware { sde: sde.clone(), t_eps: 1e-3 }),
        quiet: true,
        device: candle_core::Device::Cpu,
    };
    let train = Labelled::new(x, labels).unwrap();
    let trained = classifier::train_classifier(&train, &Labelled::new(xt, yt).unwrap(), &spec, &opts).unwrap();
    let clf = trained.classifier;
    // excess cross-entropy against the exact posterior on fresh perturbed points
    let oracle = OracleScore::new(mix.clone(), sde.clone());
    let (x0, y0) = mix.sample_labeled(2000, &mut Rng::new(3, 0));
    let (m, s) = sde.marginal(0.3);
    let z = Rng::new(4, 0).randn((2000, 2), DType::F64, &Device::Cpu).unwrap();
    let xt =
        (x0.to_tensor(DType::F64, &Device::Cpu).unwrap().affine(m, 0.0).unwrap() + z.affine(s, 0.0).unwrap()).unwrap();
    let t = Tensor::full(0.3f64, 2000, &Device::Cpu).unwrap();
    let nll = |p: &dyn ClassPosterior| -> f64 {
        let lp = p.log_posteriors(&xt, &t).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        -lp.iter().zip(&y0).map(|(row, &y)| row[y as usize]).sum::<f64>() / 2000.0
    };
    let (trained, exact) = (nll(&clf), nll(&oracle));
    println!("cross-entropy at t = 0.3: trained {trained:.4}, exact {exact:.4} nats");
    assert!(trained - exact < 0.1, "trained {trained} vs exact {exact}");
    let noise = Points::from_tensor(&Rng::new(5, 0).randn((2000, 2), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let at_t = classifier::accuracy(&clf, &Labelled::new(noise, y0).unwrap(), Some(1.0)).unwrap();
    assert!(at_t < 0.25, "accuracy on pure noise at t = 1: {at_t}");
    let guided = ClassifierGuided { score: &oracle, classifier: &clf, labels: Labels::All(6), scale: 2.0 };
    let f = fraction_in(&sample_with(&guided, sde.as_ref(), 500, 7, DType::F64), &mix, 6);
    println!("classifier guidance with the trained classifier, class 6: {f:.3} in the class");
    assert!(f >= 0.95, "{f}");
}

/// A class-conditional model needs labeled data: `moons` has none, and labels
/// beyond model.classes are caught, both before anything is written.
#[test]
fn class_conditional_training_rejects_unlabeled_data_by_field() {
    scoregen::init();
    let cfg = |source: &str, k: usize| {
        let text = format!("name = \"c\"\n[data]\nsource = \"{source}\"\nn_train = 100\n[model]\nclasses = {k}\n");
        RunConfig::parse(&text, "c.toml", &[]).unwrap()
    };
    let e = scoregen::app::factory::trainer(&cfg("moons", 2)).err().unwrap().to_string();
    assert!(e.contains("model.classes") && e.contains("no class labels"), "{e}");
    let e = scoregen::app::factory::trainer(&cfg("gmm8", 4)).err().unwrap().to_string();
    assert!(e.contains("model.classes") && e.contains("label"), "{e}");
}
