//! Property tests for every reader of user input: random and mutated files
//! (.npy, IDX, CSV, PNG folders, safetensors checkpoints, mixture specs, run
//! configs) never panic, and whatever is accepted is well-formed.
//!
//! Mutations start from a valid file and flip, insert, delete or truncate
//! bytes, or overwrite a header word with a huge number, so most cases reach
//! deep into the parser instead of dying at the magic number. Seeds are fixed
//! and case counts bounded: the whole file runs in a few seconds in release.

mod common;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use scoregen::app::config::RunConfig;
use scoregen::data::{images, npy, spec, ImageSet};
use scoregen::train::checkpoint;
use std::io::Write;
use std::path::Path;

fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x5C0E), failure_persistence: None, ..Config::default() }
}

/// One edit of a byte string: (kind, position, value).
type Edit = (u8, usize, u8);

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((0u8..6, any::<usize>(), any::<u8>()), 1..6)
}

/// Applies `edits` to `base`. Half of the positions are drawn from the first 64
/// bytes, where the headers live.
fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(kind, pos, val) in edits {
        let span = if pos % 2 == 0 { b.len().min(64) } else { b.len() };
        let at = if span == 0 { 0 } else { (pos / 2) % span };
        match kind {
            0 if !b.is_empty() => b[at] = val,
            1 => b.truncate(at),
            2 => b.insert(at.min(b.len()), val),
            3 if at + 4 <= b.len() => b[at..at + 4].copy_from_slice(&[0xFF, 0xFF, 0xFF, val]),
            4 if !b.is_empty() => {
                b.drain(at..(at + val as usize % 16).min(b.len()));
            }
            5 if !b.is_empty() => b[at] ^= 1 << (val % 8),
            _ => {}
        }
    }
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A `.npy` file with the given header fields and payload.
fn npy_bytes(descr: &str, fortran: bool, shape: &[u64], payload: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    common::npy_file(descr, fortran, &tuple, payload)
}

fn valid_npy() -> Vec<u8> {
    let v: Vec<u8> = (0..12).flat_map(|k| (k as f32 * 0.5 - 2.0).to_le_bytes()).collect();
    npy_bytes("<f4", false, &[6, 2], &v)
}

/// Whatever `read_points` accepts is a finite [N, D] array that fits the file.
fn check_npy(path: &Path, file_len: usize) {
    if let Ok(p) = npy::read_points(path) {
        assert_eq!(p.data.len(), p.n * p.d);
        assert!(p.n >= 1 && p.d >= 1, "empty array accepted: {}×{}", p.n, p.d);
        assert!(p.data.len() * 4 <= file_len, "more values than bytes");
        assert!(p.data.iter().all(|v| v.is_finite()));
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn npy_mutations_never_panic(e in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let bytes = mutate(&valid_npy(), &e);
        std::fs::write(&p, &bytes).unwrap();
        check_npy(&p, bytes.len());
    }

    #[test]
    fn npy_hostile_headers_never_panic_or_overallocate(
        descr in prop::sample::select(vec!["<f4", ">f8", "<f8", "<i4", "|u1", "<f2", "<c8", "|b1", "V8", "<U3"]),
        fortran in any::<bool>(),
        shape in prop::collection::vec(prop_oneof![0u64..5, any::<u64>(), Just(u64::MAX), Just(1u64 << 40)], 0..5),
        payload in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let bytes = npy_bytes(descr, fortran, &shape, &payload);
        std::fs::write(&p, &bytes).unwrap();
        check_npy(&p, bytes.len());
    }
}

fn idx_pair(dims: [u32; 3], pixels: &[u8], labels: &[u8], n_labels: u32) -> (Vec<u8>, Vec<u8>) {
    let mut im = vec![0, 0, 8, 3];
    for d in dims {
        im.extend(d.to_be_bytes());
    }
    im.extend(pixels);
    let mut lb = vec![0, 0, 8, 1];
    lb.extend(n_labels.to_be_bytes());
    lb.extend(labels);
    (im, lb)
}

fn check_idx(ip: &Path, lp: &Path, bytes: usize) {
    if let Ok(set) = images::read_idx(ip, lp) {
        assert_eq!(set.images.len(), set.len() * set.dim());
        assert!(set.images.len() <= bytes, "more pixels than bytes");
        assert!(set.images.iter().all(|p| (0.0..=1.0).contains(p)));
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn idx_mutations_never_panic(e in edits(), which in any::<bool>(), zipped in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let (im, lb) = idx_pair([3, 2, 4], &(0..24).collect::<Vec<u8>>(), &[1, 2, 3], 3);
        let (im, lb) = if which { (mutate(&im, &e), lb) } else { (im, mutate(&lb, &e)) };
        let ext = if zipped { ".gz" } else { "" };
        let (ip, lp) = (dir.path().join(format!("i{ext}")), dir.path().join(format!("l{ext}")));
        let len = im.len();
        let (im, lb) = if zipped { (gz(&im), gz(&lb)) } else { (im, lb) };
        std::fs::write(&ip, im).unwrap();
        std::fs::write(&lp, lb).unwrap();
        check_idx(&ip, &lp, len);
    }

    #[test]
    fn idx_hostile_headers_never_panic_or_overallocate(
        dims in prop::array::uniform3(prop_oneof![0u32..6, any::<u32>()]),
        n_labels in prop_oneof![0u32..6, any::<u32>()],
        pixels in prop::collection::vec(any::<u8>(), 0..128),
        labels in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (ip, lp) = (dir.path().join("i"), dir.path().join("l"));
        let (im, lb) = idx_pair(dims, &pixels, &labels, n_labels);
        std::fs::write(&ip, &im).unwrap();
        std::fs::write(&lp, lb).unwrap();
        check_idx(&ip, &lp, im.len());
    }

    /// The gzipped CSV reader (rows of H·W pixels and a label) on mutated text and mutated gzip.
    #[test]
    fn csv_mutations_never_panic(e in edits(), mutate_gz in any::<bool>()) {
        let text: Vec<u8> = b"0,1,2,3,4,5\n16,0,0,7.5,1,9\n\n3, 3, 3, 3, 3, 0\n".to_vec();
        let raw = if mutate_gz { mutate(&gz(&text), &e) } else { gz(&mutate(&text, &e)) };
        if let Ok(set) = images::read_csv(&raw, Path::new("x.csv.gz"), 1, 5, 16.0) {
            assert_eq!(set.images.len(), set.len() * 5);
            assert!(set.images.iter().all(|p| (0.0..=1.0).contains(p)));
        }
    }
}

fn png_bytes(w: u32, h: u32, colour: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let img: image::DynamicImage = if colour {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 40) as u8, (y * 60) as u8, 7])).into()
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 30 + y) as u8])).into()
    };
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

proptest! {
    #![proptest_config(config(300))]

    /// A folder with one good PNG and one mutated PNG (or one of another size or colour).
    #[test]
    fn png_folder_mutations_never_panic(e in edits(), w in 1u32..6, h in 1u32..6, colour in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("3")).unwrap();
        std::fs::write(dir.path().join("a.png"), png_bytes(4, 3, false)).unwrap();
        std::fs::write(dir.path().join("3/b.png"), mutate(&png_bytes(w, h, colour), &e)).unwrap();
        if let Ok(set) = images::read_png_dir(dir.path()) {
            assert_eq!(set.len(), 2);
            assert_eq!((set.h, set.w), (3, 4));
            assert_eq!(set.images.len(), 2 * set.dim());
        }
    }
}

/// A tiny trained checkpoint (an 8-wide MLP after 3 steps), saved once per process.
fn saved_checkpoint() -> &'static (tempfile::TempDir, std::path::PathBuf) {
    static CK: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    CK.get_or_init(|| {
        let text = "[data]\nn_train = 64\n[model]\nwidth = 8\ndepth = 2\n[training]\nbatch_size = 8\n";
        let cfg = RunConfig::parse(text, "t.toml", &[]).unwrap();
        let mut t = scoregen::app::factory::trainer(&cfg).unwrap();
        for _ in 0..3 {
            t.train_step("none").unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint::save(dir.path(), &t.checkpoint().unwrap(), 2).unwrap();
        (dir, path)
    })
}

proptest! {
    #![proptest_config(config(400))]

    /// Each file of a checkpoint mutated in turn: loading never panics, and a
    /// damaged tensor or state file is caught (by its checksum) rather than loaded.
    #[test]
    fn checkpoint_mutations_never_panic(e in edits(), file in 0usize..5) {
        let (_keep, src) = saved_checkpoint();
        let names = ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json", "SHA256SUMS"];
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("step-000000003");
        std::fs::create_dir(&ck).unwrap();
        for f in std::fs::read_dir(src).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, ck.join(f.file_name().unwrap())).unwrap();
        }
        let before = std::fs::read(ck.join(names[file])).unwrap();
        let after = mutate(&before, &e);
        std::fs::write(ck.join(names[file]), &after).unwrap();
        let loaded = checkpoint::load(&ck);
        if file < 4 && after != before {
            prop_assert!(loaded.is_err(), "a damaged {} was loaded", names[file]);
        }
    }

    /// The safetensors reader itself, on mutated files without a checksum to stop them.
    #[test]
    fn safetensors_mutations_never_panic(e in edits()) {
        let (_keep, src) = saved_checkpoint();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        std::fs::write(&p, mutate(&std::fs::read(src.join("model.safetensors")).unwrap(), &e)).unwrap();
        if let Ok(map) = checkpoint::read_tensors(&p) {
            for t in map.values() {
                let v = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
                prop_assert!(v.iter().all(|x| x.is_finite()));
            }
        }
    }
}

const MIXTURE: &str = "[[component]]\nweight = 0.8\nmean = [-5.0, -5.0]\nstd = 1.0\n\
                       [[component]]\nweight = 0.2\nmean = [5.0, 5.0]\ncov = [[1.0, 0.5], [0.5, 2.0]]\n";

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (-5.0f64..5.0).prop_map(|v| format!("{v:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        Just("0.0".to_string()),
        Just("-1.0".to_string()),
        Just("\"x\"".to_string()),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn mixture_spec_mutations_never_panic(e in edits()) {
        let text = String::from_utf8_lossy(&mutate(MIXTURE.as_bytes(), &e)).into_owned();
        if let Ok(m) = spec::parse_mixture(&text, "m.toml") {
            prop_assert!(m.weights().iter().all(|w| w.is_finite() && *w >= 0.0));
        }
    }

    /// Random components: ragged means, non-finite numbers, non-square or indefinite covariances.
    #[test]
    fn mixture_spec_random_components_never_panic(
        comps in prop::collection::vec(
            (number(), prop::collection::vec(number(), 0..4), prop::option::of(number()),
             prop::option::of(prop::collection::vec(prop::collection::vec(number(), 0..4), 0..4))),
            0..4),
    ) {
        let mut text = String::new();
        for (w, mean, std, cov) in &comps {
            text += &format!("[[component]]\nweight = {w}\nmean = [{}]\n", mean.join(", "));
            if let Some(s) = std {
                text += &format!("std = {s}\n");
            }
            if let Some(c) = cov {
                let rows: Vec<String> = c.iter().map(|r| format!("[{}]", r.join(", "))).collect();
                text += &format!("cov = [{}]\n", rows.join(", "));
            }
        }
        if let Ok(m) = spec::parse_mixture(&text, "m.toml") {
            let x = m.sample(4, &mut scoregen::rng::Rng::new(0, 0));
            prop_assert!(x.data.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn run_config_mutations_never_panic(e in edits()) {
        let base = RunConfig::default().to_toml();
        let text = String::from_utf8_lossy(&mutate(base.as_bytes(), &e)).into_owned();
        let _ = RunConfig::parse(&text, "c.toml", &[]);
    }

    /// `--set key=value` with hostile values: accepted configs have sizes a machine can hold.
    #[test]
    fn run_config_overrides_never_panic(
        sets in prop::collection::vec((prop::sample::select(vec![
            "training.batch_size", "training.steps", "data.n_train", "model.width", "model.depth",
            "model.embed_dim", "noise.levels", "sampling.n", "sampling.steps", "training.lr", "sde.sigma_max",
            "training.keep_checkpoints", "model.channels", "model.channel_mult", "objective.projections", "sde",
            "a..b", "training.lr.x",
        ]), prop_oneof![number(), Just("18446744073709551615".to_string()), Just("1000000000000".to_string()),
            Just("[1, 2]".to_string()), Just("{}".to_string()), (0u64..5000).prop_map(|v| v.to_string())]), 0..4),
    ) {
        let overrides: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Ok(cfg) = RunConfig::parse("", "c.toml", &overrides) {
            let t = &cfg.training;
            prop_assert!(t.batch_size <= 1 << 20 && cfg.data.n_train <= 1 << 27 && cfg.model.width <= 1 << 14);
        }
    }
}

/// The readers' inputs used above are accepted when unmutated (so the mutations test something).
#[test]
fn unmutated_inputs_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    std::fs::write(&p, valid_npy()).unwrap();
    assert_eq!(npy::read_points(&p).unwrap().n, 6);
    let (im, lb) = idx_pair([3, 2, 4], &(0..24).collect::<Vec<u8>>(), &[1, 2, 3], 3);
    let (ip, lp) = (dir.path().join("i"), dir.path().join("l"));
    std::fs::write(&ip, im).unwrap();
    std::fs::write(&lp, lb).unwrap();
    let set: ImageSet = images::read_idx(&ip, &lp).unwrap();
    assert_eq!(set.len(), 3);
    let csv = gz(b"0,1,2,3,4,5\n16,0,0,7.5,1,9\n\n3, 3, 3, 3, 3, 0\n");
    assert_eq!(images::read_csv(&csv, Path::new("x.csv.gz"), 1, 5, 16.0).unwrap().len(), 3);
    assert_eq!(spec::parse_mixture(MIXTURE, "m.toml").unwrap().n_components(), 2);
    let (_keep, ck) = saved_checkpoint();
    assert_eq!(checkpoint::load(ck).unwrap().state.step, 3);
}
