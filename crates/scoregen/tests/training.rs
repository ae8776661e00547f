//! Training end to end: the loss falls and the sampled points cover all 8
//! modes of gmm8 for each SDE; checkpoints round-trip and resume is exact.

use scoregen::app::commands::sample::SampleRequest;
use scoregen::app::config::RunConfig;
use scoregen::data::npy;
use scoregen::metrics;
use scoregen::train::{self, checkpoint, TrainOptions};

/// A small, fast config (≈ 1 s of training per 200 steps here).
fn small(kind: &str, steps: usize) -> RunConfig {
    let text = format!(
        "name = \"t\"\n[data]\nsource = \"gmm8\"\nn_train = 4000\n[sde]\nkind = \"{kind}\"\nsigma_max = 10.0\n\
         [model]\nwidth = 64\ndepth = 3\n[training]\nsteps = {steps}\nbatch_size = 256\nlr = 3e-3\nlog_every = 25\ncheckpoint_every = 100\n\
         [sampling]\nsteps = 300\nn = 1000\n"
    );
    RunConfig::parse(&text, "test.toml", &[]).unwrap()
}

/// Per-mode counts for 1000 samples: each mode expects 125, binomial sd ≈ 10.5;
/// a trained model is allowed 60–190 per mode (no mode lost or doubled).
#[test]
fn training_each_sde_lowers_the_loss_and_covers_all_modes() {
    scoregen::init();
    for kind in ["ve", "vp", "subvp"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small(kind, 1500);
        scoregen::app::commands::train::train(&cfg, dir.path(), &TrainOptions { quiet: true, ..Default::default() })
            .unwrap();
        let log = train::read_log(&dir.path().join("metrics.jsonl")).unwrap();
        let first = log.first().unwrap().loss;
        let last = log.iter().rev().take(4).map(|l| l.loss).sum::<f64>() / 4.0;
        assert!(last < 0.8 * first, "{kind}: loss {first} → {last}");
        let req = SampleRequest::new(1000, 300, 1, dir.path().join("s.npy"));
        scoregen::app::commands::sample::sample_run(dir.path(), &req).unwrap();
        let x = npy::read_points(&dir.path().join("s.npy")).unwrap();
        let stats = metrics::mode_stats(&x, &scoregen::data::toy::named_mixture("gmm8").unwrap());
        let counts: Vec<usize> = stats.weights.iter().map(|w| (w * 1000.0).round() as usize).collect();
        assert!(counts.iter().all(|&c| (60..=190).contains(&c)), "{kind}: per-mode counts {counts:?}");
        // a small model trained briefly leaves a few stragglers between modes
        assert!(stats.off_manifold < 0.15, "{kind}: {stats:?}");
        assert!(dir.path().join("s.png").exists());
    }
}

/// Saving then loading a checkpoint gives back every tensor bit for bit.
#[test]
fn checkpoint_round_trip_is_exact() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = small("vp", 20);
    let mut t = scoregen::app::factory::trainer(&cfg).unwrap();
    for _ in 0..20 {
        t.train_step("none").unwrap();
    }
    let ck = t.checkpoint().unwrap();
    let path = checkpoint::save(dir.path(), &ck, 2).unwrap();
    let back = checkpoint::load(&path).unwrap();
    assert_eq!(back.state, ck.state);
    for (map_a, map_b) in [(&ck.model, &back.model), (&ck.ema, &back.ema), (&ck.optimizer, &back.optimizer)] {
        assert_eq!(map_a.len(), map_b.len());
        for (k, a) in map_a {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = map_b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{k}");
        }
    }
}

/// Stopping at step 60 and resuming to 120 gives the same weights, bit for
/// bit, as an uninterrupted run: data order, noise, Adam, EMA and the step
/// counter are all restored.
#[test]
fn resume_continues_exactly() {
    scoregen::init();
    let cfg = small("ve", 120);
    let straight = tempfile::tempdir().unwrap();
    let o = scoregen::app::commands::train::train(
        &cfg,
        straight.path(),
        &TrainOptions { quiet: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(o.step, 120);
    let split = tempfile::tempdir().unwrap();
    let o1 = scoregen::app::commands::train::train(
        &cfg,
        split.path(),
        &TrainOptions { quiet: true, stop_after: Some(60), ..Default::default() },
    )
    .unwrap();
    assert_eq!(o1.step, 60);
    let o2 = scoregen::app::commands::train::train(
        &cfg,
        split.path(),
        &TrainOptions { quiet: true, resume: true, ..Default::default() },
    )
    .unwrap();
    assert_eq!(o2.step, 120);
    let a = checkpoint::load_latest(&straight.path().join("checkpoints")).unwrap();
    let b = checkpoint::load_latest(&split.path().join("checkpoints")).unwrap();
    assert_eq!(a.state, b.state);
    for (what, ma, mb) in
        [("model", &a.model, &b.model), ("ema", &a.ema, &b.ema), ("optimizer", &a.optimizer, &b.optimizer)]
    {
        for (k, ta) in ma {
            let (va, vb) = (
                ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                mb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{what} {k}");
        }
    }
    // the log has every logged step once (plus the line flushed at the stop), none duplicated by the resume
    let steps: Vec<usize> =
        train::read_log(&split.path().join("metrics.jsonl")).unwrap().iter().map(|l| l.step).collect();
    assert_eq!(steps, vec![25, 50, 60, 75, 100, 120]);
    // a different config refuses to resume, naming the mismatch
    let mut other = cfg.clone();
    other.training.lr = 1e-4;
    let err = scoregen::app::commands::train::train(
        &other,
        split.path(),
        &TrainOptions { quiet: true, resume: true, ..Default::default() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("different config"), "{err}");
}

/// A checkpoint whose newest directory is damaged falls back to the previous one.
#[test]
fn damaged_latest_checkpoint_falls_back() {
    scoregen::init();
    let cfg = small("vp", 200);
    let dir = tempfile::tempdir().unwrap();
    scoregen::app::commands::train::train(&cfg, dir.path(), &TrainOptions { quiet: true, ..Default::default() })
        .unwrap();
    let ck_dir = dir.path().join("checkpoints");
    std::fs::write(ck_dir.join("step-000000200").join("model.safetensors"), b"torn").unwrap();
    let ck = checkpoint::load_latest(&ck_dir).unwrap();
    assert_eq!(ck.state.step, 100);
}

/// An absurd learning rate drives the loss to a non-finite value: training
/// stops with a message naming the step and the last good checkpoint, and
/// that checkpoint still loads.
#[test]
fn non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
    scoregen::init();
    let mut cfg = small("vp", 200);
    cfg.training.lr = 1e12;
    cfg.training.grad_clip = 0.0;
    cfg.training.warmup = 0;
    cfg.training.checkpoint_every = 1;
    let dir = tempfile::tempdir().unwrap();
    let err =
        scoregen::app::commands::train::train(&cfg, dir.path(), &TrainOptions { quiet: true, ..Default::default() })
            .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("non-finite"), "{msg}");
    let scoregen::Error::NonFinite { step, checkpoint, .. } = err else { panic!("{msg}") };
    assert!(step < 200, "{msg}");
    let ck = checkpoint::load_latest(&dir.path().join("checkpoints")).unwrap();
    assert_eq!(ck.state.step, step - 1, "the last checkpoint is the last good step");
    assert!(checkpoint.ends_with(&format!("step-{:09}", step - 1)), "{msg}");
    assert!(ck.model.values().all(|t| t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())));
}
