//! NumPy `.npz` archives of float arrays: a zip of `NAME.npy` members, stored
//! (`np.savez`) or deflated (`np.savez_compressed`, what pytorch-fid's
//! `--save-stats` writes). Reading takes the zip container from the `zip`
//! crate (with its ZIP64 records, which NumPy always writes) and inflates with
//! `flate2`; writing stores the members uncompressed, which `np.load` reads.

use crate::error::{Error, Result};
use crate::io::fs;
use npyz::WriterBuilder;
use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

/// A float array: its shape (C order) and values, widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// The most bytes one member may inflate to (a 2,048² f64 covariance is 32 MiB).
pub const MAX_MEMBER: u64 = 1 << 31;

/// Reads every member of an `.npz` archive as a float32/float64 array, by
/// name without the `.npy`. Errors name the file and the member.
pub fn read(path: &Path) -> Result<BTreeMap<String, Array>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::data(path, m);
    let mut zip =
        zip::ZipArchive::new(Cursor::new(&bytes[..])).map_err(|e| bad(format!("not a valid .npz (zip) file: {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index_raw(i).map_err(|e| bad(format!("zip member {i}: {e}")))?;
        let name = member.name().map_err(|e| bad(format!("zip member {i}: {e}")))?.to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let size = member.size();
        if size > MAX_MEMBER {
            return Err(bad(format!("member `{name}` is {size} bytes, more than {MAX_MEMBER}")));
        }
        let mut raw = Vec::with_capacity(size as usize);
        let read = match member.compression() {
            zip::CompressionMethod::Stored => member.read_to_end(&mut raw),
            // `Unsupported(8)`: the zip crate without its deflate feature (method 8 is deflate)
            zip::CompressionMethod::DEFLATE => {
                flate2::read::DeflateDecoder::new(&mut member).take(MAX_MEMBER + 1).read_to_end(&mut raw)
            }
            other => return Err(bad(format!("member `{name}` is compressed by {other}; expected stored or deflated"))),
        };
        read.map_err(|e| bad(format!("member `{name}`: {e}")))?;
        if raw.len() as u64 != size {
            return Err(bad(format!("member `{name}` holds {} bytes, its header says {size}", raw.len())));
        }
        out.insert(key, parse_npy(&raw).map_err(|m| bad(format!("member `{name}`: {m}")))?);
    }
    Ok(out)
}

/// One `.npy` member: float32 or float64, C order, as much data as its shape says.
fn parse_npy(raw: &[u8]) -> std::result::Result<Array, String> {
    let npy = npyz::NpyFile::new(raw).map_err(|e| format!("not a valid .npy array ({e})"))?;
    if npy.order() != npyz::Order::C {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let count = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).ok_or("the shape overflows")?;
    let type_str = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => return Err(format!("expected dtype float32 or float64, found {}", other.descr())),
    };
    let data: Vec<f64> = match type_str.as_str() {
        "<f4" | ">f4" => npy.into_vec::<f32>().map_err(|e| e.to_string())?.into_iter().map(f64::from).collect(),
        "<f8" | ">f8" => npy.into_vec::<f64>().map_err(|e| e.to_string())?,
        other => return Err(format!("expected dtype float32 or float64, found `{other}`")),
    };
    if data.len() != count {
        return Err(format!("shape {shape:?} needs {count} values, the data holds {}", data.len()));
    }
    Ok(Array { shape, data })
}

/// Writes float64 arrays as an `.npz` archive (members stored, `NAME.npy`), atomically.
pub fn write(path: &Path, arrays: &[(&str, &Array)]) -> Result<()> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    let io = |e: std::io::Error| Error::io(path, e);
    for (name, a) in arrays {
        let shape: Vec<u64> = a.shape.iter().map(|&s| s as u64).collect();
        let mut npy = Vec::new();
        let mut w =
            npyz::WriteOptions::<f64>::new().default_dtype().shape(&shape).writer(&mut npy).begin_nd().map_err(io)?;
        w.extend(a.data.iter().copied()).map_err(io)?;
        w.finish().map_err(io)?;
        zip.start_file(format!("{name}.npy"), opts).map_err(|e| Error::data(path, format!("zip: {e}")))?;
        zip.write_all(&npy).map_err(io)?;
    }
    let bytes = zip.finish().map_err(|e| Error::data(path, format!("zip: {e}")))?.into_inner();
    fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.savez_compressed("s.npz", mu=np.array([1.5, -2.0]), sigma=np.eye(2, dtype=np.float32))`
    /// from NumPy 2.4 (ZIP64 extras, deflated), embedded as bytes; read back exactly.
    #[test]
    fn reads_numpys_compressed_archive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        std::fs::write(&p, NUMPY_SAVEZ_COMPRESSED).unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a["mu"], Array { shape: vec![2], data: vec![1.5, -2.0] });
        assert_eq!(a["sigma"], Array { shape: vec![2, 2], data: vec![1.0, 0.0, 0.0, 1.0] });
    }

    #[test]
    fn round_trip_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npz");
        let mu = Array { shape: vec![3], data: vec![0.1, 2.0, -3.5e-7] };
        let sigma = Array { shape: vec![3, 3], data: (0..9).map(|k| k as f64 / 7.0).collect() };
        write(&p, &[("mu", &mu), ("sigma", &sigma)]).unwrap();
        let back = read(&p).unwrap();
        assert_eq!((&back["mu"], &back["sigma"]), (&mu, &sigma));
        std::fs::write(&p, b"PK but not really").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("x.npz") && e.contains("not a valid .npz"), "{e}");
    }

    /// Made by the `np.savez_compressed` call above (NumPy 2.4.6, Python 3.11).
    const NUMPY_SAVEZ_COMPRESSED: &[u8] = include_bytes!("testdata/stats-compressed.npz");
}
