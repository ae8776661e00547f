//! `scoregen train`: builds the trainer from a config and runs the loop into a run folder.

use crate::app::config::RunConfig;
use crate::app::factory;
use crate::error::Result;
use crate::train::{self, TrainOptions, TrainOutcome};
use std::path::Path;

/// Trains `cfg` in `run_dir` (writing `config.toml`, `metrics.jsonl`,
/// `checkpoints/`); data and model are built first, so bad input fails before
/// anything is written. A folder that already holds a run is refused before
/// the data are read unless `opts` resumes it or says how to replace it
/// ([`train::ExistingRun`]); [`train::train`] checks again under the run's lock.
pub fn train(cfg: &RunConfig, run_dir: &Path, opts: &TrainOptions) -> Result<TrainOutcome> {
    if !opts.resume {
        train::check_existing(run_dir, opts.existing)?;
    }
    train::train(factory::trainer(cfg)?, run_dir, opts)
}
