//! Files: crash-safe writes and folders ([`fs`]), NumPy `.npy` arrays
//! ([`npy`]) and safetensors files of named tensors ([`safetensors`]).
//! Foundation: imports nothing but `error` and `points`.

pub mod fs;
pub mod npy;
pub mod safetensors;
