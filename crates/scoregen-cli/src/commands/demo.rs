//! `scoregen demo`: the seed's figures, drawn with exact scores.

use super::Globals;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

/// The seed's figures on exact scores: langevin, pitfall, forward-reverse.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen demo langevin --out runs/demo\n  scoregen demo pitfall --out runs/demo\n  scoregen demo forward-reverse --out runs/demo"
)]
pub struct Args {
    #[command(subcommand)]
    which: Demo,
}

#[derive(Debug, Subcommand)]
enum Demo {
    /// langevin.gif: particles under Langevin dynamics with the exact score of gmm8.
    Langevin {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
    /// pitfall.png: the score error of a noise-free model, and plain vs annealed Langevin on `unbalanced`.
    Pitfall {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
    /// forward_reverse.png: forward-SDE paths data → noise and reverse-SDE paths noise → data over p_t, for a 1-D mixture.
    ForwardReverse {
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    match &args.which {
        Demo::Langevin { out } => {
            let d = scoregen::app::commands::demo::langevin(out, g.quiet, &g.open_device()?)?;
            g.print(&d, |d| {
                println!(
                    "Langevin dynamics on gmm8 (exact score): {}/{} modes covered, weights {:.3}–{:.3}\nwrote {} and {}",
                    d.modes.covered,
                    d.modes.n_modes,
                    d.modes.weights.iter().cloned().fold(f64::INFINITY, f64::min),
                    d.modes.weights.iter().cloned().fold(0.0, f64::max),
                    d.gif.display(),
                    d.final_png.display()
                );
            });
        }
        Demo::Pitfall { out } => {
            let d = scoregen::app::commands::demo::pitfall(out, g.quiet, &g.open_device()?)?;
            g.print(&d, |d| {
                println!(
                    "weight of the 0.8 mode of `unbalanced`, exact scores, {} score evaluations each:",
                    d.langevin_steps
                );
                println!("  true                    {:.3}", d.true_weight);
                println!("  Langevin                {:.3}", d.langevin_weight);
                println!("  annealed Langevin       {:.3}", d.annealed_weight);
                println!("wrote {}", d.png.display());
            });
        }
        Demo::ForwardReverse { out, seed } => {
            let p = scoregen::app::commands::demo::forward_reverse(out, *seed, &g.open_device()?)?;
            if g.json {
                super::print_json(&serde_json::json!({ "figure": p }));
            } else {
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}
