//! `scoregen train`: builds the trainer from a config and runs the loop into a run folder.

use crate::app::config::RunConfig;
use crate::app::factory;
use crate::error::Result;
use crate::train::{self, TrainOptions, TrainOutcome};
use std::path::Path;

/// Trains `cfg` in `run_dir` (writing `config.toml`, `metrics.jsonl`,
/// `checkpoints/`); data and model are built first, so bad input fails before
/// anything is written.
pub fn train(cfg: &RunConfig, run_dir: &Path, opts: &TrainOptions) -> Result<TrainOutcome> {
    train::train(factory::trainer(cfg)?, run_dir, opts)
}
