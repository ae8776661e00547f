//! Pictures: sample scatters over densities, loss curves.

pub mod plots;

pub use plots::{ema_smooth, line_plot, scatter_gif, scatter_over_density, scatter_panels, Bounds, PlotError};
