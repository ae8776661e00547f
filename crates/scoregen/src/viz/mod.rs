//! Pictures: sample scatters over densities, loss curves.

pub mod plots;
pub mod trajectories;

pub use plots::{
    ema_smooth, grid_centres, grid_lookup, line_plot, scatter_gif, scatter_grid, scatter_over_density, Bounds,
    PlotError, ScatterPanel,
};
pub use trajectories::{trajectories_over_density, Panel};
