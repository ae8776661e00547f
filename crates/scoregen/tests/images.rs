//! Images end to end: a small U-Net on the vendored 8×8 digits trains (the loss
//! on a fixed batch falls after Adam steps) and samples into [N, 1, 8, 8] `.npy`
//! files with a PNG grid beside them, for VE, VP and NCSN alike.

mod ci;

use candle_core::{Device, Tensor};
use scoregen::app::commands::sample::SampleRequest;
use scoregen::app::config::RunConfig;
use scoregen::data::npy;
use scoregen::rng::Rng;
use scoregen::train::{Adam, TrainOptions, Trainer};

/// A tiny U-Net on digits; training steps here take a few ms each.
fn tiny(extra: &str, steps: usize) -> RunConfig {
    let text = format!(
        "name = \"img\"\n[data]\nsource = \"digits\"\nn_train = 256\n[sde]\nkind = \"vp\"\n\
         [model]\nkind = \"unet\"\nchannels = 8\nchannel_mult = [1, 2]\ngroups = 4\nembed_dim = 16\n\
         [training]\nsteps = {steps}\nbatch_size = 16\nlr = 2e-3\nwarmup = 0\nlog_every = 5\ncheckpoint_every = 100\n\
         [sampling]\nsteps = 20\nn = 9\n{extra}"
    );
    RunConfig::parse(&text, "images-test.toml", &[]).unwrap()
}

/// Loss of the trainer's objective on a fixed batch with fixed noise.
fn fixed_loss(t: &Trainer, x0: &Tensor) -> f64 {
    let score = t.model.score(t.sde.clone());
    let loss = t.objective.loss(score.as_ref(), x0, &mut Rng::new(9, 9)).unwrap();
    loss.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn adam_steps_on_a_fixed_batch_lower_the_unet_loss() {
    scoregen::init();
    let mut t = scoregen::app::factory::trainer(&tiny("", 10)).unwrap();
    assert_eq!(t.dataset.image_shape, Some((1, 8, 8)));
    assert_eq!((t.dataset.points.n, t.dataset.points.d), (256, 64));
    let x0 = t.dataset.points.head(16).to_tensor(candle_core::DType::F32, &Device::Cpu).unwrap();
    let before = fixed_loss(&t, &x0);
    for _ in 0..5 {
        let score = t.model.score(t.sde.clone());
        let loss = t.objective.loss(score.as_ref(), &x0, &mut Rng::new(9, 9)).unwrap();
        let grads = Adam::gradients(&t.params, &loss.backward().unwrap()).unwrap();
        t.adam.step(&t.params, grads, 2e-3, 1.0).unwrap();
    }
    let after = fixed_loss(&t, &x0);
    assert!(after < 0.9 * before, "loss {before} → {after}");
}

#[test]
fn unet_runs_train_and_sample_image_arrays_with_a_grid() {
    scoregen::init();
    for extra in
        ["", "[sde]\nkind = \"ve\"\nsigma_max = 5.0\n", "[objective]\nkind = \"ncsn\"\n[noise]\nsigma_max = 5.0\n"]
    {
        let cfg = RunConfig::parse(&tiny("", 10).to_toml(), "x.toml", &overrides(extra)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = scoregen::app::commands::train::train(
            &cfg,
            dir.path(),
            &TrainOptions { quiet: true, ..Default::default() },
        )
        .unwrap();
        assert!(out.final_loss.is_finite());
        // Record every 5th of 20 steps: frames at t = T, 4 more, and the final samples.
        let req = SampleRequest { record_every: Some(5), ..SampleRequest::new(9, 20, 1, dir.path().join("s.npy")) };
        let s = scoregen::app::commands::sample::sample_run(dir.path(), &req).unwrap();
        let gif = s.gif.clone().expect("a GIF of the reverse process");
        let mut dec = gif::DecodeOptions::new().read_info(std::fs::File::open(&gif).unwrap()).unwrap();
        assert_eq!((dec.width(), dec.height()), (3 * 72 + 8, 3 * 72 + 8));
        let mut frames = 0;
        while dec.read_next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert!(frames >= 5, "{extra}: {frames} frames");
        let bytes = std::fs::read(&s.npy).unwrap();
        let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(arr.shape(), &[9, 1, 8, 8], "{extra}");
        let pts = npy::read_points(&s.npy).unwrap();
        assert!(pts.all_finite() && pts.d == 64);
        let png = s.png.expect("an image grid");
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (3 * 72 + 8, 3 * 72 + 8), "3×3 tiles of 8×8 pixels at zoom 8");
    }
}

/// `[a]\nk = v\n…` → ["a.k=v", …].
fn overrides(toml_text: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for line in toml_text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(t) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = t;
        } else if let Some((k, v)) = line.split_once('=') {
            out.push(format!("{table}.{}={}", k.trim(), v.trim()));
        }
    }
    out
}

/// Debian's Fashion-MNIST (installed by scripts/setup.sh): its own 60k/10k
/// split, 28×28, ten balanced classes. Skips with a message when absent,
/// except under CI, where it fails.
#[test]
fn fashion_mnist_loads_its_own_split_when_installed() {
    if !std::path::Path::new(scoregen::data::images::FASHION_MNIST_DIR).join("t10k-images-idx3-ubyte.gz").exists() {
        ci::missing_dependency("Fashion-MNIST is not installed (scripts/setup.sh installs dataset-fashion-mnist)");
        return;
    }
    let opts = scoregen::data::ImageOptions::default();
    let test = scoregen::data::load_images("fashion-mnist", false, &opts).unwrap();
    assert_eq!((test.len(), test.shape()), (10_000, (1, 28, 28)));
    let mut counts = [0usize; 10];
    for &y in &test.labels {
        counts[y as usize] += 1;
    }
    assert_eq!(counts, [1000; 10], "the test split has 1,000 images of each class");
    assert!(test.images.iter().all(|p| (0.0..=1.0).contains(p)));
}
