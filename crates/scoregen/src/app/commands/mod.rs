//! One module per command: each takes a request of plain values, does the
//! work with the layers below, writes its files and returns what it did
//! (the CLI prints it).

pub mod bench;
pub mod classify;
pub mod demo;
pub mod eval;
pub mod info;
pub mod inpaint;
pub mod leaderboard;
pub mod likelihood;
pub mod list;
pub mod quickstart;
pub mod report;
pub mod sample;
pub mod suggest_sigmas;
pub mod train;
