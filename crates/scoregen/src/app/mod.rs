//! The application layer: the config schema and the one factory that builds
//! objects from it, run folders, and one module per command. Everything
//! below it (math, models, training, pictures) takes plain values and never
//! reads the config; the CLI above it only parses arguments and prints.

pub mod budget;
pub mod commands;
pub mod config;
pub mod factory;
pub mod figures;
pub mod pretrained;
pub mod run_dir;
