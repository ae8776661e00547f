//! Argument groups used by several commands, flattened into their `Args`.
//! (Plain `//` comments on the structs: a doc comment would become the
//! command's about text.)

use anyhow::Result;
use clap::Args;
use scoregen::app::config::RunConfig;
use std::path::PathBuf;

// A trained run and which of its weights to use.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long)]
    pub run: PathBuf,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub no_ema: bool,
}

// `--set KEY=VALUE` overrides of a config.
#[derive(Debug, Args)]
pub struct Overrides {
    /// Override a config value, e.g. --set sde.sigma_max=20 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

// A TOML config and the overrides applied to it.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub overrides: Overrides,
}

impl ConfigArgs {
    /// The config file with the `--set` overrides applied.
    pub fn load(&self) -> Result<RunConfig> {
        Ok(RunConfig::load(&self.config, &self.overrides.set)?)
    }
}
