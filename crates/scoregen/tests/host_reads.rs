//! No host read per step in the network path (issue 31): on a GPU, reading a
//! tensor back (`to_vec1`, `to_scalar`) makes the CPU wait for the stream, so
//! a sampler that read the time or a coefficient at every step would stall at
//! every step. Every read in the three library crates goes through
//! `scoregen::host`, which counts them per thread (a source scan below keeps
//! any other read out), and every sampler of the table, run on the CPU for
//! N and 2N steps on each kind of network — scoregen's U-Net with EDM
//! preconditioning, classes, classifier-free and classifier guidance; the time-MLP; an
//! energy; a noise ladder; imported diffusers models on integer timesteps and
//! on σ — reads nothing while it samples (MALA reads its acceptance rate once,
//! at the end). The one sampler that reads per step
//! on purpose is the adaptive ODE (RK45's step-size control needs its error
//! norm on the host: one read per attempted step), and the count sees it.

use candle_core::{DType, Device};
use scoregen::app::commands::classify::{train_classifier, ClassifierRequest};
use scoregen::app::commands::sample::{sample_loaded, ClassChoice, ClassGuidance, SampleRequest};
use scoregen::app::config::RunConfig;
use scoregen::app::run_dir::LoadedModel;
use scoregen::host;
use scoregen::likelihood::{log_likelihood, LikelihoodOptions, ProbeNoise, TraceEstimator};
use scoregen::rng::Rng;
use scoregen::samplers::{OdeMethod, SamplerKind, SAMPLERS};
use scoregen::train::TrainOptions;
use std::path::{Path, PathBuf};

#[path = "common/diffusers.rs"]
mod diffusers;

/// A run trained for two steps from `toml` (weights are random-like; what is
/// counted does not depend on them).
fn tiny_run(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let cfg = RunConfig::parse(toml, &format!("{name}.toml"), &[]).unwrap();
    let run = dir.join(name);
    scoregen::app::commands::train::train(&cfg, &run, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    run
}

const TRAIN: &str = "[training]\nsteps = 2\nbatch_size = 8\nlog_every = 1\ncheckpoint_every = 2\n";

/// Host reads made while `model` samples 2 points with `kind` at `steps`
/// (`None`: the model refuses the sampler).
fn reads_while_sampling(
    model: &LoadedModel,
    kind: SamplerKind,
    steps: usize,
    class: Option<&ClassGuidance>,
) -> Option<usize> {
    let spec = model.cfg.sampling.with_sampler(kind);
    let req = SampleRequest::new(2, steps, 0, PathBuf::from("unused.npy"));
    let before = host::reads();
    let out = sample_loaded(model, &req, Some(spec), class).ok()?;
    let reads = host::reads() - before;
    let v: Vec<f32> = out.x.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|v| v.is_finite()), "{kind:?}: non-finite samples");
    Some(reads)
}

/// Every sampler the model offers, at 3 and 6 steps: no read, except the
/// adaptive ODE's one per attempted step and, with a classifier, the reads
/// that check its weights as it loads (the same whatever the steps). Returns
/// how many samplers ran.
fn check_every_sampler(what: &str, model: &LoadedModel, class: Option<&ClassGuidance>) -> usize {
    let at_load = class.and_then(|c| c.classifier.as_ref()).map_or(0, |dir| classifier_tensors(dir));
    let mut ran = 0;
    for info in SAMPLERS {
        let Some(short) = reads_while_sampling(model, info.kind, 3, class) else { continue };
        let long = reads_while_sampling(model, info.kind, 6, class).expect("ran at 3 steps");
        if info.kind == SamplerKind::Ode {
            // the positive control: RK45 reads its error norm once per attempted step
            assert!(short > 0 && long > 0, "{what}: RK45's error norms were not counted ({short}, {long})");
        } else if info.kind == SamplerKind::Mala {
            // the acceptance rate, summed on the device and read once at the end
            assert_eq!((short, long), (1 + at_load, 1 + at_load), "{what}, mala: host reads at 3 and 6 steps");
        } else {
            assert_eq!((short, long), (at_load, at_load), "{what}, {}: host reads at 3 and 6 steps", info.name);
        }
        ran += 1;
    }
    ran
}

/// The tensors of a saved classifier (each is checked finite, one read, as it loads).
fn classifier_tensors(dir: &Path) -> usize {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .expect("a classifier's safetensors file");
    candle_core::safetensors::load(&file, &Device::Cpu).unwrap().len()
}

#[test]
fn samplers_read_nothing_back_from_scoregen_networks() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    // the mnist5k preset's network in small: U-Net with attention, EDM, classes
    let unet = tiny_run(
        dir.path(),
        "unet",
        &format!(
            "name = \"unet\"\n[data]\nsource = \"digits\"\nscale = \"symmetric\"\n[sde]\nkind = \"vp\"\n\
             [model]\nkind = \"unet\"\npreconditioning = \"edm\"\nchannels = 8\nchannel_mult = [1, 2]\ngroups = 4\n\
             attention = true\nembed_dim = 16\nclasses = \"auto\"\nlabel_dropout = 0.1\n{TRAIN}"
        ),
    );
    let model = LoadedModel::from_run(&unet, true, &Device::Cpu).unwrap();
    let guided = ClassGuidance { class: ClassChoice::One(3), scale: 1.0, classifier: None };
    assert!(check_every_sampler("unet + classifier-free guidance", &model, Some(&guided)) >= 14);
    assert!(check_every_sampler("unet, unconditional", &model, None) >= 14);
    // classifier guidance: a noise-aware classifier's ∇ₓ log p(y | x, t) joins the score
    let req = ClassifierRequest {
        data: None,
        config: Some(model.cfg.clone()),
        noisy: true,
        out: unet.join("classifier-noisy"),
        width: 8,
        blocks: 1,
        steps: 2,
        batch_size: 8,
        lr: 1e-3,
        seed: 0,
        quiet: true,
        device: Device::Cpu,
    };
    train_classifier(&req).unwrap();
    let classifier = ClassGuidance { class: ClassChoice::One(3), scale: 1.0, classifier: Some(req.out.clone()) };
    assert!(check_every_sampler("unet + classifier guidance", &model, Some(&classifier)) >= 14);

    // the time-MLP (Fourier features of t, s = net/s(t)) on each continuous SDE
    for sde in ["ve", "vp", "subvp"] {
        let mlp = tiny_run(
            dir.path(),
            &format!("mlp-{sde}"),
            &format!(
                "name = \"mlp\"\n[data]\nsource = \"gmm8\"\n[sde]\nkind = \"{sde}\"\n[model]\nwidth = 16\n{TRAIN}"
            ),
        );
        let model = LoadedModel::from_run(&mlp, true, &Device::Cpu).unwrap();
        assert!(check_every_sampler(&format!("time-mlp on {sde}"), &model, None) >= 14);
    }

    // an energy (s = −∇ₓE, MALA's accept step) and a noise ladder (annealed Langevin)
    for (name, preset) in [("energy", "sliced-energy-gmm8.toml"), ("ncsn", "ncsn-gmm8.toml")] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(preset);
        let mut cfg = RunConfig::load(&path, &[]).unwrap();
        cfg.training.steps = 2;
        cfg.training.checkpoint_every = 2;
        cfg.training.batch_size = 8;
        let run = dir.path().join(name);
        scoregen::app::commands::train::train(&cfg, &run, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
        let model = LoadedModel::from_run(&run, true, &Device::Cpu).unwrap();
        let ran = check_every_sampler(name, &model, None);
        assert!(ran >= 1, "{name}: no sampler ran");
        let offered = |k| reads_while_sampling(&model, k, 3, None).is_some();
        match name {
            "energy" => assert!(offered(SamplerKind::Mala) && offered(SamplerKind::Langevin)),
            _ => assert!(offered(SamplerKind::AnnealedLangevin)),
        }
    }
}

#[test]
fn samplers_read_nothing_back_from_imported_diffusers_models() {
    scoregen::init();
    for (model, scheduler, pipeline) in [
        (diffusers::ddpm_config(), diffusers::ddpm_scheduler(), true),
        (diffusers::ncsnpp_config(), diffusers::ve_scheduler(), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        diffusers::write_checkpoint(dir.path(), &model, &scheduler, pipeline);
        let m = LoadedModel::from_run(dir.path(), true, &Device::Cpu).unwrap();
        let what = format!("imported {}", m.cfg.sde().name());
        assert!(check_every_sampler(&what, &m, None) >= 14, "{what}");
    }
}

/// The likelihood's ODE with fixed steps: the two reads of the result (Δ log p
/// and the prior's log-density) whatever the number of steps.
#[test]
fn the_likelihood_reads_only_its_result() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    diffusers::write_checkpoint(dir.path(), &diffusers::ddpm_config(), &diffusers::ddpm_scheduler(), true);
    let m = LoadedModel::from_run(dir.path(), true, &Device::Cpu).unwrap();
    let x = Rng::new(3, 0).randn((2, 192), DType::F32, &Device::Cpu).unwrap();
    let reads = |steps: usize| {
        let opts = LikelihoodOptions {
            method: OdeMethod::Heun { steps },
            trace: Some(TraceEstimator::Hutchinson { probes: 1, noise: ProbeNoise::Rademacher }),
            score_dtype: DType::F32,
            ..Default::default()
        };
        let before = host::reads();
        let ll = log_likelihood(m.score().as_ref(), m.cfg.sde().as_ref(), &x, &opts, &mut Rng::new(0, 0)).unwrap();
        assert!(ll.nats.iter().all(|v| v.is_finite()));
        host::reads() - before
    };
    assert_eq!((reads(2), reads(5)), (2, 2));
}

/// What the scan below forbids: a tensor read outside `host.rs`.
fn direct_reads(text: &str) -> Vec<usize> {
    let body = text.split("#[cfg(test)]").next().unwrap_or("");
    body.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .filter(|(_, l)| {
            [".to_vec0", ".to_vec1", ".to_vec2", ".to_vec3", ".to_scalar"].iter().any(|m| {
                l.match_indices(m).any(|(i, _)| {
                    let rest = &l[i + m.len()..];
                    rest.starts_with('(') || rest.starts_with("::<")
                })
            })
        })
        .map(|(i, _)| i + 1)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Outside tests, the libraries read tensors only through `scoregen::host`,
/// so the count above sees every read.
#[test]
fn the_libraries_read_tensors_only_through_host() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for name in ["scoregen-core", "scoregen-nets", "scoregen"] {
        rust_files(&crates.join(name).join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} files: the scan looks in the wrong place", files.len());
    let bad: Vec<String> = files
        .iter()
        .filter(|p| !p.ends_with("scoregen-core/src/host.rs"))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            direct_reads(&text).into_iter().map(move |l| format!("{}:{l}", p.display()))
        })
        .collect();
    assert!(bad.is_empty(), "tensor reads outside scoregen::host (use host::vec1 and friends):\n{}", bad.join("\n"));
    // the scan itself: reads are found, look-alikes in comments and tests are not
    let sample = "let a = t.to_vec1::<f64>()?;\n// x.to_scalar()\nlet b = y.to_scalar::<f32>()?;\nfn to_vec1s() {}\n\
                  #[cfg(test)]\nlet c = z.to_vec2::<f32>();\n";
    assert_eq!(direct_reads(sample), [1, 3]);
}
