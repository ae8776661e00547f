//! Pictures: sample scatters over densities, image grids, loss curves,
//! score fields, and the HTML report of a run.

pub mod images;
pub mod plots;
pub mod trajectories;

pub use images::{image_grid, image_grid_gif};
pub use plots::{
    ema_smooth, grid_centres, grid_lookup, line_plot, scatter_gif, scatter_grid, scatter_over_density, vector_field,
    Arrow, Bounds, FieldPanel, PlotError, ScatterPanel,
};
pub use trajectories::{trajectories_over_density, Panel};
