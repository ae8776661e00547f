//! Where tensors live: `cpu` (the default) or `cuda[:N]` (GPU N, with the
//! `cuda` cargo feature). A [`DeviceSpec`] is what a user writes (`--device`,
//! `run.device`); [`DeviceSpec::open`] turns it into candle's `Device`, once
//! per process for each GPU, so every tensor of a run shares one CUDA context
//! and stream (candle refuses to mix tensors of two `Device::new_cuda` calls).
//!
//! Random draws do not depend on the device: every draw comes from the seeded
//! ChaCha streams of [`crate::rng`], made on the CPU and copied to the device,
//! so a GPU run uses the same random numbers as a CPU run. Checkpoints are
//! device-independent: they are read to the CPU and moved to the model's
//! device, and copied to the CPU before they are written.

use crate::error::{Error, Result};
pub use candle_core::Device;
use std::fmt;
use std::str::FromStr;

/// `cpu` or `cuda:N` (a plain `cuda` is GPU 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

/// True when this build has candle's CUDA backend (the `cuda` cargo feature).
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

impl DeviceSpec {
    pub fn is_cpu(self) -> bool {
        self == DeviceSpec::Cpu
    }

    /// The candle device, opened once per process and GPU (later calls get a
    /// handle to the same context). `cuda` in a build without the `cuda`
    /// feature is an error that names the feature.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(Error::Invalid(format!(
        "device `cuda:{n}`: this scoregen was built without the `cuda` feature (CPU only); \
         build it with `cargo build --release --features cuda` (docs/gpu.md) or use --device cpu"
    )))
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = open.get(&n) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(n).map_err(|e| {
        // candle appends a backtrace (with RUST_BACKTRACE set): keep the message one line
        let why = match &e {
            candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
            e => e.to_string(),
        };
        Error::Invalid(format!(
            "device `cuda:{n}`: cannot open the GPU ({}); it needs an NVIDIA driver for CUDA 13 \
             and the CUDA 13 libraries on LD_LIBRARY_PATH (docs/gpu.md)",
            why.lines().next().unwrap_or_default()
        ))
    })?;
    open.insert(n, d.clone());
    Ok(d)
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected `cpu`, `cuda` or `cuda:N` (N a GPU number), found `{s}`");
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            t => match t.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The spec of a candle device (`cuda:N` for GPU N).
pub fn spec_of(device: &Device) -> DeviceSpec {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id),
        _ => DeviceSpec::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("CUDA", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec, "{text}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for bad in ["", "gpu", "tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("expected `cpu`, `cuda` or `cuda:N`"), "{bad}: {e}");
        }
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        assert_eq!(spec_of(&Device::Cpu), DeviceSpec::Cpu);
    }

    /// A CPU-only build refuses `cuda` with a message that names the feature.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_it() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("built without the `cuda` feature") && e.contains("--features cuda"), "{e}");
    }
}
