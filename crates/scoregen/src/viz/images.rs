//! Image grids: samples (or data) as one PNG of tiles.

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `n` images of C×H×W pixels in [0, 1] (row-major [N, C, H, W];
/// values outside are clamped) as a grid of `cols` columns, each pixel drawn
/// as a `zoom`×`zoom` block, tiles separated by a 1-block grey border.
/// C = 1 gives a grayscale PNG, C = 3 an RGB one.
pub fn image_grid(
    path: &Path,
    pixels: &[f32],
    (c, h, w): (usize, usize, usize),
    cols: usize,
    zoom: usize,
) -> Result<()> {
    let d = c * h * w;
    if d == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(d) || !(c == 1 || c == 3) {
        return Err(Error::data(
            path,
            format!(
                "image grid: {} values are not a whole number of {c}×{h}×{w} images with 1 or 3 channels",
                pixels.len()
            ),
        ));
    }
    let n = pixels.len() / d;
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let zoom = zoom.max(1);
    let (tw, th) = ((w + 1) * zoom, (h + 1) * zoom);
    let (width, height) = (cols * tw + zoom, rows * th + zoom);
    let mut buf = vec![128u8; width * height * 3];
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for k in 0..n {
        let img = &pixels[k * d..(k + 1) * d];
        let (x0, y0) = ((k % cols) * tw + zoom, (k / cols) * th + zoom);
        for y in 0..h * zoom {
            for x in 0..w * zoom {
                let (py, px) = (y / zoom, x / zoom);
                let at = ((y0 + y) * width + x0 + x) * 3;
                for ch in 0..3 {
                    let src = if c == 1 { 0 } else { ch };
                    buf[at + ch] = byte(img[src * h * w + py * w + px]);
                }
            }
        }
    }
    let png = image::RgbImage::from_raw(width as u32, height as u32, buf).expect("buffer sized to the image");
    png.save(path).map_err(|e| Error::data(path, format!("cannot write PNG: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_tile_and_its_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        // Three 1×2×2 images: all black, all white, and a single white top-left pixel.
        let px = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        image_grid(&path, &px, (1, 2, 2), 2, 3).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // 2 columns × (2+1)·3 + 3 border = 21 wide; 2 rows → 21 high.
        assert_eq!(img.dimensions(), (21, 21));
        let at = |x: u32, y: u32| img.get_pixel(x, y).0[0];
        assert_eq!(at(0, 0), 128, "border");
        assert_eq!(at(3, 3), 0, "tile 0 black");
        assert_eq!(at(12 + 5, 3 + 5), 255, "tile 1 white");
        assert_eq!((at(3, 12), at(3 + 3, 12)), (255, 0), "tile 2: white pixel then black");
        assert_eq!(at(12 + 3, 12 + 3), 128, "missing fourth tile is background");
        assert!(image_grid(&path, &px[..5], (1, 2, 2), 2, 3).is_err());
    }
}
