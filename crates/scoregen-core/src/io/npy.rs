//! `.npy` io for point sets: float32 or float64, shape [N, D] (or [N] as D = 1).

use crate::error::{Error, Result};
use crate::io::fs;
use crate::points::Points;
use npyz::WriterBuilder;
use std::io::Cursor;
use std::path::Path;

/// Reads a float32/float64 `.npy` array of shape [N, D] (C order).
/// Rejects other dtypes, ranks, Fortran order, non-finite values and headers
/// that promise more data than the file holds (no allocation from a header alone).
pub fn read_points(path: &Path) -> Result<Points> {
    Ok(read_points_shaped(path)?.0)
}

/// [`read_points`] and the array's shape as the file has it ([N, D], [N] or
/// [N, C, H, W]: images keep their shape here).
pub fn read_points_shaped(path: &Path) -> Result<(Points, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::data(path, m);
    // npyz allocates the header length it reads (up to 4 GiB) before reading it.
    let end = data_offset(&bytes);
    if bytes.starts_with(b"\x93NUMPY") && end > bytes.len() {
        let claim = if end == usize::MAX {
            "the file ends inside it".into()
        } else {
            format!("it claims to end at byte {end}")
        };
        return Err(bad(format!("truncated .npy header: {claim}, the file has {} bytes", bytes.len())));
    }
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(format!("not a valid .npy file ({e})")))?;
    let shape: Vec<u64> = npy.shape().to_vec();
    let (n, d) = match shape.as_slice() {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        // Images [N, C, H, W]: each image flattened.
        [n, c, h, w] if c.checked_mul(*h).and_then(|x| x.checked_mul(*w)).is_some() => (*n, c * h * w),
        s => return Err(bad(format!("expected an array of shape [N, D] or [N, C, H, W], found shape {s:?}"))),
    };
    if npy.order() != npyz::Order::C {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let type_str = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => return Err(bad(format!("expected dtype float32 or float64, found {}", other.descr()))),
    };
    let item = match type_str.as_str() {
        "<f4" | ">f4" => 4u64,
        "<f8" | ">f8" => 8u64,
        other => return Err(bad(format!("expected dtype float32 or float64, found `{other}`"))),
    };
    if n == 0 || d == 0 {
        return Err(bad(format!("the array is empty (shape {shape:?})")));
    }
    let need = n.checked_mul(d).and_then(|c| c.checked_mul(item));
    let have = bytes.len().saturating_sub(data_offset(&bytes)) as u64;
    if need.is_none_or(|need| need > have) {
        return Err(bad(format!("header promises shape [{n}, {d}] but the file holds only {have} bytes of data")));
    }
    let data: Vec<f64> = if item == 4 {
        npy.into_vec::<f32>().map_err(|e| bad(format!("truncated data ({e})")))?.into_iter().map(f64::from).collect()
    } else {
        npy.into_vec::<f64>().map_err(|e| bad(format!("truncated data ({e})")))?
    };
    let (n, d) = (n as usize, d as usize);
    if data.len() != n * d {
        return Err(bad(format!("expected {} values, found {}", n * d, data.len())));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value at row {}, column {} is not finite ({})", i / d.max(1), i % d.max(1), data[i])));
    }
    Ok((Points::new(n, d, data), shape.iter().map(|&v| v as usize).collect()))
}

/// (C, H, W) of a `[N, C, H, W]` `.npy` (images as `scoregen sample` writes
/// them), read from the header alone; `None` for any other file or rank.
pub fn image_shape(path: &Path) -> Option<(usize, usize, usize)> {
    let mut head = vec![0u8; 4096];
    let mut f = std::fs::File::open(path).ok()?;
    let n = std::io::Read::read(&mut f, &mut head).ok()?;
    head.truncate(n);
    if data_offset(&head) > head.len() {
        return None;
    }
    let header = npyz::NpyHeader::from_reader(&head[..]).ok()?;
    match header.shape() {
        [_, c, h, w] => Some((*c as usize, *h as usize, *w as usize)),
        _ => None,
    }
}

/// Byte offset of the array data: magic (6) + version (2) + header length
/// (2 bytes in format 1.0, 4 in 2.0/3.0) + the header itself.
fn data_offset(bytes: &[u8]) -> usize {
    let le = |r: std::ops::Range<usize>| {
        bytes.get(r).map_or(usize::MAX, |b| b.iter().rev().fold(0usize, |a, &v| (a << 8) | v as usize))
    };
    match bytes.get(6) {
        Some(1) => 10usize.saturating_add(le(8..10)),
        _ => 12usize.saturating_add(le(8..12)),
    }
}

/// Writes float32 data of the given shape as `.npy`, atomically.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let mut cur = Cursor::new(Vec::new());
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let write = (|| {
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut cur).begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()
    })();
    write.map_err(|e| Error::io(path, e))?;
    fs::write_atomic(path, &cur.into_inner())
}

/// Writes points as a float32 [N, D] `.npy`, atomically.
pub fn write_points(path: &Path, points: &Points) -> Result<()> {
    let data: Vec<f32> = points.data.iter().map(|&v| v as f32).collect();
    write_f32(path, &[points.n, points.d], &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_preserves_float32_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let pts = Points::new(3, 2, vec![1.0, -2.5, 3.25, 0.0, 1e-3, 7.0]);
        write_points(&p, &pts).unwrap();
        let back = read_points(&p).unwrap();
        assert_eq!(back.n, 3);
        assert_eq!(back.d, 2);
        for (a, b) in pts.data.iter().zip(&back.data) {
            assert_eq!(*a as f32, *b as f32);
        }
    }

    #[test]
    fn reads_images_as_flattened_points() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let v: Vec<f32> = (0..24).map(|k| k as f32).collect();
        write_f32(&p, &[2, 3, 2, 2], &v).unwrap();
        let pts = read_points(&p).unwrap();
        assert_eq!((pts.n, pts.d), (2, 12));
        assert_eq!(pts.row(1)[0], 12.0);
    }

    #[test]
    fn image_shape_comes_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_f32(&p, &[2, 3, 4, 5], &[0.0; 120]).unwrap();
        assert_eq!(image_shape(&p), Some((3, 4, 5)));
        write_f32(&p, &[2, 60], &[0.0; 120]).unwrap();
        assert_eq!(image_shape(&p), None);
    }

    #[test]
    fn rejects_wrong_rank_with_shape_in_message() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_f32(&p, &[2, 2, 2], &[0.0; 8]).unwrap();
        let err = read_points(&p).unwrap_err().to_string();
        assert!(err.contains("x.npy") && err.contains("[2, 2, 2]"), "{err}");
    }

    #[test]
    fn rejects_truncated_and_garbage_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_f32(&p, &[100, 2], &[0.5; 200]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 40]).unwrap();
        assert!(read_points(&p).unwrap_err().to_string().contains("holds only"));
        std::fs::write(&p, b"not an npy file at all").unwrap();
        assert!(read_points(&p).unwrap_err().to_string().contains("not a valid .npy"));
    }

    #[test]
    fn rejects_non_finite_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_f32(&p, &[2, 2], &[0.0, 1.0, f32::NAN, 2.0]).unwrap();
        let err = read_points(&p).unwrap_err().to_string();
        assert!(err.contains("row 1, column 0"), "{err}");
    }
}
