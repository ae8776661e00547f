//! Faults a user meets through the binary (docs/reliability.md): a run is
//! never replaced silently, one process at a time writes a run, `kill -9`
//! anywhere (inside checkpoint writes too) resumes bit for bit, Ctrl-C stops
//! cleanly, absurd requests are refused by their memory estimate, and a full
//! disk stops training with its last checkpoint intact.

use std::path::Path;
use std::process::{Command, Output};

fn scoregen(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scoregen")).args(args).current_dir(cwd).output().expect("run scoregen")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

/// A tiny 2-D VP config (plus any extra TOML lines).
fn tiny_config(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("c.toml"),
        format!("name = \"tiny\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 16\n[training]\nsteps = 5\nbatch_size = 32\nlog_every = 5\ncheckpoint_every = 5\n{extra}"),
    )
    .unwrap();
}

/// `train` into a folder that holds a run refuses, naming the folder and the
/// three ways forward; `--overwrite` moves the old run aside (nothing is
/// deleted); `sample --out` and `inpaint --out` refuse an existing file
/// unless `--overwrite`; the quickstart replaces its own default folder.
#[test]
fn no_command_replaces_an_earlier_run_or_output_silently() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let train = |extra: &[&str]| {
        scoregen(&[&["-q", "train", "--config", "c.toml", "--out", "run", "--no-report"], extra].concat(), dir.path())
    };
    ok(&train(&[]));
    let step5 = dir.path().join("run/checkpoints/step-000000005");
    assert!(step5.is_dir());
    fails_with(
        &train(&["--set", "training.steps=3"]),
        &["run already holds a run (newest checkpoint step-000000005)", "--resume", "--overwrite", "another --out"],
    );
    assert!(step5.is_dir(), "the refused run left the old one as it was");
    assert!(!dir.path().join("run/.lock").exists(), "the lock is released on error");
    let both = train(&["--resume", "--overwrite"]);
    assert_eq!(both.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&both.stderr).contains("'--resume' cannot be used with '--overwrite'"));
    // --overwrite: the old run moves to run.old-<time>, whole.
    let out = train(&["--overwrite", "--set", "training.steps=3"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("was moved to run.old-"));
    let old: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run.old-"))
        .collect();
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].join("checkpoints/step-000000005/model.safetensors").is_file());
    assert!(old[0].join("config.toml").is_file() && old[0].join("metrics.jsonl").is_file());
    assert!(dir.path().join("run/checkpoints/step-000000003").is_dir() && !step5.exists());
    // --resume extends it.
    ok(&train(&["--resume", "--set", "training.steps=4"]));
    assert!(dir.path().join("run/checkpoints/step-000000004").is_dir());

    // Named output files.
    let sample = |extra: &[&str]| {
        scoregen(
            &[&["-q", "sample", "--run", "run", "--n", "20", "--steps", "5", "--out", "s.npy"], extra].concat(),
            dir.path(),
        )
    };
    ok(&sample(&[]));
    let before = std::fs::read(dir.path().join("s.npy")).unwrap();
    fails_with(&sample(&["--seed", "3"]), &["s.npy already exists", "--overwrite", "another --out"]);
    assert_eq!(std::fs::read(dir.path().join("s.npy")).unwrap(), before, "refused: the file is untouched");
    ok(&sample(&["--seed", "3", "--overwrite"]));
    assert_ne!(std::fs::read(dir.path().join("s.npy")).unwrap(), before);
    // The default output inside the run is the run's own and is replaced (documented in --help).
    ok(&scoregen(&["-q", "sample", "--run", "run", "--n", "20", "--steps", "5"], dir.path()));
    ok(&scoregen(&["-q", "sample", "--run", "run", "--n", "20", "--steps", "5"], dir.path()));
    let inpaint =
        ["-q", "inpaint", "--run", "run", "--input", "s.npy", "--mask", "half", "--steps", "5", "--out", "i.npy"];
    ok(&scoregen(&inpaint, dir.path()));
    fails_with(&scoregen(&inpaint, dir.path()), &["i.npy already exists", "--overwrite"]);
    ok(&scoregen(&[&inpaint[..], &["--overwrite"]].concat(), dir.path()));
}

/// The quickstart replaces its own folder (run twice, as users do), but an
/// explicit `--out` holding a run is refused unless `--overwrite`.
#[test]
fn quickstart_runs_twice_in_its_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    let quick =
        ["-q", "quickstart", "--set", "training.steps=20", "--set", "sampling.steps=10", "--set", "sampling.n=200"];
    ok(&scoregen(&quick, dir.path()));
    ok(&scoregen(&quick, dir.path()));
    assert!(dir.path().join("runs/quickstart/checkpoints/step-000000020").is_dir());
    let other = [&quick[..], &["--out", "runs/mine"]].concat();
    ok(&scoregen(&other, dir.path()));
    fails_with(&scoregen(&other, dir.path()), &["runs/mine already holds a run", "--overwrite"]);
    ok(&scoregen(&[&other[..], &["--overwrite"]].concat(), dir.path()));
}

/// A run being written is locked: a second `train` on it fails naming the
/// holder's pid; a lock file left by a dead process is taken over.
#[test]
fn a_locked_run_refuses_a_second_writer_and_a_stale_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let resume = ["-q", "train", "--config", "c.toml", "--out", "run", "--no-report", "--resume"];
    ok(&scoregen(&["-q", "train", "--config", "c.toml", "--out", "run", "--no-report"], dir.path()));
    // This test process holds the lock, as a running `train` would.
    let lock = scoregen::io::fs::RunLock::acquire(&dir.path().join("run")).unwrap();
    let pid = std::process::id().to_string();
    fails_with(
        &scoregen(&[&resume[..], &["--set", "training.steps=6"]].concat(), dir.path()),
        &["run: the run is in use by process", &pid, "run/.lock"],
    );
    drop(lock);
    // A lock file whose process is gone (nobody holds its flock): taken over, with a warning.
    std::fs::write(dir.path().join("run/.lock"), "4000000\n").unwrap();
    let out = scoregen(&[&resume[..], &["--set", "training.steps=6"]].concat(), dir.path());
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stale lock of process 4000000"));
    assert!(!dir.path().join("run/.lock").exists(), "released on exit");
    assert!(dir.path().join("run/checkpoints/step-000000006").is_dir());
}

/// Where a checkpoint write can be cut (`io::fs::kill_point`): after creating
/// the temporary folder, after each file, after the rename, after `latest`,
/// after removing an old checkpoint.
const KILL_POINTS: [&str; 9] = [
    "start",
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
    "SHA256SUMS",
    "renamed",
    "latest",
    "pruned",
];

/// `kill -9` at 20 seeded random moments, resuming after each: half are sent
/// from outside a random 0–30 ms after the run passes a random step (between
/// or during checkpoint writes; the process kills itself 100 steps later if the
/// outside kill has not landed by then), half by the process itself at a random point
/// inside a random checkpoint write. The final weights, EMA, Adam moments and
/// state equal an uninterrupted run's bit for bit, and the log holds every
/// logged step once.
#[test]
fn twenty_kills_anywhere_resume_to_identical_weights() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"k\"\n[data]\nn_train = 2000\n[sde]\nkind = \"vp\"\n[model]\nwidth = 16\n[training]\nsteps = 2000\nbatch_size = 32\nlog_every = 10\ncheckpoint_every = 7\n",
    )
    .unwrap();
    let train = ["-q", "train", "--config", "c.toml", "--no-report", "--out"];
    ok(&scoregen(&[&train[..], &["straight"]].concat(), dir.path()));
    let latest = || -> usize {
        std::fs::read_to_string(dir.path().join("killed/checkpoints/latest"))
            .ok()
            .and_then(|s| s.trim().trim_start_matches("step-").parse().ok())
            .unwrap_or(0)
    };
    let mut rng = scoregen::rng::Rng::new(20, 0);
    let (mut kills, mut inside_writes, mut from_outside, mut attempts) = (0, 0, 0, 0);
    while kills < 20 {
        attempts += 1;
        assert!(attempts < 40, "only {kills} kills landed in {attempts} attempts");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scoregen"));
        cmd.args(train).arg("killed").current_dir(dir.path());
        // The first run starts the folder; every later one resumes it.
        if dir.path().join("killed/checkpoints/latest").exists() {
            cmd.arg("--resume");
        } else if dir.path().join("killed").exists() {
            cmd.arg("--overwrite");
        }
        let from = latest();
        if kills % 2 == 1 {
            // Inside the write of one of the next three checkpoints.
            let step = (from / 7 + 1 + rng.below(3)) * 7;
            let point = KILL_POINTS[rng.below(KILL_POINTS.len())];
            let point = if point == "pruned" && step < 21 { "latest" } else { point };
            let status = cmd.env("SCOREGEN_TEST_KILL_AT", format!("{step}:{point}")).status().unwrap();
            assert_eq!(status.signal(), Some(9), "the kill point {step}:{point} was not reached");
            kills += 1;
            inside_writes += 1;
        } else {
            // Anywhere between checkpoints, from outside: SIGKILL once the run has
            // checkpointed `target`, after a random delay. On a fast machine the
            // run could outrun the poll, so the process also kills itself 100 steps
            // after `target` (the `step` kill point): every attempt is a kill.
            let target = from + 1 + rng.below(15);
            let delay = rng.below(30) as u64;
            let mut child = cmd.env("SCOREGEN_TEST_KILL_AT", format!("{}:step", target + 100)).spawn().unwrap();
            let start = std::time::Instant::now();
            while latest() < target && start.elapsed().as_secs() < 60 && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            std::thread::sleep(std::time::Duration::from_millis(delay));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                from_outside += 1;
            }
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(9), "the run was not killed (target {target})");
            kills += 1;
        }
        assert!(latest() < 2000, "the run finished before the 20th kill ({kills} kills)");
    }
    assert_eq!(inside_writes, 10);
    eprintln!("{from_outside} of the 10 kills between checkpoints came from outside");
    ok(&scoregen(&[&train[..], &["killed", "--resume"]].concat(), dir.path()));
    let a = scoregen::train::checkpoint::load_latest(&dir.path().join("straight/checkpoints")).unwrap();
    let b = scoregen::train::checkpoint::load_latest(&dir.path().join("killed/checkpoints")).unwrap();
    assert_eq!(a.state, b.state);
    for (ma, mb) in [(&a.model, &b.model), (&a.ema, &b.ema), (&a.optimizer, &b.optimizer)] {
        assert_eq!(ma.len(), mb.len());
        for (k, ta) in ma {
            let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let vb = mb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{k} differs after 20 kills");
        }
    }
    let steps = |run: &str| -> Vec<usize> {
        scoregen::train::read_log(&dir.path().join(run).join("metrics.jsonl")).unwrap().iter().map(|l| l.step).collect()
    };
    assert_eq!(steps("killed"), steps("straight"));
    assert!(!dir.path().join("killed/.lock").exists());
}

/// Requests that cannot fit in memory are refused at once, naming the
/// estimate and the available memory, before anything is allocated or written.
#[test]
fn absurd_requests_are_refused_by_their_memory_estimate() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    ok(&scoregen(&["-q", "train", "--config", "c.toml", "--out", "run", "--no-report"], dir.path()));
    let start = std::time::Instant::now();
    let needles = ["needs about", "is available (MemAvailable in /proc/meminfo)"];
    let out = scoregen(&["-q", "sample", "--run", "run", "--n", "100000000000", "--out", "s.npy"], dir.path());
    fails_with(&out, &[&needles[..], &["sampling 100000000000 points of dimension 2", "--n"]].concat());
    assert!(!dir.path().join("s.npy").exists());
    let out =
        scoregen(&["-q", "sample", "--run", "run", "--n", "100000000000", "--steps", "1000", "--gif"], dir.path());
    fails_with(&out, &[&needles[..], &["with 42 frames"]].concat());
    let out = scoregen(&["-q", "likelihood", "--run", "run", "--data", "gmm8", "--n", "100000000000"], dir.path());
    fails_with(&out, &[&needles[..], &["log p of 100000000000 points"]].concat());
    let big = ["-q", "train", "--config", "c.toml", "--out", "big", "--set", "training.batch_size=1000000"];
    let out = scoregen(&[&big[..], &["--set", "model.width=16384"]].concat(), dir.path());
    fails_with(
        &out,
        &[&needles[..], &["training a 16384-wide model with batches of 1000000", "training.batch_size"]].concat(),
    );
    assert!(!dir.path().join("big").exists(), "refused before the run folder is made");
    // A cap below MemAvailable for shared machines.
    let out = Command::new(env!("CARGO_BIN_EXE_scoregen"))
        .args(["-q", "sample", "--run", "run", "--n", "1000", "--steps", "5", "--out", "t.npy"])
        .env("SCOREGEN_MEMORY_LIMIT", "100000")
        .current_dir(dir.path())
        .output()
        .unwrap();
    fails_with(&out, &["sampling 1000 points", "97.7 KiB is available"]);
    assert!(start.elapsed().as_secs() < 10, "refusals are immediate");
}

/// Sends SIGINT to a child process.
fn interrupt(child: &std::process::Child) {
    // SAFETY: signals a child process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

/// Ctrl-C during training stops after the current step with a checkpoint of
/// it (exit 130), and the run resumes to the same weights as an uninterrupted
/// one; Ctrl-C during sampling stops it and writes nothing.
#[test]
fn ctrl_c_keeps_a_checkpoint_and_a_sample_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let train = [
        "-q",
        "train",
        "--config",
        "c.toml",
        "--no-report",
        "--set",
        "training.log_every=1",
        "--set",
        "training.checkpoint_every=100000",
        "--out",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_scoregen"))
        .args([&train[..], &["run", "--set", "training.steps=100000000"]].concat())
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The loop is running once it has logged 20 steps.
    let log = dir.path().join("run/metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 20 {
        assert!(start.elapsed().as_secs() < 30 && child.try_wait().unwrap().is_none(), "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    let ck = scoregen::train::checkpoint::load_latest(&dir.path().join("run/checkpoints")).unwrap();
    let step = ck.state.step;
    assert!(step >= 20, "{step}");
    assert!(
        err.contains(&format!(
            "interrupted: training stopped at step {step}; checkpoint: run/checkpoints/step-{step:09}; continue with --resume"
        )),
        "{err}"
    );
    assert!(!dir.path().join("run/.lock").exists());
    // Resumed to step + 10, the weights equal a run trained straight to step + 10.
    let to = format!("training.steps={}", step + 10);
    ok(&scoregen(&[&train[..], &["run", "--resume", "--set", &to]].concat(), dir.path()));
    ok(&scoregen(&[&train[..], &["straight", "--set", &to]].concat(), dir.path()));
    let a = scoregen::train::checkpoint::load_latest(&dir.path().join("run/checkpoints")).unwrap();
    let b = scoregen::train::checkpoint::load_latest(&dir.path().join("straight/checkpoints")).unwrap();
    assert_eq!(a.state, b.state);
    for (k, ta) in &a.model {
        let (va, vb) = (
            ta.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.model[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{k}");
    }

    // Sampling for ~an hour (9·10⁶ steps, under the 10⁷-evaluation bound), interrupted after 1.5 s: exit 130 and no file at all.
    let child = Command::new(env!("CARGO_BIN_EXE_scoregen"))
        .args(["-q", "sample", "--run", "run", "--n", "50", "--steps", "9000000", "--gif", "--out", "out/s.npy"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted: sampling stopped; nothing was written"));
    let left: Vec<_> =
        std::fs::read_dir(dir.path().join("out")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// Runs `scoregen args` with every file it writes limited to `max_bytes`
/// (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past it fails with EFBIG): a
/// disk that fills up, for this process only.
fn scoregen_with_file_limit(args: &[&str], cwd: &Path, max_bytes: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scoregen"));
    cmd.args(args).current_dir(cwd);
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: max_bytes, rlim_max: max_bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// Compares two runs' newest checkpoints bit for bit.
fn same_weights(a: &Path, b: &Path) {
    let a = scoregen::train::checkpoint::load_latest(&a.join("checkpoints")).unwrap();
    let b = scoregen::train::checkpoint::load_latest(&b.join("checkpoints")).unwrap();
    assert_eq!(a.state, b.state);
    for (ma, mb) in [(&a.model, &b.model), (&a.ema, &b.ema), (&a.optimizer, &b.optimizer)] {
        for (k, ta) in ma {
            let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let vb = mb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{k}");
        }
    }
}

/// The disk fills while training (every file limited to 25 KB: the log hits
/// it at about step 210, the largest checkpoint file is 19 KB): training stops with one line naming the file, the error and the
/// last good checkpoint, which loads; once there is room again, `--resume`
/// finishes the run with the weights of one that never ran out of space.
#[test]
fn a_full_disk_stops_training_keeps_the_checkpoint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let train = [
        "-q",
        "train",
        "--config",
        "c.toml",
        "--no-report",
        "--set",
        "training.steps=300",
        "--set",
        "training.log_every=1",
        "--set",
        "training.checkpoint_every=20",
        "--out",
    ];
    let out = scoregen_with_file_limit(&[&train[..], &["run"]].concat(), dir.path(), 25_000);
    fails_with(&out, &["run/metrics.jsonl: File too large", "last good checkpoint: run/checkpoints/step-", "--resume"]);
    let ck = scoregen::train::checkpoint::load_latest(&dir.path().join("run/checkpoints")).unwrap();
    assert!((20..300).contains(&ck.state.step), "{}", ck.state.step);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("step-{:09}", ck.state.step)));
    assert!(!dir.path().join("run/.lock").exists());
    ok(&scoregen(&[&train[..], &["run", "--resume"]].concat(), dir.path()));
    ok(&scoregen(&[&train[..], &["straight"]].concat(), dir.path()));
    same_weights(&dir.path().join("run"), &dir.path().join("straight"));
    let steps = scoregen::train::read_log(&dir.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(steps.iter().map(|l| l.step).collect::<Vec<_>>(), (1..=300).collect::<Vec<_>>());
}

/// The same on a real file system that runs out of space (a 96 KiB tmpfs, so
/// ENOSPC lands wherever the disk fills: the log or a checkpoint); needs
/// mount, so it runs as root (CI) and says so when it cannot.
#[test]
fn a_full_tmpfs_stops_training_keeps_the_checkpoint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    let mnt = dir.path().join("disk");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&mnt)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !mount("size=96k") {
        println!("skipped: cannot mount a tmpfs here (not root?); the RLIMIT_FSIZE test covers the same path");
        return;
    }
    let umount = scopeguard(&mnt);
    let train = [
        "-q",
        "train",
        "--config",
        "c.toml",
        "--no-report",
        "--set",
        "training.steps=2000",
        "--set",
        "training.log_every=1",
        "--set",
        "training.checkpoint_every=25",
        "--out",
        "disk/run",
    ];
    let out = scoregen(&train, dir.path());
    fails_with(&out, &["No space left on device", "last good checkpoint: disk/run/checkpoints/step-", "--resume"]);
    let ck = scoregen::train::checkpoint::load_latest(&mnt.join("run/checkpoints")).unwrap();
    assert!((25..2000).contains(&ck.state.step), "{}", ck.state.step);
    assert!(!mnt.join("run/.lock").exists());
    assert!(mount("remount,size=4m"), "remount with room");
    ok(&scoregen(&[&train[..], &["--resume"]].concat(), dir.path()));
    let straight = [&train[..train.len() - 1], &["straight"]].concat();
    ok(&scoregen(&straight, dir.path()));
    same_weights(&mnt.join("run"), &dir.path().join("straight"));
    drop(umount);
}

/// Unmounts `path` when dropped (also when an assertion fails).
fn scopeguard(path: &Path) -> impl Drop + '_ {
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    Unmount(path)
}
