//! Old runs keep loading: `tests/fixtures/run-format-1` is a tiny run written
//! by the checkpoint format 1 (`state.json` `"format": 1`). A change that stops
//! it loading, sampling or resuming (a renamed tensor, a new required state
//! field, a config change that alters the resume hash) fails here; then bump
//! `checkpoint::FORMAT` and keep reading format 1. A state file without the
//! field is format 1; an unknown format is refused by its number.

use scoregen::app::commands::sample::{sample_run, SampleRequest};
use scoregen::app::config::RunConfig;
use scoregen::app::run_dir::LoadedModel;
use scoregen::train::{checkpoint, TrainOptions};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-format-1")
}

/// A writable copy of the fixture run.
fn copy_fixture(to: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            let dst = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &dst);
            } else {
                std::fs::copy(&p, &dst).unwrap();
            }
        }
    }
    let run = to.join("run");
    copy(&fixture(), &run);
    run
}

#[test]
fn a_format_1_run_loads_with_its_exact_weights_and_samples() {
    scoregen::init();
    let ck = checkpoint::load_latest(&fixture().join("checkpoints")).unwrap();
    assert_eq!((ck.state.format, ck.state.step, ck.state.dim, ck.state.adam_t), (1, 4, 2, 4));
    let w = ck.model["input.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bits: Vec<u32> = w[..3].iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, [0xbd7b20ac, 0x3e66cf7b, 0x3ef92e87]);
    assert_eq!(ck.model.len(), 8);
    let model = LoadedModel::from_run(&fixture(), true, &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.cfg.name, "format-1");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.npy");
    let s = sample_run(&fixture(), &SampleRequest::new(50, 10, 1, out.clone())).unwrap();
    assert_eq!(s.n, 50);
    assert!(scoregen::data::npy::read_points(&out).unwrap().all_finite());
}

/// The config hash of the saved config still matches the checkpoint's, so the
/// old run resumes (and only `training.steps` changes).
#[test]
fn a_format_1_run_resumes() {
    scoregen::init();
    let dir = tempfile::tempdir().unwrap();
    let run = copy_fixture(dir.path());
    let cfg = RunConfig::load(&run.join("config.toml"), &["training.steps=6".into()]).unwrap();
    let opts = TrainOptions { quiet: true, resume: true, ..Default::default() };
    let o = scoregen::app::commands::train::train(&cfg, &run, &opts).unwrap();
    assert_eq!(o.step, 6);
    assert!(o.final_loss.is_finite());
    assert_eq!(checkpoint::load_latest(&run.join("checkpoints")).unwrap().state.format, checkpoint::FORMAT);
}

#[test]
fn a_state_without_format_is_format_1_and_an_unknown_format_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = copy_fixture(dir.path());
    let ck = run.join("checkpoints/step-000000004");
    let state = ck.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    // Checkpoints from before the field; SHA256SUMS goes too, as it covers state.json.
    std::fs::remove_file(ck.join("SHA256SUMS")).unwrap();
    std::fs::write(&state, text.replace("  \"format\": 1,\n", "")).unwrap();
    assert!(!std::fs::read_to_string(&state).unwrap().contains("format"));
    assert_eq!(checkpoint::load(&ck).unwrap().state.format, 1);
    std::fs::write(&state, text.replace("\"format\": 1", "\"format\": 7")).unwrap();
    let err = checkpoint::load(&ck).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: checkpoint format 7 is not one this scoregen reads (format 1); use the scoregen that wrote it, or a newer one",
            state.display()
        )
    );
}
