//! A set of N points in R^D, stored row-major in f64.
//!
//! Points are the currency between data, samplers, the oracle and the metrics:
//! samplers work on candle tensors, and convert to `Points` at the boundary.

use candle_core::{DType, Device, Tensor};

/// N points in R^D, row-major (`data[i * d + j]` is coordinate j of point i).
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    pub n: usize,
    pub d: usize,
    pub data: Vec<f64>,
}

impl Points {
    /// Wraps a row-major buffer; `data.len()` must equal `n * d`.
    pub fn new(n: usize, d: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), n * d, "Points::new: buffer length is not n * d");
        Self { n, d, data }
    }

    /// Builds points from rows of equal length.
    pub fn from_rows(rows: &[Vec<f64>]) -> Self {
        let d = rows.first().map_or(0, |r| r.len());
        let mut data = Vec::with_capacity(rows.len() * d);
        for r in rows {
            assert_eq!(r.len(), d, "Points::from_rows: ragged rows");
            data.extend_from_slice(r);
        }
        Self::new(rows.len(), d, data)
    }

    /// Coordinates of point `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    pub fn rows(&self) -> impl Iterator<Item = &[f64]> {
        self.data.chunks_exact(self.d.max(1)).take(self.n)
    }

    /// The first `k` points (all of them when k ≥ n).
    pub fn head(&self, k: usize) -> Self {
        let k = k.min(self.n);
        Self::new(k, self.d, self.data[..k * self.d].to_vec())
    }

    /// A [N, D] tensor of the given dtype.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.data, (self.n, self.d), device)?.to_dtype(dtype)
    }

    /// Reads a tensor of shape [N, D] (any float dtype) into points.
    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Self> {
        let (n, d) = t.dims2()?;
        let data = crate::host::vec1::<f64>(&t.flatten_all()?)?;
        Ok(Self::new(n, d, data))
    }

    /// True when every coordinate is finite.
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}
