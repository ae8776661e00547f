//! The binary as a user meets it: bad input gives one clear line naming the
//! file and field, a non-zero exit code and no half-written run; a tiny run
//! goes through train → sample → eval.

use std::path::Path;
use std::process::{Command, Output};

fn scoregen(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scoregen")).args(args).current_dir(cwd).output().expect("run scoregen")
}

/// Asserts failure with exactly one stderr line containing every `needle`.
fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one error line expected, got: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = scoregen(&["train", "--config", "nope.toml", "--out", "run"], dir.path());
    fails_with(&out, &["nope.toml", "No such file"]);
    assert!(!dir.path().join("run").exists());
}

#[test]
fn unknown_key_names_file_field_and_valid_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[sde]\nkind = \"ve\"\nsigma_maxx = 3.0\n").unwrap();
    let out = scoregen(&["train", "--config", "c.toml", "--out", "run"], dir.path());
    fails_with(&out, &["c.toml", "field `sde", "sigma_maxx", "sigma_max"]);
    assert!(!dir.path().join("run").exists());
}

#[test]
fn negative_sigma_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[sde]\nkind = \"ve\"\nsigma_min = -1.0\n").unwrap();
    let out = scoregen(&["train", "--config", "c.toml", "--out", "run"], dir.path());
    fails_with(&out, &["c.toml", "field `sde.sigma_min`", "> 0", "-1"]);
    assert!(!dir.path().join("run").exists());
}

#[test]
fn wrong_shaped_npy_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // a valid float32 .npy of shape [2, 2, 2]
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 32]);
    std::fs::write(dir.path().join("bad.npy"), &bytes).unwrap();
    std::fs::write(dir.path().join("c.toml"), "[data]\nsource = \"bad.npy\"\n").unwrap();
    let out = scoregen(&["train", "--config", "c.toml", "--out", "run"], dir.path());
    fails_with(&out, &["bad.npy", "[2, 2, 2]"]);
    assert!(!dir.path().join("run").exists());
    let out = scoregen(&["eval", "--samples", "bad.npy", "--target", "gmm8"], dir.path());
    fails_with(&out, &["bad.npy", "shape"]);
}

#[test]
fn unknown_data_set_lists_the_valid_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[data]\nsource = \"gmm9\"\n").unwrap();
    let out = scoregen(&["train", "--config", "c.toml"], dir.path());
    fails_with(&out, &["gmm9", "gmm8", "checkerboard"]);
}

#[test]
fn tiny_run_trains_samples_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"tiny\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\n[training]\nsteps = 40\nbatch_size = 64\nlog_every = 10\ncheckpoint_every = 20\n",
    )
    .unwrap();
    let out = scoregen(&["--json", "train", "--config", "c.toml", "--set", "training.steps=30"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"], 30);
    let run = dir.path().join("runs/tiny");
    for f in ["config.toml", "metrics.jsonl", "checkpoints/latest"] {
        assert!(run.join(f).exists(), "{f}");
    }
    let out =
        scoregen(&["sample", "--run", "runs/tiny", "--n", "200", "--steps", "50", "--out", "s.npy", "-q"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("s.npy").exists() && dir.path().join("s.png").exists());
    let out = scoregen(&["--json", "eval", "--samples", "s.npy", "--target", "gmm8"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["modes"]["n_modes"], 8);
    assert!(v["floor"]["mmd2"].is_number());
}

/// SIGKILL a training process at several random (seeded) points and resume
/// each time: the final weights, EMA and optimizer state equal an
/// uninterrupted run's, bit for bit. Each kill lands a random 0–40 ms after
/// the run passes a random step, so it falls between checkpoints or in the
/// middle of writing one.
#[test]
fn killed_training_resumes_to_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"k\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\n[training]\nsteps = 400\nbatch_size = 64\nlog_every = 10\ncheckpoint_every = 7\n",
    )
    .unwrap();
    let out = scoregen(&["-q", "train", "--config", "c.toml", "--out", "straight", "--no-report"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let latest = |run: &str| -> usize {
        std::fs::read_to_string(dir.path().join(run).join("checkpoints/latest"))
            .ok()
            .and_then(|s| s.trim().trim_start_matches("step-").parse().ok())
            .unwrap_or(0)
    };
    let mut rng = scoregen::rng::Rng::new(11, 0);
    let mut points: Vec<usize> = (0..4).map(|_| 10 + rng.below(330)).collect();
    points.sort();
    let mut kills = 0;
    let mut resume = false;
    for kill_after in points {
        let mut args = vec!["-q", "train", "--config", "c.toml", "--out", "killed", "--no-report"];
        if resume {
            args.push("--resume");
        }
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_scoregen")).args(&args).current_dir(dir.path()).spawn().unwrap();
        let start = std::time::Instant::now();
        while latest("killed") < kill_after && start.elapsed().as_secs() < 60 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(40) as u64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        resume = true;
    }
    assert!(kills >= 2, "the run finished before it could be killed");
    let out =
        scoregen(&["-q", "train", "--config", "c.toml", "--out", "killed", "--resume", "--no-report"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = scoregen::train::checkpoint::load_latest(&dir.path().join("straight/checkpoints")).unwrap();
    let b = scoregen::train::checkpoint::load_latest(&dir.path().join("killed/checkpoints")).unwrap();
    assert_eq!(a.state, b.state);
    for (ma, mb) in [(&a.model, &b.model), (&a.ema, &b.ema), (&a.optimizer, &b.optimizer)] {
        for (k, ta) in ma {
            let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let vb = mb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{k} differs after kill/resume");
        }
    }
}

/// Guidance through the binary on a tiny class-conditional run: classifier-free
/// sampling of a class, a noise-aware classifier and classifier guidance,
/// imputation that keeps the observed coordinate, and bad requests that fail
/// with one line naming the problem.
#[test]
fn guidance_commands_run_on_points_and_reject_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"cond\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\nclasses = 8\n[training]\nsteps = 30\nbatch_size = 64\nlog_every = 10\ncheckpoint_every = 30\n",
    )
    .unwrap();
    let ok = |out: &Output| assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&scoregen(&["-q", "train", "--config", "c.toml"], dir.path()));
    // the checkpoint records the examples per class, which --class all draws in proportion to
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("runs/cond/checkpoints/step-000000030/state.json")).unwrap(),
    )
    .unwrap();
    let counts: Vec<u64> = serde_json::from_value(state["label_counts"].clone()).unwrap();
    assert!(counts.len() == 8 && counts.iter().all(|&c| c > 0), "{counts:?}");
    let sample = ["-q", "sample", "--run", "runs/cond", "--n", "20", "--steps", "10"];
    ok(&scoregen(&[&sample[..], &["--class", "3", "--guidance", "2", "--out", "c.npy"]].concat(), dir.path()));
    assert!(dir.path().join("c.npy").exists());
    // every class at once, in the training labels' proportions (the counts are
    // checked in guidance::class's unit tests; here the flag's parsing and wiring)
    ok(&scoregen(
        &["-q", "sample", "--run", "runs/cond", "--n", "80", "--steps", "10", "--class", "all", "--out", "a.npy"],
        dir.path(),
    ));
    assert!(dir.path().join("a.npy").exists());
    fails_with(&scoregen(&[&sample[..], &["--guidance", "2"]].concat(), dir.path()), &["--guidance", "sampling.class"]);
    let bad = scoregen(&[&sample[..], &["--class", "most"]].concat(), dir.path());
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.status.code() == Some(2) && why.contains("'--class <K|all>'") && why.contains("`all`"), "{why}");
    let clf = ["-q", "train-classifier", "--run", "runs/cond", "--noisy", "--steps", "20", "--out", "clf"];
    ok(&scoregen(&clf, dir.path()));
    ok(&scoregen(&[&sample[..], &["--class", "3", "--classifier", "clf", "--out", "g.npy"]].concat(), dir.path()));
    // observations: x₁ = 1.5 for two points (x₂ is ignored); the npy header pads to 64 bytes
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{header:<117}\n");
    bytes.extend((padded.len() as u16).to_le_bytes());
    bytes.extend(padded.as_bytes());
    for v in [1.5f32, 9.0, 1.5, -9.0] {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(dir.path().join("obs.npy"), bytes).unwrap();
    let inpaint = ["inpaint", "--run", "runs/cond", "--input", "obs.npy", "--steps", "10", "--out", "i.npy"];
    ok(&scoregen(&[&inpaint[..], &["--mask", "half", "--per-input", "3"]].concat(), dir.path()));
    let out = scoregen(&["--json", "classify", "--classifier", "clf", "--samples", "i.npy"], dir.path());
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 6, "two observations, three completions each");
    fails_with(&scoregen(&[&inpaint[..], &["--mask", "stripes"]].concat(), dir.path()), &["--mask", "stripes"]);
    fails_with(&scoregen(&[&inpaint[..], &["--mask", "box"]].concat(), dir.path()), &["box needs images"]);
    fails_with(
        &scoregen(&[&sample[..], &["--class", "8"]].concat(), dir.path()),
        &["--class (sampling.class): 8 is out of range", "0..7"],
    );
    ok(&scoregen(&["-q", "train", "--config", "c.toml", "--set", "model.classes=0", "--out", "plain"], dir.path()));
    let plain = ["sample", "--run", "plain", "--n", "5", "--steps", "5", "--class", "1"];
    fails_with(
        &scoregen(&plain, dir.path()),
        &["--class (sampling.class): needs a class-conditional run", "model.classes", "classifier guidance"],
    );
    // "auto": the mixture's 8 components are the labels, so the run records 8 classes
    let auto = ["-q", "train", "--config", "c.toml", "--set", "model.classes=\"auto\"", "--out", "auto"];
    ok(&scoregen(&auto, dir.path()));
    let recorded = std::fs::read_to_string(dir.path().join("auto/config.toml")).unwrap();
    assert!(recorded.contains("classes = 8"), "{recorded}");
    ok(&scoregen(
        &["-q", "sample", "--run", "auto", "--n", "5", "--steps", "5", "--class", "7", "--out", "7.npy"],
        dir.path(),
    ));
}

/// An absurd learning rate: training stops at the first non-finite loss with
/// one line naming the step, the tensor and the last good checkpoint, which
/// still loads and samples. `--detect-anomaly` names the score network's output.
#[test]
fn forced_nan_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"n\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\n[training]\nsteps = 100\nbatch_size = 64\nlr = 1e12\ngrad_clip = 0.0\nwarmup = 0\ncheckpoint_every = 1\n",
    )
    .unwrap();
    // Step 1 moves every weight by ≈ lr = 1e12 (Adam's first step has size lr); the
    // step-2 loss then overflows f32, so step 1's checkpoint is the last good one.
    let out = scoregen(&["-q", "train", "--config", "c.toml", "--out", "run"], dir.path());
    fails_with(&out, &["non-finite loss at step 2; last good checkpoint: run/checkpoints/step-000000001"]);
    let out = scoregen(&["-q", "train", "--config", "c.toml", "--out", "run2", "--detect-anomaly"], dir.path());
    fails_with(&out, &["non-finite score network output (score call 1 of this step) at step 2", "step-000000001"]);
    let out = scoregen(&["-q", "sample", "--run", "run", "--n", "50", "--steps", "10", "--out", "s.npy"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Sampling into a path under a plain file fails up front, naming the folder.
    let out = scoregen(&["-q", "sample", "--run", "run", "--n", "50", "--out", "s.npy/x.npy"], dir.path());
    fails_with(&out, &["s.npy: File exists"]);
}

/// An output location that cannot be written is reported before training
/// starts, naming the path; nothing is trained for nothing.
#[test]
fn unwritable_output_is_reported_before_training() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[training]\nsteps = 100000000\n").unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    // 10^8 steps would take hours: failing fast proves the check comes first.
    let out = scoregen(&["-q", "train", "--config", "c.toml", "--out", "file/run"], dir.path());
    fails_with(&out, &["file/run: Not a directory"]);
    // A folder nobody may write in, root included: sysfs has no operation to
    // create a file or folder at its top, whatever the permission bits (EPERM
    // or EACCES; EROFS where /sys is mounted read-only).
    let out = scoregen(&["-q", "train", "--config", "c.toml", "--out", "/sys/scoregen-run"], dir.path());
    fails_with(&out, &["/sys/scoregen-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let refused = ["Operation not permitted", "Permission denied", "Read-only file system"];
    assert!(refused.iter().any(|r| err.contains(r)), "not a refusal to write: {err}");
    // A read-only directory, where the permission bits are enforced (for every user but root).
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), "").is_err() {
        let out = scoregen(&["-q", "train", "--config", "c.toml", "--out", "ro/run"], dir.path());
        fails_with(&out, &["ro/run", "Permission denied"]);
    }
}

/// A tiny config: 2-D VP run of `steps` steps (plus any extra TOML lines).
fn tiny_config(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("c.toml"),
        format!("name = \"tiny\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 16\n[training]\nsteps = 5\nbatch_size = 32\nlog_every = 5\ncheckpoint_every = 5\n{extra}"),
    )
    .unwrap();
}

#[test]
fn set_overrides_reach_the_saved_config() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let args = [
        "-q",
        "train",
        "--config",
        "c.toml",
        "--no-report",
        "--set",
        "training.steps=3",
        "--set",
        "model.width=8",
        "--set",
        "name=over",
        "--set",
        "sde.beta_max=15.5",
        "--set",
        "sampling.sampler=ddim",
    ];
    let out = scoregen(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `name` decides the run directory; the resolved config holds every override
    let saved = scoregen::app::config::RunConfig::load(&dir.path().join("runs/over/config.toml"), &[]).unwrap();
    assert_eq!((saved.training.steps, saved.model.width, saved.sde.beta_max), (3, 8, 15.5));
    assert_eq!(saved.sampling.sampler.to_string(), "ddim");
    // values the overrides did not touch keep the file's
    assert_eq!((saved.training.batch_size, saved.training.log_every), (32, 5));
    assert!(!dir.path().join("runs/tiny").exists());
}

#[test]
fn set_errors_name_the_override_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let train = |set: &str| scoregen(&["train", "--config", "c.toml", "--set", set, "--out", "run"], dir.path());
    // an unknown key lists the valid ones
    fails_with(&train("sde.sigma_maxx=3"), &["c.toml", "field `sde", "sigma_maxx", "sigma_max", "beta_min"]);
    // a value of the wrong type names the field
    fails_with(&train("training.steps=many"), &["c.toml", "field `training.steps`", "many"]);
    // an override without `=`
    fails_with(&train("training.steps"), &["c.toml", "training.steps", "expected key=value"]);
    // an empty path segment
    fails_with(&train("training..steps=3"), &["c.toml", "not a dotted key path"]);
    // overriding inside a value that is not a table
    fails_with(&train("seed.x=1"), &["c.toml", "seed"]);
    // an override that fails validation names the validated field
    fails_with(&train("sde.beta_max=0.01"), &["c.toml", "field `sde.beta_max`", "beta_min"]);
    assert!(!dir.path().join("run").exists());
}

#[test]
fn config_parse_errors_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 5] = [
        ("name = \"x\"\n[sde\n", &["c.toml", "(syntax, line 2)"]),
        ("[training]\nsteps = -5\n", &["c.toml", "field `training.steps`"]),
        ("[sde]\nkind = \"ve2\"\n", &["c.toml", "field `sde.kind`", "ve2", "vp", "subvp"]),
        ("[modle]\nwidth = 3\n", &["c.toml", "modle", "model", "sampling"]),
        ("[sampling]\nsampler = \"rk4\"\n", &["c.toml", "field `sampling.sampler`", "rk4", "heun"]),
    ];
    for (text, needles) in cases {
        std::fs::write(dir.path().join("c.toml"), text).unwrap();
        fails_with(&scoregen(&["train", "--config", "c.toml", "--out", "run"], dir.path()), needles);
        assert!(!dir.path().join("run").exists());
    }
}

#[test]
fn report_of_a_missing_run_is_named() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(&scoregen(&["report", "--run", "nope"], dir.path()), &["nope", "config.toml"]);
}

/// Every command's `--help` shows examples, and the top-level help documents the exit codes.
#[test]
fn every_command_has_examples_in_its_help() {
    let dir = tempfile::tempdir().unwrap();
    let top = scoregen(&["--help"], dir.path());
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(top.contains("Exit codes"), "{top}");
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "{commands:?}");
    for c in &commands {
        let out = scoregen(&[c, "--help"], dir.path());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && help.contains("Example"), "`scoregen {c} --help` has no examples:\n{help}");
    }
}

/// In a build without the `cuda` feature, `--device cuda` (or `run.device` in
/// the config) fails before anything is written, in one line naming the feature;
/// a device that is not cpu/cuda[:N] is a usage error (exit 2).
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_in_a_cpu_build_names_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[training]\nsteps = 2\n").unwrap();
    let out = scoregen(&["train", "--config", "c.toml", "--out", "run", "--device", "cuda"], dir.path());
    fails_with(&out, &["cuda:0", "built without the `cuda` feature", "--features cuda"]);
    assert!(!dir.path().join("run").exists());
    std::fs::write(dir.path().join("g.toml"), "[training]\nsteps = 2\n[run]\ndevice = \"cuda:1\"\n").unwrap();
    let out = scoregen(&["train", "--config", "g.toml", "--out", "run"], dir.path());
    fails_with(&out, &["cuda:1", "built without the `cuda` feature"]);
    assert!(!dir.path().join("run").exists());
    let out = scoregen(&["--device", "cuda", "report", "--run", "nowhere"], dir.path());
    fails_with(&out, &["built without the `cuda` feature"]);
    let out = scoregen(&["quickstart", "--out", "qs", "--device", "cuda:0"], dir.path());
    fails_with(&out, &["built without the `cuda` feature"]);
    assert!(!dir.path().join("qs").exists());
    let out = scoregen(&["train", "--config", "c.toml", "--device", "tpu"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `cpu`, `cuda` or `cuda:N`"));
}

/// In a build without the `mpi` feature, `train --distributed` fails before
/// anything is written, in one line naming the feature and the build command;
/// `--shards` splits the batch on one process and must divide it.
#[cfg(not(feature = "mpi"))]
#[test]
fn distributed_in_a_build_without_mpi_names_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[model]\nwidth = 16\n[training]\nsteps = 2\nbatch_size = 32\n").unwrap();
    let out = scoregen(&["train", "--config", "c.toml", "--out", "run", "--distributed"], dir.path());
    fails_with(&out, &["--distributed", "without the `mpi` feature", "cargo build --release --features mpi", "mpirun"]);
    assert!(!dir.path().join("run").exists());
    let out = scoregen(&["train", "--config", "c.toml", "--out", "run", "--shards", "3"], dir.path());
    fails_with(&out, &["training.batch_size", "32 does not split into 3 equal shards"]);
    assert!(!dir.path().join("run").exists());
    let out =
        scoregen(&["-q", "train", "--config", "c.toml", "--out", "run", "--shards", "2", "--no-report"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Work that cannot finish or cannot fit is refused before it starts, by every
/// command that takes sizes (issue 31): a benchmark's steps, its GEMM's
/// matrices, the sampler leaderboard's budgets, the classifier's batch and
/// steps, each in one line naming the estimate and the flag to lower.
#[test]
fn commands_refuse_work_they_cannot_finish_or_hold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = scoregen(&["--quiet", "bench", "sample", "--steps", "1000000000000", "--n", "10"], d);
    fails_with(&out, &["bench sample", "3.00e12", "network evaluations", "--steps"]);
    let out = scoregen(&["--quiet", "bench", "gemm", "--n", "10000000"], d);
    fails_with(&out, &["bench gemm of 10000000×10000000", "--n"]);
    let out = scoregen(&["--quiet", "bench", "likelihood", "--steps", "1000000000000", "--n", "10"], d);
    fails_with(&out, &["bench likelihood", "network evaluations"]);
    let out = scoregen(&["--quiet", "bench", "samplers", "--budgets", "1000000000000", "--n", "10"], d);
    fails_with(&out, &["bench samplers", "--budgets"]);
    let out = scoregen(&["--quiet", "train-classifier", "--data", "digits", "--batch-size", "1000000000000"], d);
    fails_with(&out, &["classifier", "1000000000000", "batch size"]);
    let out = scoregen(&["--quiet", "train-classifier", "--data", "digits", "--steps", "1000000000000"], d);
    fails_with(&out, &["--steps", "1000000000000 steps", "1e7"]);
    assert!(!d.join("classifiers").exists(), "nothing is written for a refused request");
}
