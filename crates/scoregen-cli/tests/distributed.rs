//! Data-parallel training under `mpirun` (docs/distributed.md): two ranks with
//! B/2 points each take the step one process takes with the same global batch
//! (`--shards 2`), train gmm8 as well as one process, and a run whose rank is
//! killed stops everywhere, names the rank and resumes to the weights of an
//! uninterrupted distributed run.
//!
//! Run with `cargo test --release -p scoregen-cli --features mpi --test distributed`
//! (CI does). Without the `mpi` feature every test prints that it skipped; with it
//! and no `mpirun` on the PATH they skip too, except under CI (`CI` set), where
//! a missing Open MPI is a broken install and fails.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether this build can run the tests; prints why not when it cannot.
fn mpi_ready() -> bool {
    if !cfg!(feature = "mpi") {
        eprintln!(
            "skipped: scoregen-cli was built without the `mpi` feature \
             (cargo test --release -p scoregen-cli --features mpi --test distributed)"
        );
        return false;
    }
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
        assert!(!ci, "mpirun is missing and CI is set: scripts/setup.sh should have installed openmpi-bin");
        eprintln!("skipped: no mpirun on the PATH (scripts/setup.sh installs openmpi-bin)");
    }
    found
}

/// `mpirun -np N scoregen ARGS`: every rank one thread, on one machine, also as root.
fn mpirun(np: usize, args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none", "-np", &np.to_string(), "-x", "RAYON_NUM_THREADS=1"])
        .arg(env!("CARGO_BIN_EXE_scoregen"))
        .args(args)
        .current_dir(cwd)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // containers often forbid the cross-memory attach of the shared-memory transport
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn scoregen(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scoregen")).args(args).current_dir(cwd).output().expect("run scoregen")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn checkpoint(dir: &Path, run: &str) -> scoregen::train::Checkpoint {
    scoregen::train::checkpoint::load_latest(&dir.join(run).join("checkpoints")).unwrap()
}

/// The largest |a − b| / max|a| over each model, EMA and Adam tensor (0: bit-identical).
fn max_rel_diff(a: &scoregen::train::Checkpoint, b: &scoregen::train::Checkpoint) -> f64 {
    let mut worst = 0f64;
    for (ma, mb) in [(&a.model, &b.model), (&a.ema, &b.ema), (&a.optimizer, &b.optimizer)] {
        assert_eq!(ma.len(), mb.len());
        for (k, ta) in ma {
            let va = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let vb = mb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = va.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
            let diff = va.iter().zip(&vb).fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
            if diff > 0.0 {
                worst = worst.max(diff / scale.max(f64::MIN_POSITIVE));
            }
        }
    }
    worst
}

fn log_lines(dir: &Path, run: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One step: `mpirun -np 2 … --distributed` (each rank B/2 points, one thread)
/// against one process with `--shards 2` (the same global batch of B, drawn
/// from the same per-shard streams, the two gradients summed in one process).
/// With one thread the process is bit-identical to the two ranks: the all-reduce
/// of two ranks computes g₀ + g₁, the same single f32 addition. With two
/// threads the process splits the batch sums of the backward pass differently,
/// so its gradients differ in the last bits; after the step every model, EMA
/// and Adam tensor agrees to 1e-5 of its largest entry (f32's 6e-8 grown by
/// sums over the batch; measured 2e-7). Gradient clipping and warm-up are
/// off so that Adam's moments see the averaged gradient itself: a sum in place
/// of the mean doubles m, a rank that skips the all-reduce moves by its own
/// half-batch gradient, and both fail.
#[test]
fn two_ranks_with_half_batches_take_the_step_of_one_process() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"d\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\n[training]\nsteps = 1\nbatch_size = 64\n\
         warmup = 0\ngrad_clip = 0.0\nlog_every = 1\ncheckpoint_every = 1\n",
    )
    .unwrap();
    let common = ["-q", "train", "--config", "c.toml", "--no-report"];
    ok(&mpirun(2, &[&common[..], &["--out", "two", "--distributed", "--check-sync", "1"]].concat(), dir.path())
        .output()
        .unwrap());
    let one_process = |out: &str, threads: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_scoregen"))
            .args([&common[..], &["--out", out, "--shards", "2"]].concat())
            .env("RAYON_NUM_THREADS", threads)
            .current_dir(dir.path())
            .output()
            .unwrap();
        ok(&out);
    };
    one_process("one", "1");
    one_process("one-2threads", "2");
    ok(&scoregen(&[&common[..], &["--out", "plain"]].concat(), dir.path()));
    let ck = |run: &str| checkpoint(dir.path(), run);
    let (two, one, one2, plain) = (ck("two"), ck("one"), ck("one-2threads"), ck("plain"));
    // The loss travels through the all-reduce in f32: equal to its round-off, the rest exactly.
    let l = (two.state.last_loss, one.state.last_loss);
    assert!((l.0 - l.1).abs() <= 1e-6 * l.1.abs(), "losses {l:?}");
    let mut st = two.state.clone();
    st.last_loss = one.state.last_loss;
    assert_eq!(st, one.state, "step, Adam and EMA counters, shard 0's streams, shards = 2");
    assert_eq!(max_rel_diff(&two, &one), 0.0, "two ranks differ from one single-threaded process");
    let d = max_rel_diff(&two, &one2);
    eprintln!("two ranks vs one process with two threads: max difference {d:e} of the tensors' largest entries");
    assert!(d <= 1e-5, "two ranks differ from one process with the same global batch: {d:e}");
    let g = |run: &str| log_lines(dir.path(), run)[0]["grad_norm"].as_f64().unwrap();
    assert!((g("two") - g("one")).abs() <= 1e-6 * g("one"), "grad norms {} and {}", g("two"), g("one"));
    // Independently of the code that sums and divides: Adam's first moment after
    // one step is (1 − β₁)·ḡ, ḡ the mean of the two shards' gradients, each computed alone.
    let cfg = scoregen::app::config::RunConfig::load(&dir.path().join("c.toml"), &[]).unwrap();
    let mut trainer = scoregen::app::factory::trainer(&cfg).unwrap();
    trainer.set_parallel(scoregen::train::DataParallel { shards: 2, ..Default::default() }).unwrap();
    let (g0, g1) = (trainer.shard_gradient(0).unwrap().unwrap().1, trainer.shard_gradient(1).unwrap().unwrap().1);
    for (((name, _), a), b) in trainer.params.iter().zip(&g0).zip(&g1) {
        let m = two.optimizer[&format!("m.{name}")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) =
            (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let scale = m.iter().fold(1e-12f32, |s, x| s.max(x.abs()));
        for ((m, a), b) in m.iter().zip(&a).zip(&b) {
            let want = 0.1 * (a + b) / 2.0;
            assert!((m - want).abs() <= 1e-5 * scale, "m.{name}: {m} after the step, (1 − β₁)·mean gradient {want}");
        }
    }
    // The comparison can see a different batch: the plain run draws one shard of 64.
    assert!(max_rel_diff(&two, &plain) > 1e-3, "a different global batch should give different weights");
    assert!(!dir.path().join("two/.lock").exists());
}

/// 200 steps of gmm8 (batch 512): two ranks of 256 reach what one process
/// reaches, within the spread between two single-process seeds: the loss of
/// the last 100 steps, and the MMD² of 1000 samples to the mixture.
#[test]
fn two_ranks_train_gmm8_as_well_as_one_process() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/gmm8-vp.toml");
    let cfg = cfg.to_str().unwrap();
    let set = ["--set", "training.steps=200", "--set", "training.log_every=10"];
    let common = |out: &'static str| -> Vec<&str> {
        [&["-q", "train", "--config", cfg, "--no-report", "--out", out][..], &set[..]].concat()
    };
    ok(&mpirun(2, &[&common("two")[..], &["--distributed", "--check-sync", "50"]].concat(), dir.path())
        .output()
        .unwrap());
    ok(&scoregen(&common("one"), dir.path()));
    ok(&scoregen(&[&common("seed1")[..], &["--set", "seed=1"]].concat(), dir.path()));
    let quality = |run: &str| -> (f64, f64) {
        let lines = log_lines(dir.path(), run);
        let late: Vec<f64> =
            lines.iter().filter(|l| l["step"].as_u64().unwrap() > 100).map(|l| l["loss"].as_f64().unwrap()).collect();
        let loss = late.iter().sum::<f64>() / late.len() as f64;
        let npy = format!("{run}.npy");
        ok(&scoregen(
            &["-q", "sample", "--run", run, "--n", "1000", "--steps", "200", "--seed", "3", "--out", &npy],
            dir.path(),
        ));
        let out = scoregen(&["--json", "eval", "--samples", &npy, "--target", "gmm8"], dir.path());
        ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (loss, v["distances"]["mmd2"].as_f64().expect("distances.mmd2 in eval's JSON"))
    };
    let (two, one, seed1) = (quality("two"), quality("one"), quality("seed1"));
    eprintln!("loss, MMD²: two ranks {two:?}, one process {one:?}, one process seed 1 {seed1:?}");
    let spread_loss = (one.0 - seed1.0).abs().max(0.02 * one.0);
    let spread_mmd = (one.1 - seed1.1).abs().max(0.5 * one.1.abs()).max(1e-3);
    assert!((two.0 - one.0).abs() <= 3.0 * spread_loss, "loss {} vs {} (spread {spread_loss})", two.0, one.0);
    assert!((two.1 - one.1).abs() <= 3.0 * spread_mmd, "MMD² {} vs {} (spread {spread_mmd})", two.1, one.1);
}

/// The process of rank `rank` among mpirun's children (its environment names the rank).
fn rank_pid(mpirun_pid: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{mpirun_pid}/task/{mpirun_pid}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|p| {
        std::fs::read(format!("/proc/{p}/environ"))
            .is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()))
    })
}

fn latest(run: &Path) -> usize {
    std::fs::read_to_string(run.join("checkpoints/latest"))
        .ok()
        .and_then(|s| s.trim().trim_start_matches("step-").parse().ok())
        .unwrap_or(0)
}

/// SIGKILL rank 1 of a two-rank run: within seconds every process is gone,
/// mpirun's message names rank 1, the newest checkpoint loads, resuming with
/// one process and one shard is refused with the way forward, and
/// `mpirun -np 2 … --resume` ends with exactly the weights of an uninterrupted
/// two-rank run.
#[test]
fn a_killed_rank_stops_every_rank_and_the_run_resumes() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"k\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 64\n[training]\nsteps = 3000\nbatch_size = 128\n\
         log_every = 10\ncheckpoint_every = 25\n",
    )
    .unwrap();
    let args = |out: &'static str| -> Vec<&str> {
        vec!["-q", "train", "--config", "c.toml", "--no-report", "--out", out, "--distributed"]
    };
    let mut child =
        mpirun(2, &args("killed"), dir.path()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let run = dir.path().join("killed");
    let start = Instant::now();
    while latest(&run) < 50 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint at step 50 after 2 min");
        std::thread::sleep(Duration::from_millis(5));
    }
    let victim = rank_pid(child.id(), 1).expect("rank 1 among mpirun's children");
    let survivor = rank_pid(child.id(), 0).expect("rank 0 among mpirun's children");
    // SAFETY: sends SIGKILL to a process this test started (a child of its mpirun).
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    let out = loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break child.wait_with_output().unwrap();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(20), "mpirun still running 20 s after rank 1 was killed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped = killed_at.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    eprintln!("stopped {stopped:?} after the kill; mpirun said:\n{err}");
    assert!(!out.status.success());
    assert!(err.contains("rank 1"), "mpirun's message should name rank 1: {err}");
    assert!(!Path::new(&format!("/proc/{survivor}")).exists() || is_zombie(survivor), "rank 0 still running");
    let ck = checkpoint(dir.path(), "killed");
    assert!(ck.state.step >= 50 && ck.state.shards == 2, "{:?}", ck.state);

    // Another number of shards is refused, naming the way forward.
    let plain =
        scoregen(&["-q", "train", "--config", "c.toml", "--no-report", "--out", "killed", "--resume"], dir.path());
    let msg = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success() && msg.contains("2 shard(s)") && msg.contains("mpirun -np 2"), "{msg}");

    // Resume to the end (a shorter run), and the same run without the kill.
    let short = ["--set", "training.steps=400"];
    ok(&mpirun(2, &[&args("killed")[..], &["--resume"], &short[..]].concat(), dir.path()).output().unwrap());
    ok(&mpirun(2, &[&args("straight")[..], &short[..]].concat(), dir.path()).output().unwrap());
    let (a, b) = (checkpoint(dir.path(), "straight"), checkpoint(dir.path(), "killed"));
    assert_eq!(a.state.step, 400);
    assert_eq!(a.state, b.state);
    assert_eq!(max_rel_diff(&a, &b), 0.0, "kill and resume changed the weights");
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Rank 1 alone meets a non-finite loss at step 3 (injected): both ranks
/// stop at step 3, rank 1 naming its shard, rank 0 naming the other process,
/// and rank 0's step-2 checkpoint is the last good one.
#[test]
fn a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step() {
    if !mpi_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "name = \"n\"\n[sde]\nkind = \"vp\"\n[model]\nwidth = 32\n[training]\nsteps = 100\nbatch_size = 64\n\
         checkpoint_every = 1\n",
    )
    .unwrap();
    let out = mpirun(2, &["-q", "train", "--config", "c.toml", "--out", "run", "--distributed"], dir.path())
        .env("SCOREGEN_TEST_NAN_AT", "3:1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(!out.status.success(), "{err}");
    let tail = "at step 3; last good checkpoint: run/checkpoints/step-000000002";
    assert!(
        err.contains(&format!(
            "rank 1 of 2: training run: non-finite loss (injected by SCOREGEN_TEST_NAN_AT) (shard 1 of 2) {tail}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("rank 0 of 2: training run: non-finite loss on 1 other process(es) of 2 {tail}")),
        "{err}"
    );
    assert_eq!(checkpoint(dir.path(), "run").state.step, 2);
}
