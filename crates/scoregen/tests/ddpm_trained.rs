//! A DDPM ε-model (`model.output = "epsilon"`, trained by DSM with λ = s(t)²,
//! which is then ½‖ε_θ − ε‖², the "simple" loss) is a score model like any
//! other: sampled by the score-based Euler–Maruyama sampler and by DDPM
//! ancestral sampling, it gives the same quality within sampling noise.

use scoregen::app::commands::sample::SampleRequest;
use scoregen::app::config::RunConfig;
use scoregen::data::npy;
use scoregen::metrics;
use scoregen::rng::Rng;
use scoregen::samplers::{SamplerKind, SamplerSpec};
use scoregen::train::TrainOptions;

/// 1500 steps, width 64, on gmm8 with the VP SDE (≈ 5 s). Both samplers: all 8
/// modes; off-manifold fractions below 0.2 (a briefly trained model blurs the
/// modes: ≈ 0.09 measured for both) and within 0.04 of each other (binomial sd
/// ≈ 0.009 each at n = 1000, so ≈ 3 sd of the difference); energy distances within 0.02 of each other (at
/// n = 1000 one estimate has sd ≈ 0.005 (exact vs exact), so the difference of
/// two has sd ≈ 0.007; 0.02 is ≈ 3 sd) and mode-weight L1 within 0.1
/// (each L1 at n = 1000 is ≈ 0.07 ± 0.03).
#[test]
fn eps_model_samples_the_same_through_em_and_ddpm() {
    scoregen::init();
    let text = "name = \"eps\"\n[data]\nsource = \"gmm8\"\nn_train = 4000\n[sde]\nkind = \"vp\"\n\
                [model]\noutput = \"epsilon\"\nwidth = 64\ndepth = 3\n[training]\nsteps = 1500\nbatch_size = 256\nlr = 3e-3\n\
                log_every = 100\ncheckpoint_every = 1500\n[sampling]\nn = 1000\n";
    let cfg = RunConfig::parse(text, "eps.toml", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    scoregen::app::commands::train::train(&cfg, dir.path(), &TrainOptions { quiet: true, ..Default::default() })
        .unwrap();
    let mix = scoregen::app::run_dir::oracle_of(&cfg).unwrap().unwrap();
    let mut reports = vec![];
    for (kind, steps) in [(SamplerKind::Em, 500), (SamplerKind::Ddpm, 200), (SamplerKind::Ddim, 50)] {
        let req = SampleRequest::new(1000, steps, 5, dir.path().join(format!("{kind}.npy")));
        let out = scoregen::app::commands::sample::sample_run_with(
            dir.path(),
            &req,
            Some(SamplerSpec { sampler: kind, ..Default::default() }),
        )
        .unwrap();
        let pts = npy::read_points(&out.npy).unwrap();
        let r = metrics::against_mixture(&pts, &mix, &mut Rng::new(9, 0));
        println!(
            "{kind} ({} NFE): energy {:.4} (floor {:.4}), weight L1 {:.3}, off-manifold {:.4}, modes {}",
            out.nfe, r.distances.energy, r.floor.energy, r.modes.weight_l1, r.modes.off_manifold, r.modes.covered
        );
        assert_eq!(r.modes.covered, 8, "{kind}: {r:?}");
        reports.push(r);
    }
    let (em, ddpm) = (&reports[0], &reports[1]);
    assert!((em.distances.energy - ddpm.distances.energy).abs() < 0.02, "{em:?}\n{ddpm:?}");
    assert!((em.modes.weight_l1 - ddpm.modes.weight_l1).abs() < 0.1, "{em:?}\n{ddpm:?}");
    assert!((em.modes.off_manifold - ddpm.modes.off_manifold).abs() < 0.04, "{em:?}\n{ddpm:?}");
    for r in &reports {
        assert!(r.modes.off_manifold < 0.2, "{r:?}");
    }
}
