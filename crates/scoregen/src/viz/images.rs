//! Image grids: samples (or data) as one PNG of tiles, or a GIF of such grids
//! (the reverse process frame by frame).

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `n` images of C×H×W pixels in [0, 1] (row-major [N, C, H, W];
/// values outside are clamped) as a grid of `cols` columns, each pixel drawn
/// as a `zoom`×`zoom` block, tiles separated by a 1-block grey border.
/// C = 1 gives a grayscale PNG, C = 3 an RGB one.
pub fn image_grid(path: &Path, pixels: &[f32], shape: (usize, usize, usize), cols: usize, zoom: usize) -> Result<()> {
    let (width, height, buf) = render_grid(path, pixels, shape, cols, zoom)?;
    let png = image::RgbImage::from_raw(width as u32, height as u32, buf).expect("buffer sized to the image");
    png.save(path).map_err(|e| Error::data(path, format!("cannot write PNG: {e}")))
}

/// An animated GIF of image grids, one frame per entry of `frames` (each laid
/// out as in [`image_grid`]), shown `delay_cs` hundredths of a second each;
/// the last frame is held for two seconds.
pub fn image_grid_gif(
    path: &Path,
    frames: &[Vec<f32>],
    shape: (usize, usize, usize),
    cols: usize,
    zoom: usize,
    delay_cs: u16,
) -> Result<()> {
    let rendered = frames.iter().map(|px| render_grid(path, px, shape, cols, zoom)).collect::<Result<Vec<_>>>()?;
    let &(width, height, _) = rendered.first().ok_or_else(|| Error::data(path, "a GIF needs at least one frame"))?;
    let err = |e: &dyn std::fmt::Display| Error::data(path, format!("cannot write GIF: {e}"));
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut encoder = gif::Encoder::new(file, width as u16, height as u16, &[]).map_err(|e| err(&e))?;
    encoder.set_repeat(gif::Repeat::Infinite).map_err(|e| err(&e))?;
    for (k, (w, h, buf)) in rendered.iter().enumerate() {
        let mut frame = gif::Frame::from_rgb_speed(*w as u16, *h as u16, buf, 10);
        frame.delay = if k + 1 == rendered.len() { 200 } else { delay_cs };
        encoder.write_frame(&frame).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// The RGB buffer (width, height, bytes) of a grid of images.
fn render_grid(
    path: &Path,
    pixels: &[f32],
    (c, h, w): (usize, usize, usize),
    cols: usize,
    zoom: usize,
) -> Result<(usize, usize, Vec<u8>)> {
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
    Ok((width, height, buf))
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

    #[test]
    fn gif_has_one_frame_per_grid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.gif");
        let frames: Vec<Vec<f32>> = (0..3).map(|k| vec![k as f32 / 2.0; 8]).collect();
        image_grid_gif(&path, &frames, (1, 2, 2), 2, 3, 5).unwrap();
        let mut dec = gif::DecodeOptions::new().read_info(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!((dec.width(), dec.height()), (21, 12));
        let mut count = 0;
        while let Some(f) = dec.read_next_frame().unwrap() {
            count += 1;
            assert_eq!(f.delay, if count == 3 { 200 } else { 5 });
        }
        assert_eq!(count, 3);
        assert!(image_grid_gif(&path, &[], (1, 2, 2), 2, 3, 5).is_err());
    }
}
