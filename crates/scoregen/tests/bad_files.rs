//! A corpus of hand-made bad files, one per way a file can be wrong
//! (truncated, oversized header, wrong dtype, wrong shape, non-finite values,
//! hostile names), each with the exact error a user sees.

mod common;
use common::npy_file;
use scoregen::app::config::RunConfig;
use scoregen::app::run_dir::LoadedModel;
use scoregen::data::{images, npy, spec, ImageSet};
use scoregen::train::{checkpoint, TrainOptions};
use std::io::Write;
use std::path::Path;

/// Checks every (case, result, expected message) and reports all mismatches at once.
fn expect_all(cases: Vec<(&str, String, String)>) {
    let bad: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(case, got, want)| format!("{case}:\n   got: {got}\n  want: {want}"))
        .collect();
    assert!(bad.is_empty(), "{} of {} cases differ:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

fn err<T>(r: scoregen::Result<T>) -> String {
    match r {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn bad_npy_files_give_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    let at = |m: &str| format!("{}: {m}", p.display());
    let read = |bytes: Vec<u8>| {
        std::fs::write(&p, bytes).unwrap();
        err(npy::read_points(&p))
    };
    expect_all(vec![
        (
            "truncated data",
            read(npy_file("<f4", false, "(100, 2)", &f32s(&[0.5; 190]))),
            at("header promises shape [100, 2] but the file holds only 760 bytes of data"),
        ),
        (
            "header claims 10^12 rows",
            read(npy_file("<f4", false, "(1000000000000, 2)", &f32s(&[0.5; 2]))),
            at("header promises shape [1000000000000, 2] but the file holds only 8 bytes of data"),
        ),
        (
            "header claims 2^64 elements (overflow)",
            read(npy_file("<f8", false, "(4294967296, 4294967296)", &[])),
            at("header promises shape [4294967296, 4294967296] but the file holds only 0 bytes of data"),
        ),
        (
            "wrong dtype",
            read(npy_file("<i4", false, "(2, 2)", &[0; 16])),
            at("expected dtype float32 or float64, found `<i4`"),
        ),
        (
            "wrong rank",
            read(npy_file("<f4", false, "(2, 2, 2)", &f32s(&[0.0; 8]))),
            at("expected an array of shape [N, D] or [N, C, H, W], found shape [2, 2, 2]"),
        ),
        (
            "Fortran order",
            read(npy_file("<f4", true, "(2, 2)", &f32s(&[0.0; 4]))),
            at("Fortran-ordered arrays are not supported; save with np.ascontiguousarray"),
        ),
        ("empty", read(npy_file("<f4", false, "(0, 2)", &[])), at("the array is empty (shape [0, 2])")),
        (
            "NaN-filled",
            read(npy_file("<f4", false, "(2, 2)", &f32s(&[0.0, 1.0, f32::NAN, f32::NAN]))),
            at("value at row 1, column 0 is not finite (NaN)"),
        ),
        (
            "infinite",
            read(npy_file("<f8", false, "(3,)", &[1f64, 2.0, f64::NEG_INFINITY].map(f64::to_le_bytes).concat())),
            at("value at row 2, column 0 is not finite (-inf)"),
        ),
        (
            "header length of 4 GiB",
            read([&b"\x93NUMPY\x02\x00\xff\xff\xff\xff"[..], b"{'descr': '<f4'"].concat()),
            at("truncated .npy header: it claims to end at byte 4294967307, the file has 27 bytes"),
        ),
        ("not npy at all", read(b"name,x,y\n".to_vec()), at("not a valid .npy file (magic not found for NPY file)")),
    ]);
}

fn idx(magic: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, magic];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(payload);
    b
}

#[test]
fn bad_idx_files_give_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = (dir.path().join("x-images-idx3-ubyte"), dir.path().join("x-labels-idx1-ubyte"));
    let good_labels = idx(1, &[5], &[0, 1, 2, 3, 4]);
    let read = |im: Vec<u8>, lb: &[u8]| {
        std::fs::write(&ip, im).unwrap();
        std::fs::write(&lp, lb).unwrap();
        err(images::read_idx(&ip, &lp))
    };
    let (i, l) = (ip.display().to_string(), lp.display().to_string());
    let gz = dir.path().join("x.gz");
    std::fs::write(&gz, b"\x1f\x8b\x08\x00garbage").unwrap();
    expect_all(vec![
        (
            "truncated pixels",
            read(idx(3, &[5, 3, 4], &[7; 53]), &good_labels),
            format!("{i}: truncated IDX file: dims [5, 3, 4] need 60 bytes of data, found 53"),
        ),
        (
            "header claims 2^32 images",
            read(idx(3, &[u32::MAX, 3, 4], &[7; 60]), &good_labels),
            format!("{i}: truncated IDX file: dims [4294967295, 3, 4] need 51539607540 bytes of data, found 60"),
        ),
        (
            "header claims 2^96 pixels (overflow)",
            read(idx(3, &[u32::MAX, u32::MAX, u32::MAX], &[7; 60]), &good_labels),
            format!("{i}: wrong IDX dims [4294967295, 4294967295, 4294967295]: they do not match the 60 bytes of data"),
        ),
        (
            "trailing bytes",
            read(idx(3, &[5, 3, 4], &[7; 61]), &good_labels),
            format!("{i}: wrong IDX dims [5, 3, 4]: they do not match the 61 bytes of data"),
        ),
        (
            "labels given as images",
            read(good_labels.clone(), &good_labels),
            format!("{i}: wrong IDX magic number 0x00000801: expected 0x00000803 (unsigned bytes, 3 dimensions)"),
        ),
        (
            "float dtype (0x0D)",
            read(vec![0, 0, 0x0D, 3, 0, 0, 0, 1], &good_labels),
            format!("{i}: wrong IDX magic number 0x00000d03: expected 0x00000803 (unsigned bytes, 3 dimensions)"),
        ),
        (
            "truncated header",
            read(vec![0, 0, 8, 3, 0, 0, 0, 5, 0], &good_labels),
            format!("{i}: truncated IDX header: 9 bytes, expected 16"),
        ),
        ("empty file", read(vec![], &good_labels), format!("{i}: truncated IDX file: 0 bytes, no header")),
        (
            "label count differs",
            read(idx(3, &[5, 3, 4], &[7; 60]), &idx(1, &[4], &[0; 4])),
            format!("{l}: 4 labels for 5 images in {i}"),
        ),
        (
            "zero-width images",
            read(idx(3, &[5, 3, 0], &[]), &good_labels),
            format!("{i}: wrong IDX dims [5, 3, 0]: images must be at least 1×1"),
        ),
        (
            "broken gzip",
            err(images::read_idx(&gz, &lp)),
            format!("{}: not valid gzip: incomplete deflate stream", gz.display()),
        ),
    ]);
}

fn gz(text: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text).unwrap();
    e.finish().unwrap()
}

#[test]
fn bad_csv_files_give_exact_errors() {
    let read = |text: &[u8]| err(images::read_csv(&gz(text), Path::new("x.csv.gz"), 1, 2, 16.0));
    expect_all(vec![
        (
            "short row",
            read(b"1,2,3\n4,5\n"),
            "x.csv.gz: line 2: expected 3 values (2 pixels and a label), found 2".into(),
        ),
        ("pixel out of range", read(b"1,17,3\n"), "x.csv.gz: line 1: pixel `17` is outside [0, 16]".into()),
        ("NaN pixel", read(b"nan,1,3\n"), "x.csv.gz: line 1: pixel `nan` is outside [0, 16]".into()),
        ("word pixel", read(b"1,two,3\n"), "x.csv.gz: line 1: pixel `two` is not a number".into()),
        ("fractional label", read(b"1,2,3.5\n"), "x.csv.gz: line 1: label `3.5` is not an integer in 0..=255".into()),
        ("huge label", read(b"1,2,1e300\n"), "x.csv.gz: line 1: label `1e300` is not an integer in 0..=255".into()),
        ("not UTF-8", read(b"1,2,\xff\n"), "x.csv.gz: not UTF-8 text".into()),
        (
            "not gzip",
            err(images::read_csv(b"1,2,3\n", Path::new("x.csv.gz"), 1, 2, 16.0)),
            "x.csv.gz: not valid gzip: unexpected end of file".into(),
        ),
    ]);
}

#[test]
fn bad_png_folders_give_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = err(images::read_png_dir(d));
    let set = ImageSet { images: vec![0.5; 12], labels: vec![1], c: 1, h: 3, w: 4 };
    images::write_png_dir(&set, d).unwrap();
    let small = ImageSet { images: vec![0.5; 4], labels: vec![2], c: 1, h: 2, w: 2 };
    images::write_png_dir(&small, d).unwrap();
    let wrong_size = err(images::read_png_dir(d));
    std::fs::remove_dir_all(d.join("2")).unwrap();
    let png = d.join("1/00000.png");
    let bytes = std::fs::read(&png).unwrap();
    std::fs::write(&png, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = err(images::read_png_dir(d));
    std::fs::write(&png, b"GIF89a not a png").unwrap();
    let not_png = err(images::read_png_dir(d));
    expect_all(vec![
        ("empty folder", empty, format!("{}: no .png files in this folder (or its numbered sub-folders)", d.display())),
        (
            "sizes differ",
            wrong_size,
            format!("{}: wrong size 2×2: the first image is 4×3", d.join("2/00000.png").display()),
        ),
        ("truncated PNG", truncated, format!("{}: cannot decode PNG: unexpected end of file", png.display())),
        (
            "not a PNG",
            not_png,
            format!("{}: cannot decode PNG: Format error decoding Png: Invalid PNG signature.", png.display()),
        ),
    ]);
}

#[test]
fn bad_mixture_specs_give_exact_errors() {
    let parse = |t: &str| err(spec::parse_mixture(t, "m.toml"));
    let long_mean = format!("[[component]]\nweight = 1\nmean = [{}]\nstd = 1.0\n", vec!["0.0"; 9000].join(","));
    expect_all(vec![
        (
            "negative std",
            parse("[[component]]\nweight = 1\nmean = [0.0]\nstd = -1.0\n"),
            "m.toml: field `component[0].std`: must be > 0 (got -1)".into(),
        ),
        (
            "NaN std",
            parse("[[component]]\nweight = 1\nmean = [0.0]\nstd = nan\n"),
            "m.toml: field `component[0].std`: must be > 0 (got NaN)".into(),
        ),
        (
            "NaN mean",
            parse("[[component]]\nweight = 1\nmean = [nan, 0.0]\nstd = 1.0\n"),
            "m.toml: field `component`: component 0: mean or covariance is not finite".into(),
        ),
        (
            "ragged means",
            parse("[[component]]\nweight = 1\nmean = [0.0]\nstd = 1.0\n[[component]]\nweight = 1\nmean = [0.0, 1.0]\nstd = 1.0\n"),
            "m.toml: field `component`: component 1: mean has dimension 2, expected 1".into(),
        ),
        (
            "non-square covariance",
            parse("[[component]]\nweight = 1\nmean = [0.0, 0.0]\ncov = [[1.0, 0.0], [0.0]]\n"),
            "m.toml: field `component`: component 0: covariance must be 2×2".into(),
        ),
        (
            "zero weight",
            parse("[[component]]\nweight = 0\nmean = [0.0]\nstd = 1.0\n"),
            "m.toml: field `component`: component 0: weight must be a finite number > 0 (got 0)".into(),
        ),
        (
            "no components",
            parse("component = []\n"),
            "m.toml: field `component`: a mixture needs at least one component".into(),
        ),
        (
            "oversized (D = 9000)",
            parse(&long_mean),
            "m.toml: field `component`: the covariances would hold 81000000 numbers (K·D²); at most 67108864 are allowed"
                .into(),
        ),
        ("wrong type", parse("[[component]]\nweight = \"heavy\"\n"), "m.toml: field `component`: invalid type: string \"heavy\", expected f64".into()),
    ]);
}

#[test]
fn bad_run_configs_give_exact_errors() {
    let parse = |t: &str| err(RunConfig::parse(t, "c.toml", &[]));
    expect_all(vec![
        (
            "batch size of 10^12",
            parse("[training]\nbatch_size = 1000000000000\n"),
            "c.toml: field `training.batch_size`: must be ≤ 1000000 (got 1000000000000)".into(),
        ),
        (
            "negative size",
            parse("[training]\nbatch_size = -5\n"),
            "c.toml: field `training.batch_size`: invalid value: integer `-5`, expected usize".into(),
        ),
        (
            "NaN learning rate",
            parse("[training]\nlr = nan\n"),
            "c.toml: field `training.lr`: must be a finite number > 0 (got NaN)".into(),
        ),
        (
            "width of 10^6",
            parse("[model]\nwidth = 1000000\n"),
            "c.toml: field `model.width`: must be ≤ 16384 (got 1000000)".into(),
        ),
        (
            "truncated",
            parse("[training\nlr = 1"),
            "c.toml: field `(syntax, line 1)`: invalid table header; expected `.`, `]`".into(),
        ),
    ]);
}

/// A tiny run: an 8-wide MLP trained for 4 steps with a checkpoint every 2.
fn tiny_run(dir: &Path) -> RunConfig {
    let text = "[data]\nn_train = 64\n[model]\nwidth = 8\ndepth = 2\n[training]\nsteps = 4\nbatch_size = 8\ncheckpoint_every = 2\n";
    let cfg = RunConfig::parse(text, "t.toml", &[]).unwrap();
    scoregen::app::commands::train::train(&cfg, dir, &TrainOptions { quiet: true, ..Default::default() }).unwrap();
    cfg
}

#[test]
fn bad_checkpoints_give_exact_errors_and_fall_back() {
    scoregen::init();
    let run = tempfile::tempdir().unwrap();
    let cfg = tiny_run(run.path());
    let ck_dir = run.path().join("checkpoints");
    let (c2, c4) = (ck_dir.join("step-000000002"), ck_dir.join("step-000000004"));
    let good = checkpoint::load(&c4).unwrap();
    let first = good.model.keys().min().unwrap().clone();
    let n_params: usize = good.model.values().map(|t| t.elem_count()).sum();
    let scratch = tempfile::tempdir().unwrap();
    // A copy of step 4 with `edit` applied, loaded.
    let edited = |name: &str, edit: &dyn Fn(&Path)| {
        let d = scratch.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in std::fs::read_dir(&c4).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
        edit(&d);
        (d.clone(), err(checkpoint::load(&d)))
    };
    let save_model = |d: &Path, map: std::collections::HashMap<String, candle_core::Tensor>| {
        candle_core::safetensors::save(&map, d.join("model.safetensors")).unwrap();
        std::fs::remove_file(d.join("SHA256SUMS")).unwrap();
    };
    let (d1, flipped) = edited("flipped", &|d| {
        let p = d.join("ema.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, b).unwrap();
    });
    let (d2, nan) = edited("nan", &|d| {
        let mut m = good.model.clone();
        let t = &m[&first];
        m.insert(first.clone(), (t * f64::NAN).unwrap());
        save_model(d, m);
    });
    let (d3, missing_ema) = edited("extra", &|d| {
        let mut m = good.model.clone();
        m.insert("extra.weight".into(), m[&first].clone());
        save_model(d, m);
    });
    let (d4, dim) = edited("dim", &|d| {
        let p = d.join("state.json");
        let s = std::fs::read_to_string(&p).unwrap().replace("\"dim\": 2", "\"dim\": 1000000000000");
        std::fs::write(&p, s).unwrap();
        std::fs::remove_file(d.join("SHA256SUMS")).unwrap();
    });
    let (d5, hostile) = edited("hostile", &|d| {
        std::fs::write(d.join("SHA256SUMS"), format!("{}  ../../../etc/passwd\n", "0".repeat(64))).unwrap();
    });
    let (d6, truncated) = edited("truncated", &|d| {
        let p = d.join("optimizer.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        std::fs::remove_file(d.join("SHA256SUMS")).unwrap();
    });
    expect_all(vec![
        (
            "one bit flipped",
            flipped,
            format!(
                "{}: checksum mismatch: the file changed after it was written",
                d1.join("ema.safetensors").display()
            ),
        ),
        (
            "NaN-filled tensor",
            nan,
            format!("{}: tensor `{first}` holds a non-finite value", d2.join("model.safetensors").display()),
        ),
        (
            "model and EMA disagree",
            missing_ema,
            format!("{}: tensor `extra.weight` is missing", d3.join("ema.safetensors").display()),
        ),
        (
            "absurd dim",
            dim,
            format!(
                "{}: dim 1000000000000 is impossible for a model of {n_params} parameters",
                d4.join("state.json").display()
            ),
        ),
        (
            "hostile SHA256SUMS",
            hostile,
            format!("{}: line 1: `../../../etc/passwd` is not a checkpoint file", d5.join("SHA256SUMS").display()),
        ),
        (
            "truncated tensors",
            truncated,
            format!(
                "{}: unreadable tensors: {}",
                d6.join("optimizer.safetensors").display(),
                "incomplete metadata, file not fully covered"
            ),
        ),
    ]);

    // A damaged newest checkpoint: loading falls back to step 2.
    let p = c4.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let k = b.len() - 3;
    b[k] ^= 0x40;
    std::fs::write(&p, b).unwrap();
    assert_eq!(checkpoint::load_latest(&ck_dir).unwrap().state.step, 2);
    assert_eq!(LoadedModel::from_run(run.path(), true, &candle_core::Device::Cpu).unwrap().state.step, 2);

    // A config whose model differs from the checkpoint's: the tensor is named.
    let mut wide = cfg.clone();
    wide.model.width = 16;
    std::fs::write(run.path().join("config.toml"), wide.to_toml()).unwrap();
    let e = err(LoadedModel::from_run(run.path(), true, &candle_core::Device::Cpu));
    assert_eq!(
        e,
        format!(
            "{}: tensor `{first}` has shape [8], the config's model expects [16]",
            c2.join("model.safetensors").display()
        )
    );
    // Tensors stored as f64 where the model has f32: the dtype is named.
    std::fs::write(run.path().join("config.toml"), cfg.to_toml()).unwrap();
    let m64: std::collections::HashMap<_, _> =
        good.model.iter().map(|(k, t)| (k.clone(), t.to_dtype(candle_core::DType::F64).unwrap())).collect();
    let mut ck = checkpoint::load(&c2).unwrap();
    ck.model = m64.clone();
    ck.ema = m64;
    let vars =
        scoregen::nets::named_vars(&LoadedModel::from_run(run.path(), true, &candle_core::Device::Cpu).unwrap().varmap);
    let e = err(checkpoint::check_model(&ck, &vars));
    assert_eq!(
        e,
        format!(
            "{}: tensor `{first}` has dtype F64, the config's model expects F32",
            c2.join("model.safetensors").display()
        )
    );
}

/// A checkpoint that cannot be written (here: its temporary directory is
/// blocked by a file) is an error naming the path, and the older
/// checkpoints and the `latest` pointer are left as they were.
#[test]
fn failed_checkpoint_write_keeps_the_previous_one() {
    scoregen::init();
    let run = tempfile::tempdir().unwrap();
    tiny_run(run.path());
    let ck_dir = run.path().join("checkpoints");
    let mut ck = checkpoint::load_latest(&ck_dir).unwrap();
    ck.state.step = 6;
    let blocker = ck_dir.join(".step-000000006.tmp");
    std::fs::write(&blocker, "").unwrap();
    let e = err(checkpoint::save(&ck_dir, &ck, 2));
    assert_eq!(e, format!("{}: File exists (os error 17)", blocker.display()));
    assert_eq!(std::fs::read_to_string(ck_dir.join("latest")).unwrap(), "step-000000004");
    assert_eq!(checkpoint::load_latest(&ck_dir).unwrap().state.step, 4);
    assert_eq!(checkpoint::list(&ck_dir).len(), 2);
}
