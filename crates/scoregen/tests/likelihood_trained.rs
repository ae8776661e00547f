//! On a briefly trained model, the probability-flow likelihood of held-out
//! gmm8 points is close to the exact log-density, and every sampler of
//! `sample_run_with` runs on it.

use scoregen::app::commands::likelihood::likelihood_of_run;
use scoregen::app::commands::likelihood::LikelihoodRequest;
use scoregen::app::commands::sample::SampleRequest;
use scoregen::app::config::RunConfig;
use scoregen::likelihood::{ProbeNoise, TraceEstimator};
use scoregen::samplers::{SamplerKind, SamplerSpec};
use scoregen::train::TrainOptions;

fn small(kind: &str, steps: usize) -> RunConfig {
    let text = format!(
        "name = \"t\"\n[data]\nsource = \"gmm8\"\nn_train = 4000\n[sde]\nkind = \"{kind}\"\nsigma_max = 10.0\n\
         [model]\nwidth = 64\ndepth = 3\n[training]\nsteps = {steps}\nbatch_size = 256\nlr = 3e-3\nlog_every = 50\ncheckpoint_every = 400\n\
         [sampling]\nsteps = 200\nn = 500\n"
    );
    RunConfig::parse(&text, "test.toml", &[]).unwrap()
}

/// 2000 training steps (width 64, ≈ 8 s): the mean model log-likelihood of 200 held-out
/// points is within 0.5 nats of the exact mean log-density (measured gap in
/// the test output), and Hutchinson agrees with the exact trace within 4
/// standard errors of the per-point differences.
#[test]
fn trained_model_likelihood_is_close_to_the_oracle() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = small("vp", 2000);
    scoregen::app::commands::train::train(&cfg, dir.path(), &TrainOptions { quiet: true, ..Default::default() })
        .unwrap();
    let mut req = LikelihoodRequest {
        data: "gmm8".into(),
        n: 200,
        seed: 1,
        trace: Some(TraceEstimator::Exact),
        rtol: 1e-5,
        atol: 1e-5,
        dequantize: None,
        use_ema: true,
        quiet: true,
        device: candle_core::Device::Cpu,
    };
    let exact = likelihood_of_run(dir.path(), &req).unwrap();
    let gap = exact.gap_nats.unwrap();
    println!(
        "trained vp: model {:.4} ± {:.4} nats, oracle {:.4}, gap {gap:+.4}, mean |gap| {:.4}, NFE {}, {:.2} s",
        exact.mean_nats,
        exact.stderr_nats,
        exact.oracle_mean_nats.unwrap(),
        exact.mean_abs_gap_nats.unwrap(),
        exact.nfe,
        exact.seconds
    );
    assert!(gap.abs() < 0.5, "gap {gap}");
    req.trace = Some(TraceEstimator::Hutchinson { probes: 2, noise: ProbeNoise::Rademacher });
    let hutch = likelihood_of_run(dir.path(), &req).unwrap();
    let diffs: Vec<f64> = hutch.nats.iter().zip(&exact.nats).map(|(a, b)| a - b).collect();
    let m = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let sd = (diffs.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (diffs.len() - 1) as f64).sqrt();
    let se = sd / (diffs.len() as f64).sqrt();
    println!("hutchinson − exact: {m:+.4} ± {se:.4}");
    assert!(m.abs() < 4.0 * se + 1e-3, "{m} ± {se}");

    for kind in [SamplerKind::Ancestral, SamplerKind::Pc, SamplerKind::Ode, SamplerKind::Ddpm, SamplerKind::Dpmpp2m] {
        let out = dir.path().join(format!("{kind:?}.npy"));
        let o = scoregen::app::commands::sample::sample_run_with(
            dir.path(),
            &SampleRequest::new(300, 100, 2, out.clone()),
            Some(SamplerSpec { sampler: kind, ..Default::default() }),
        )
        .unwrap();
        let x = scoregen::data::npy::read_points(&out).unwrap();
        let stats = scoregen::metrics::mode_stats(&x, &scoregen::data::toy::named_mixture("gmm8").unwrap());
        println!("{kind:?}: NFE {}, modes {}, off {:.3}", o.nfe, stats.covered, stats.off_manifold);
        assert_eq!(stats.covered, 8, "{kind:?}: {stats:?}");
    }
}
