//! Pictures: sample scatters over densities, loss curves.

pub mod plots;
pub mod trajectories;

pub use plots::{ema_smooth, line_plot, scatter_over_density, Bounds, PlotError};
pub use trajectories::{trajectories_over_density, Panel};
