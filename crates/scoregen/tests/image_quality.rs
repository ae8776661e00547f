//! Sample quality that can fail: the digits U-Net with EDM's preconditioning,
//! trained for a few hundred steps (about 20 s of CPU), must give samples the
//! project's classifier scores close to real digits, and the same assertion
//! must reject an untrained and a barely trained model. Speed stays in
//! benchmarks; this pins the recipe (preconditioning, weighting, log-normal
//! times, cosine decay) and the evaluation (`training.eval_every`) together.
//!
//! The classifier is a committed fixture, `tests/fixtures/digits-classifier/`:
//! `scoregen train-classifier --data digits` (seed 0, 1,500 steps, held-out
//! accuracy 0.994), so the test spends its time on the score model.

use scoregen::app::commands::train::ImageEvaluator;
use scoregen::app::config::RunConfig;
use scoregen::app::factory;
use scoregen::train::{Evaluator, Trainer};
use std::path::Path;

const STEPS: usize = 600;

fn config(steps: usize) -> RunConfig {
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/digits-vp.toml");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/digits-classifier");
    let sets = [
        format!("training.steps={steps}"),
        "training.lr=2e-3".into(),
        "training.lr_schedule=\"cosine\"".into(),
        "model.preconditioning=\"edm\"".into(),
        "objective.weighting=\"edm\"".into(),
        "objective.t_sampling=\"log-normal\"".into(),
        "training.eval_every=1000".into(),
        format!("training.eval_classifier=\"{}\"", fixture.display()),
    ];
    RunConfig::load(&preset, &sets).unwrap()
}

/// (FD, FD floor, mean confidence, class entropy) of 256 samples after `steps` steps.
fn quality(steps: usize) -> (f64, f64, f64, f64) {
    let cfg = config(steps.max(1));
    let mut trainer: Trainer = factory::trainer(&cfg).unwrap();
    for _ in 0..steps {
        trainer.train_step("none").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut eval = ImageEvaluator::new(&cfg, dir.path(), true, &trainer.device).unwrap();
    let m = eval.evaluate(&trainer).unwrap();
    let get = |k: &str| m[k].as_f64().unwrap();
    (get("fd"), get("fd_floor"), get("confidence"), get("entropy"))
}

/// What "recognizable digits" means here. Measured (this recipe, 256 samples,
/// DPM-Solver++(2M) with 25 steps, held-out floor 0.643): after 600 steps FD
/// 3.01 (4.7× the floor), confidence 0.853, entropy 2.25; after 1,500 steps
/// FD 2.1 and confidence 0.89 (real digits: 0.99). The untrained model gives FD
/// 13.2 (20.6×) and confidence 0.65, and 50 steps FD 9.1 (14.2×) and 0.71: both
/// fail the FD and the confidence bound. The bounds leave 70% room above the
/// 600-step FD and 0.10 below its confidence, for seed and platform differences.
fn recognizable(fd: f64, floor: f64, confidence: f64, entropy: f64) -> bool {
    fd < 8.0 * floor && confidence > 0.75 && entropy > 0.9 * 10f64.ln()
}

#[test]
fn a_short_digits_run_gives_recognizable_digits_and_an_untrained_one_does_not() {
    let (fd, floor, conf, ent) = quality(STEPS);
    println!("{STEPS} steps: FD {fd:.3} (floor {floor:.3}), confidence {conf:.3}, entropy {ent:.3}");
    assert!(
        recognizable(fd, floor, conf, ent),
        "trained: FD {fd:.3} / floor {floor:.3}, confidence {conf:.3}, entropy {ent:.3}"
    );
    for steps in [0, 50] {
        let (fd, floor, conf, ent) = quality(steps);
        println!("{steps} steps: FD {fd:.3} (floor {floor:.3}), confidence {conf:.3}, entropy {ent:.3}");
        assert!(!recognizable(fd, floor, conf, ent), "{steps} steps passed: FD {fd:.3}, confidence {conf:.3}");
    }
}
