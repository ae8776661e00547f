//! The fuzzer behind `scripts/fuzz.sh`: generated hostile inputs for every
//! reader of user input (.npy, IDX, CSV.gz, PNG folders, run configs and
//! `--set`, mixture specs, safetensors, checkpoints' state.json) and for the
//! command line (clap's `try_parse_from` on `Cli`, then the library's parsers
//! of flag values: masks, samplers, eval targets). Each input is a valid seed
//! with random edits (flips, inserts, deletions, truncation, huge header
//! words) or text built from a hostile vocabulary; a panic is counted and its
//! input saved under `crates/scoregen/tests/fuzz_corpus/TARGET/`, which
//! `fuzz_corpus_replays_without_panics` (in the default test run) replays.
//!
//! `FUZZ_INPUTS` (default 1,000,000) and `FUZZ_SEED` (default 0) set the run;
//! it lives in the binary's tests because `Cli` is defined in `main.rs`.

use clap::Parser;
use scoregen::app::config::RunConfig;
use scoregen::data::{images, npy, spec};
use scoregen::guidance::MaskSpec;
use scoregen::rng::Rng;
use scoregen::train::checkpoint;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scoregen/tests/fuzz_corpus")
}

/// The fuzz targets: name and relative weight (share of the inputs).
const TARGETS: [(&str, usize); 10] = [
    ("npy", 12),
    ("idx", 8),
    ("csv", 10),
    ("png", 2),
    ("config", 14),
    ("overrides", 10),
    ("mixture", 12),
    ("safetensors", 8),
    ("state", 4),
    ("cli", 20),
];

/// Valid inputs every mutation starts from (built once per worker).
struct Seeds {
    npy: Vec<u8>,
    idx: (Vec<u8>, Vec<u8>),
    csv: Vec<u8>,
    png: Vec<u8>,
    config: String,
    mixture: String,
    checkpoint: PathBuf,
    safetensors: Vec<u8>,
    state: Vec<u8>,
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn npy_file(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(payload);
    b
}

fn png_bytes() -> Vec<u8> {
    let img = image::GrayImage::from_fn(4, 3, |x, y| image::Luma([(x * 30 + y) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

impl Seeds {
    fn new(scratch: &Path) -> Self {
        let v: Vec<u8> = (0..12).flat_map(|k| (k as f32 * 0.5 - 2.0).to_le_bytes()).collect();
        let mut im = vec![0, 0, 8, 3];
        for d in [3u32, 2, 4] {
            im.extend(d.to_be_bytes());
        }
        im.extend(0..24u8);
        let lb = vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3];
        // A tiny checkpoint to mutate: an 8-wide MLP after 2 steps.
        let text = "[data]\nn_train = 64\n[model]\nwidth = 8\ndepth = 2\n[training]\nbatch_size = 8\n";
        let cfg = RunConfig::parse(text, "t.toml", &[]).unwrap();
        let mut t = scoregen::app::factory::trainer(&cfg).unwrap();
        for _ in 0..2 {
            t.train_step("none").unwrap();
        }
        let ck = checkpoint::save(&scratch.join("seed-ck"), &t.checkpoint().unwrap(), 1).unwrap();
        std::fs::remove_file(ck.join("SHA256SUMS")).unwrap();
        let read = |f: &str| std::fs::read(ck.join(f)).unwrap();
        Self {
            npy: npy_file("<f4", "(6, 2)", &v),
            idx: (im, lb),
            csv: b"0,1,2,3,4,5\n16,0,0,7.5,1,9\n\n3, 3, 3, 3, 3, 0\n".to_vec(),
            png: png_bytes(),
            config: RunConfig::default().to_toml(),
            mixture: "[[component]]\nweight = 0.8\nmean = [-5.0, -5.0]\nstd = 1.0\n\
                      [[component]]\nweight = 0.2\nmean = [5.0, 5.0]\ncov = [[1.0, 0.5], [0.5, 2.0]]\n"
                .into(),
            safetensors: read("model.safetensors"),
            state: read("state.json"),
            checkpoint: ck,
        }
    }
}

/// Random edits of `base`: half of them in the first 64 bytes, where headers live.
fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(6) {
        let span = if rng.below(2) == 0 { b.len().min(64) } else { b.len() };
        let at = if span == 0 { 0 } else { rng.below(span) };
        let val = rng.below(256) as u8;
        match rng.below(8) {
            0 if !b.is_empty() => b[at] = val,
            1 => b.truncate(at),
            2 => b.insert(at.min(b.len()), val),
            3 if at + 4 <= b.len() => b[at..at + 4].copy_from_slice(&[0xFF, 0xFF, 0xFF, val]),
            4 if !b.is_empty() => {
                b.drain(at..(at + val as usize % 16).min(b.len()));
            }
            5 if !b.is_empty() => b[at] ^= 1 << (val % 8),
            6 if !b.is_empty() => {
                // duplicate a slice (repeated keys, sections, fields)
                let end = (at + 1 + rng.below(32)).min(b.len());
                let piece = b[at..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, piece);
            }
            7 => {
                let word = WORDS[rng.below(WORDS.len())].as_bytes();
                let to = at.min(b.len());
                b.splice(to..to, word.iter().copied());
            }
            _ => {}
        }
    }
    b
}

/// Hostile values for text formats and flags.
const WORDS: [&str; 24] = [
    "nan",
    "inf",
    "-inf",
    "1e308",
    "-1",
    "0",
    "18446744073709551615",
    "4294967296",
    "1e-320",
    "\"x\"",
    "[]",
    "[[1, 2], [3]]",
    "{}",
    "=",
    "..",
    ".",
    "\u{0}",
    "é",
    "\n[",
    "]]",
    "true",
    "-0.0",
    "999999999999",
    " ",
];

const COMMANDS: [&str; 14] = [
    "train",
    "sample",
    "inpaint",
    "classify",
    "suggest-sigmas",
    "likelihood",
    "eval",
    "train-classifier",
    "demo",
    "list",
    "bench",
    "report",
    "quickstart",
    "help",
];

const FLAGS: [&str; 52] = [
    "--config",
    "--out",
    "--resume",
    "--overwrite",
    "--set",
    "--detect-anomaly",
    "--no-report",
    "--run",
    "--n",
    "--steps",
    "--seed",
    "--gif",
    "--sampler",
    "--corrector",
    "--snr",
    "--rtol",
    "--atol",
    "--eps",
    "--steps-per-level",
    "--eta",
    "--churn",
    "--class",
    "--guidance",
    "--classifier",
    "--no-ema",
    "--input",
    "--mask",
    "--per-input",
    "--samples",
    "--target",
    "--labels",
    "--data",
    "--trace",
    "--dequantize",
    "--noisy",
    "--budgets",
    "--quiet",
    "-q",
    "-v",
    "-vv",
    "--json",
    "--help",
    "--version",
    "langevin",
    "pitfall",
    "forward-reverse",
    "--probes",
    "--width",
    "--batch-size",
    "--lr",
    "--",
    "-",
];

const VALUES: [&str; 30] = [
    "0",
    "1",
    "-1",
    "2.5",
    "nan",
    "inf",
    "1e400",
    "18446744073709551616",
    "",
    "pc",
    "ode",
    "ddim",
    "heun",
    "ald",
    "none",
    "half",
    "box",
    "random:0.5",
    "random:2",
    "random:nan",
    "gmm8",
    "x.npy",
    "sde.sigma_max=3",
    "a=b=c",
    "=",
    "sampling.sampler=rk4",
    "model.width=99999999",
    "gmm8,gmm25",
    "ü",
    "--n",
];

/// A command line from the vocabulary, with random junk mixed in.
fn command_line(rng: &mut Rng) -> Vec<String> {
    let mut args = vec!["scoregen".to_string()];
    if rng.below(4) == 0 {
        args.push(["-q", "--json", "-v"][rng.below(3)].into());
    }
    args.push(COMMANDS[rng.below(COMMANDS.len())].into());
    for _ in 0..rng.below(8) {
        match rng.below(4) {
            0 | 1 => args.push(FLAGS[rng.below(FLAGS.len())].into()),
            2 => args.push(VALUES[rng.below(VALUES.len())].into()),
            _ => {
                let base = VALUES[rng.below(VALUES.len())].as_bytes();
                args.push(String::from_utf8_lossy(&mutate(base, rng)).into_owned());
            }
        }
    }
    args
}

/// Generates one input for `target` (bytes; command lines are NUL-separated).
fn generate(target: &str, seeds: &Seeds, rng: &mut Rng) -> Vec<u8> {
    match target {
        "npy" if rng.below(4) == 0 => {
            // hostile headers: dtypes, huge or odd shapes
            let descr = ["<f4", ">f8", "<f8", "<i4", "|u1", "<f2", "<c8", "V8"][rng.below(8)];
            let dims: Vec<String> = (0..rng.below(5))
                .map(|_| match rng.below(3) {
                    0 => rng.below(5).to_string(),
                    1 => "18446744073709551615".into(),
                    _ => (1u64 << 40).to_string(),
                })
                .collect();
            let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
            let payload: Vec<u8> = (0..rng.below(96)).map(|_| rng.below(256) as u8).collect();
            npy_file(descr, &shape, &payload)
        }
        "npy" => mutate(&seeds.npy, rng),
        "idx" => {
            let (im, lb) = &seeds.idx;
            let (im, lb) =
                if rng.below(2) == 0 { (mutate(im, rng), lb.clone()) } else { (im.clone(), mutate(lb, rng)) };
            let mut b = (im.len() as u32).to_le_bytes().to_vec();
            b.extend(im);
            b.extend(lb);
            b
        }
        "csv" => {
            if rng.below(2) == 0 {
                gz(&mutate(&seeds.csv, rng))
            } else {
                mutate(&gz(&seeds.csv), rng)
            }
        }
        "png" => mutate(&seeds.png, rng),
        "config" => mutate(seeds.config.as_bytes(), rng),
        "mixture" => mutate(seeds.mixture.as_bytes(), rng),
        "overrides" => {
            let keys =
                ["training.batch_size", "data.n_train", "model.width", "sde", "sampling.sampler", "a..b", "seed.x"];
            let sets: Vec<String> = (0..1 + rng.below(4))
                .map(|_| format!("{}={}", keys[rng.below(keys.len())], WORDS[rng.below(WORDS.len())]))
                .collect();
            sets.join("\0").into_bytes()
        }
        "safetensors" => mutate(&seeds.safetensors, rng),
        "state" => mutate(&seeds.state, rng),
        "cli" => command_line(rng).join("\0").into_bytes(),
        _ => unreachable!("unknown target {target}"),
    }
}

/// Feeds one input to its reader (in `scratch`, a folder of this worker's own).
fn run_one(target: &str, input: &[u8], seeds: &Seeds, scratch: &Path) {
    let text = || String::from_utf8_lossy(input).into_owned();
    match target {
        "npy" => {
            let p = scratch.join("x.npy");
            std::fs::write(&p, input).unwrap();
            if let Ok(pts) = npy::read_points(&p) {
                assert!(pts.data.len() == pts.n * pts.d && pts.data.len() * 4 <= input.len() && pts.all_finite());
            }
        }
        "idx" => {
            let Some(n) = input.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
            let (im, lb) = input[4..].split_at(n.min(input.len() - 4));
            let (ip, lp) = (scratch.join("i"), scratch.join("l"));
            std::fs::write(&ip, im).unwrap();
            std::fs::write(&lp, lb).unwrap();
            if let Ok(set) = images::read_idx(&ip, &lp) {
                assert!(set.images.len() == set.len() * set.dim() && set.images.len() <= im.len());
            }
        }
        "csv" => {
            if let Ok(set) = images::read_csv(input, Path::new("x.csv.gz"), 1, 5, 16.0) {
                assert!(set.images.iter().all(|p| (0.0..=1.0).contains(p)));
            }
        }
        "png" => {
            let d = scratch.join("png");
            let _ = std::fs::create_dir_all(d.join("3"));
            std::fs::write(d.join("a.png"), &seeds.png).unwrap();
            std::fs::write(d.join("3/b.png"), input).unwrap();
            if let Ok(set) = images::read_png_dir(&d) {
                assert!(set.len() == 2 && set.images.len() == 2 * set.dim());
            }
        }
        "config" => {
            let _ = RunConfig::parse(&text(), "c.toml", &[]);
        }
        "overrides" => {
            let sets: Vec<String> = text().split('\0').map(String::from).collect();
            if let Ok(cfg) = RunConfig::parse("", "c.toml", &sets) {
                assert!(cfg.training.batch_size <= 1 << 20 && cfg.model.width <= 1 << 14);
            }
        }
        "mixture" => {
            if let Ok(m) = spec::parse_mixture(&text(), "m.toml") {
                let x = m.sample(2, &mut Rng::new(0, 0));
                assert!(x.all_finite());
            }
        }
        "safetensors" => {
            let p = scratch.join("m.safetensors");
            std::fs::write(&p, input).unwrap();
            let _ = checkpoint::read_tensors(&p);
        }
        "state" => {
            let d = scratch.join("ck");
            if !d.exists() {
                std::fs::create_dir_all(&d).unwrap();
                for f in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
                    std::fs::copy(seeds.checkpoint.join(f), d.join(f)).unwrap();
                }
            }
            std::fs::write(d.join("state.json"), input).unwrap();
            let _ = checkpoint::load(&d);
        }
        "cli" => {
            let args: Vec<String> = text().split('\0').map(String::from).collect();
            if let Ok(cli) = crate::Cli::try_parse_from(&args) {
                values_of(&cli);
            }
        }
        _ => unreachable!("unknown target {target}"),
    }
}

/// The library's parsers of flag values, on whatever clap accepted.
fn values_of(cli: &crate::Cli) {
    use crate::Command;
    match &cli.command {
        Command::Inpaint(a) => {
            let _ = MaskSpec::parse(&a.mask);
        }
        // Only names: a path would read the disk.
        Command::Eval(a) if !a.target.contains(['.', '/']) => {
            let _ = scoregen::app::commands::eval::Target::parse(&a.target);
        }
        _ => {}
    }
    for s in ["pc", "x", ""] {
        let _ = <scoregen::samplers::SamplerKind as scoregen::named::Named>::parse(s);
    }
}

/// Runs `input` on `target`, returning whether it panicked.
fn panics(target: &str, input: &[u8], seeds: &Seeds, scratch: &Path) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_one(target, input, seeds, scratch))).is_err()
}

fn save_to_corpus(target: &str, input: &[u8]) -> PathBuf {
    let dir = corpus_dir().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let name: String =
        input.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3)).to_string();
    let path = dir.join(format!("{name}.bin"));
    std::fs::write(&path, input).unwrap();
    path
}

fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("scoregen-fuzz-{}", std::process::id()))
}

/// The million-input run of `scripts/fuzz.sh` (ignored by the default test run).
#[test]
#[ignore = "long: run by scripts/fuzz.sh"]
fn fuzz_every_reader_and_flag_parser() {
    scoregen::init();
    let total: usize = std::env::var("FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let root = scratch_root();
    std::fs::create_dir_all(&root).unwrap();
    // Panics are counted and saved, not printed (the hook would print each).
    std::panic::set_hook(Box::new(|_| {}));
    let weight_sum: usize = TARGETS.iter().map(|t| t.1).sum();
    let counts: Vec<AtomicUsize> = TARGETS.iter().map(|_| AtomicUsize::new(0)).collect();
    let panicked = std::sync::Mutex::new(Vec::new());
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers {
            let (root, counts, panicked) = (&root, &counts, &panicked);
            s.spawn(move || {
                let scratch = root.join(format!("w{w}"));
                std::fs::create_dir_all(&scratch).unwrap();
                let seeds = Seeds::new(&scratch);
                let mut rng = Rng::new(seed, 1000 + w as u64);
                for i in (w..total).step_by(workers) {
                    // Each target's share of the inputs, in a fixed rotation.
                    let mut k = (i * 7919) % weight_sum;
                    let t = TARGETS
                        .iter()
                        .position(|&(_, wt)| {
                            if k < wt {
                                true
                            } else {
                                k -= wt;
                                false
                            }
                        })
                        .unwrap();
                    let target = TARGETS[t].0;
                    let input = generate(target, &seeds, &mut rng);
                    // Worker 0's first two inputs per target seed the replayed corpus.
                    if w == 0 && counts[t].fetch_add(1, Ordering::Relaxed) < 2 {
                        save_to_corpus(target, &input);
                    } else if w != 0 {
                        counts[t].fetch_add(1, Ordering::Relaxed);
                    }
                    if panics(target, &input, &seeds, &scratch) {
                        panicked.lock().unwrap().push((target, save_to_corpus(target, &input)));
                    }
                    if w == 0 && i % 100_000 < workers {
                        eprintln!("fuzz: {i} of {total} inputs, {:.0} s", start.elapsed().as_secs_f64());
                    }
                }
            });
        }
    });
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&root);
    let n: usize = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let panicked = panicked.into_inner().unwrap();
    println!("fuzz: {n} inputs in {:.0} s (seed {seed}), {} panics", start.elapsed().as_secs_f64(), panicked.len());
    for ((name, _), c) in TARGETS.iter().zip(&counts) {
        println!("  {name:<12} {}", c.load(Ordering::Relaxed));
    }
    for (t, p) in &panicked {
        println!("  panic in {t}: saved {}", p.display());
    }
    assert!(panicked.is_empty(), "{} inputs panicked; they are in {}", panicked.len(), corpus_dir().display());
}

/// Every input the fuzzer ever saved (and the hand-made ones beside them)
/// runs through its reader without a panic.
#[test]
fn fuzz_corpus_replays_without_panics() {
    scoregen::init();
    let scratch = tempfile::tempdir().unwrap();
    let seeds = Seeds::new(scratch.path());
    let mut replayed = 0;
    for (target, _) in TARGETS {
        let Ok(files) = std::fs::read_dir(corpus_dir().join(target)) else { continue };
        for f in files {
            let f = f.unwrap().path();
            let input = std::fs::read(&f).unwrap();
            let work = scratch.path().join(format!("r{replayed}"));
            std::fs::create_dir_all(&work).unwrap();
            assert!(!panics(target, &input, &seeds, &work), "{} panics", f.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len(), "the corpus holds at least one input per target ({replayed})");
}
