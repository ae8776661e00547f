//! Pictures: sample scatters over densities, loss curves.

pub mod plots;

pub use plots::{ema_smooth, line_plot, scatter_over_density, Bounds, PlotError};
