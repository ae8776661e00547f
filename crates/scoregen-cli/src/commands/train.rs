//! `scoregen train`: train a score model from a config, then write its report.

use super::shared::ConfigArgs;
use super::Globals;
use anyhow::Result;
use scoregen::device::DeviceSpec;
use scoregen::train::{DataParallel, ExistingRun, TrainOptions};
use std::path::{Path, PathBuf};

/// Train a score model from a TOML config; ends by writing the run report RUN/report.html.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen train --config configs/gmm8-vp.toml\n  scoregen train --config configs/gmm8-ve.toml --set training.steps=8000 --out runs/long\n  scoregen train --config configs/gmm8-ve.toml --out runs/long --resume\n  scoregen train --config configs/gmm8-ve.toml --out runs/long --overwrite   # the old run goes to runs/long.old-<time>\n  scoregen train --config configs/digits-vp.toml --device cuda   (a build with the cuda feature; docs/gpu.md)\n  mpirun -np 2 scoregen train --config configs/gmm8-vp.toml --distributed   (a build with the mpi feature; docs/distributed.md)\n\nA folder that already holds a run is never replaced silently: give --resume, --overwrite or another --out.\nOne process at a time writes a run (RUN/.lock holds its pid; a lock left by a killed process is taken over)."
)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Run directory (default: runs/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the run directory.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start over in a directory that already holds a run: the old run is first moved to
    /// OUT.old-YYYYMMDD-HHMMSS (UTC), nothing is deleted. Without it (or --resume), such a folder is refused.
    #[arg(long)]
    overwrite: bool,
    /// On a non-finite loss or gradient, name the first non-finite tensor among the batch, the score
    /// network's inputs and outputs, the gradients and the updated parameters (checked every step).
    #[arg(long)]
    detect_anomaly: bool,
    /// Skip the run report (RUN/report.html) written after training (written by default).
    #[arg(long)]
    no_report: bool,
    /// Data-parallel training under mpirun (`mpirun -np N scoregen train --distributed …`): each
    /// process computes 1/N of every batch, gradients are averaged over MPI (NCCL on GPUs), rank 0
    /// writes the run. Needs a build with the `mpi` feature (docs/distributed.md).
    #[arg(long)]
    distributed: bool,
    /// Split every batch into S shards with their own random streams (default: one per process).
    /// One process with --shards N draws the same batches as N processes and reaches the same
    /// weights to float round-off; a resume must keep S.
    #[arg(long, value_name = "S")]
    shards: Option<usize>,
    /// With --distributed: every K steps compare a hash of each process's parameters, Adam
    /// moments and EMA, and stop naming the ranks that differ (always checked once at the start).
    #[arg(long, value_name = "K", default_value_t = 0)]
    check_sync: usize,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    if args.shards == Some(0) {
        anyhow::bail!("--shards must be at least 1");
    }
    if args.distributed {
        return distributed::run(args, g);
    }
    let parallel = DataParallel { shards: args.shards.unwrap_or(1), ..DataParallel::default() };
    train(args, g, parallel, None)
}

/// Trains and reports; rank 0 (or the only process) writes and prints.
fn train(args: &Args, g: &Globals, parallel: DataParallel, device: Option<DeviceSpec>) -> Result<()> {
    let mut cfg = args.config.load()?;
    cfg.run.device = device.unwrap_or(g.device_or(cfg.run.device));
    let device = cfg.run.device.open()?;
    let writer = parallel.collective.rank() == 0;
    let dir = args.out.clone().unwrap_or_else(|| Path::new("runs").join(&cfg.name));
    let existing = if args.overwrite { ExistingRun::MoveAside } else { ExistingRun::Refuse };
    let opts = TrainOptions {
        resume: args.resume,
        quiet: g.quiet,
        stop_after: None,
        detect_anomaly: args.detect_anomaly,
        existing,
        check_sync: args.check_sync,
        on_log: None,
    };
    let trained =
        scoregen::app::commands::train::train_and_report(&cfg, &dir, &opts, parallel, !args.no_report, &device)
            .map_err(|e| {
                let context = e.context(&dir);
                anyhow::Error::new(e.into_inner()).context(context)
            })?;
    if !writer {
        return Ok(());
    }
    let (outcome, report) = (trained.outcome, trained.report);
    if g.json {
        super::print_json(&serde_json::json!({
            "run": dir, "step": outcome.step, "final_loss": outcome.final_loss,
            "seconds": outcome.seconds, "steps_per_sec": outcome.steps_per_sec, "checkpoint": outcome.checkpoint,
            "report": report, "moved_aside": outcome.moved_aside}));
    } else {
        if let Some(old) = &outcome.moved_aside {
            println!("the earlier run in {} was moved to {}", dir.display(), old.display());
        }
        println!(
            "trained {} to step {} in {:.1} s ({:.0} steps/s), final loss {:.4}\ncheckpoint: {}",
            dir.display(),
            outcome.step,
            outcome.seconds,
            outcome.steps_per_sec,
            outcome.final_loss,
            outcome.checkpoint.display()
        );
        if let Some(r) = report {
            println!("report: {}", r.display());
        }
    }
    Ok(())
}

/// `--distributed`: the processes of `mpirun`, over MPI (NCCL for CUDA devices
/// in a build with `nccl`). An error only some ranks see (a refused folder,
/// a failed write) ends every process at once through `MPI_Abort`, naming the
/// rank; the errors every rank reaches together at the same step (a
/// non-finite loss, Ctrl-C) end them normally, after rank 0's checkpoint.
#[cfg(feature = "mpi")]
mod distributed {
    use super::{train, Args, DataParallel};
    use crate::commands::Globals;
    use anyhow::Result;

    pub fn run(args: &Args, g: &Globals) -> Result<()> {
        let (collective, device) = scoregen::app::commands::train::mpi_world(g.device)?;
        let (rank, size) = (collective.rank(), collective.size());
        let parallel = DataParallel { collective: collective.clone(), shards: args.shards.unwrap_or(0) };
        match train(args, g, parallel, device) {
            Ok(()) => Ok(()),
            Err(e) if agreed(&e).is_some() => {
                // Every rank stopped at this step; rank 0 has saved what it keeps. Each
                // prints, then all wait for each other, so mpirun ends none mid-write.
                let code = agreed(&e).unwrap_or(1);
                let line = format!("error: rank {rank} of {size}: {e:#}\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                let _ = collective.all_gather_u64(0);
                drop(collective); // the last reference: MPI_Finalize
                std::process::exit(code)
            }
            Err(e) => {
                let line = format!("error: rank {rank} of {size}: {e:#}; stopping all {size} processes (MPI_Abort)\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                collective.abort(1)
            }
        }
    }

    /// The exit code of an error that every rank returns at the same step
    /// (a non-finite loss: 1, Ctrl-C: 130); `None` for any other.
    fn agreed(e: &anyhow::Error) -> Option<i32> {
        e.chain().find_map(|c| match c.downcast_ref::<scoregen::error::Error>() {
            Some(scoregen::error::Error::NonFinite { .. }) => Some(1),
            Some(scoregen::error::Error::Interrupted(_)) => Some(130),
            _ => None,
        })
    }
}

#[cfg(not(feature = "mpi"))]
mod distributed {
    use super::Args;
    use crate::commands::Globals;

    pub fn run(_: &Args, _: &Globals) -> anyhow::Result<()> {
        anyhow::bail!(
            "--distributed: this scoregen was built without the `mpi` feature; build it with \
             `cargo build --release --features mpi` (needs Open MPI: scripts/setup.sh installs openmpi-bin, \
             libopenmpi-dev and libclang-dev) and start it with `mpirun -np N scoregen train --distributed …` \
             (docs/distributed.md)"
        )
    }
}
