//! Pictures: sample scatters over densities, image grids, loss curves.

pub mod images;
pub mod plots;
pub mod trajectories;

pub use images::{image_grid, image_grid_gif};
pub use plots::{
    ema_smooth, grid_centres, grid_lookup, line_plot, scatter_gif, scatter_grid, scatter_over_density, Bounds,
    PlotError, ScatterPanel,
};
pub use trajectories::{trajectories_over_density, Panel};
