//! scoregen-nets: the networks and their training, the middle of scoregen's
//! three crates (docs/architecture.md).
//!
//! [`nets`]: the models (MLP, NCSN MLP, energy MLP, U-Net, classifier) over
//! `nets::kernels`, the fused CPU operations; [`train`]: the optimizer, EMA,
//! checkpoints, the training loop and the data-parallel collectives. It builds
//! on `scoregen-core` (the math) and cannot see the application layer
//! (`scoregen`), which is not among its dependencies: a network is built from
//! plain values, never from a config.

pub mod nets;
pub mod train;
