//! Files: crash-safe writes and folders ([`fs`]), NumPy `.npy` arrays
//! ([`npy`]) and `.npz` archives of them ([`npz`]), safetensors files of named tensors ([`safetensors`]), and the
//! memory a request may allocate ([`memory`]).
//! Foundation: imports nothing but `error` and `points`.

pub mod fs;
pub mod memory;
pub mod npy;
pub mod npz;
pub mod safetensors;
