//! `scoregen list`: the catalogue of what the library knows.

use super::Globals;
use anyhow::Result;

/// What scoregen knows: data sets, SDEs, models, objectives, samplers, with one line each.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  scoregen list\n  scoregen --json list")]
pub struct Args {}

pub fn run(_args: &Args, g: &Globals) -> Result<()> {
    let catalogue = scoregen::app::commands::list::catalogue();
    g.print(&catalogue, |catalogue| {
        for (section, entries) in catalogue {
            println!("{section}:");
            let w = entries.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            for (name, what) in entries {
                println!("  {name:<w$}  {what}");
            }
        }
    });
    Ok(())
}
