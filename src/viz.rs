//! Pictures people look at: image grids (samples, completions) as PNG.

use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

/// A grid of equally sized RGB tiles, `cols` per row, each scaled up `scale` times
/// (nearest neighbour) and separated by `gap` pixels of a light background.
pub fn grid(tiles: &[RgbImage], cols: usize, scale: usize, gap: usize) -> RgbImage {
    let (tw, th) = tiles.first().map_or((1, 1), |t| (t.width * scale, t.height * scale));
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let (w, h) = (cols * tw + (cols + 1) * gap, rows * th + (rows + 1) * gap);
    let mut data = vec![235u8; w * h * 3];
    for (i, t) in tiles.iter().enumerate() {
        let (x0, y0) = (gap + (i % cols) * (tw + gap), gap + (i / cols) * (th + gap));
        for y in 0..t.height * scale {
            for x in 0..t.width * scale {
                let src = ((y / scale) * t.width + x / scale) * 3;
                let dst = ((y0 + y) * w + x0 + x) * 3;
                data[dst..dst + 3].copy_from_slice(&t.data[src..src + 3]);
            }
        }
    }
    RgbImage::new(w, h, data)
}

/// The image with unknown pixels (mask false) shown as a grey checker, for "what the model saw".
pub fn masked(img: &RgbImage, known: &[bool]) -> RgbImage {
    let mut out = img.clone();
    for (i, &k) in known.iter().enumerate() {
        if !k {
            let (x, y) = (i % img.width, i / img.width);
            let v = if (x / 2 + y / 2) % 2 == 0 { 120 } else { 150 };
            out.data[i * 3..i * 3 + 3].copy_from_slice(&[v, v, v]);
        }
    }
    out
}

/// Every `f`-th pixel of every `f`-th row: a grid drawn at scale 2f with gaps of 2f pixels
/// becomes exactly the same grid at scale f (nearest neighbour, no blending).
pub fn shrink(img: &RgbImage, f: usize) -> RgbImage {
    let f = f.max(1);
    let (w, h) = (img.width.div_ceil(f), img.height.div_ceil(f));
    let data = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| img.data[((y * f) * img.width + x * f) * 3..][..3].to_vec()))
        .collect();
    RgbImage::new(w, h, data)
}

/// The largest grid side `save_grid` draws (PNG readers cope; memory stays under 1 GiB).
pub const MAX_GRID_SIDE: usize = 16_384;

/// Saves a grid as PNG (through a temporary file and a rename); a grid over
/// [`MAX_GRID_SIDE`] a side is refused before anything is allocated.
pub fn save_grid(path: &std::path::Path, tiles: &[RgbImage], cols: usize, scale: usize) -> Result<()> {
    let (tw, th) = tiles.first().map_or((1, 1), |t| (t.width, t.height));
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let side = |n: usize, t: usize| n.checked_mul(t.checked_mul(scale)?.checked_add(2)?)?.checked_add(2);
    match (side(cols, tw), side(rows, th)) {
        (Some(w), Some(h)) if w <= MAX_GRID_SIDE && h <= MAX_GRID_SIDE => grid(tiles, cols, scale, 2).save_png(path),
        _ => Err(Error::Invalid(format!(
            "{}: a grid of {} images of {tw}x{th} at --scale {scale} is over {MAX_GRID_SIDE} pixels a side; lower --scale or the number of images",
            path.display(),
            tiles.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_and_scales_tiles() {
        let red = RgbImage::new(1, 1, vec![255, 0, 0]);
        let blue = RgbImage::new(1, 1, vec![0, 0, 255]);
        let g = grid(&[red, blue.clone(), blue], 2, 3, 1);
        assert_eq!((g.width, g.height), (2 * 3 + 3, 2 * 3 + 3));
        assert_eq!(&g.data[(g.width + 1) * 3..][..3], &[255, 0, 0]); // first tile at (1, 1)
        assert_eq!(&g.data[(g.width + 5) * 3..][..3], &[0, 0, 255]); // second tile at (5, 1)
        assert_eq!(&g.data[(5 * g.width + 1) * 3..][..3], &[0, 0, 255]); // third tile at (1, 5)
        assert_eq!(&g.data[0..3], &[235, 235, 235]);
        // at scale 3 every third pixel is the tile grid at scale 1 (with 1-pixel gaps: 0, 3, 6)
        let small = shrink(&g, 3);
        assert_eq!((small.width, small.height), (3, 3));
        assert_eq!(&small.data[..3], &[235, 235, 235]);
        assert_eq!(&small.data[(small.width + 1) * 3..][..3], &[255, 0, 0]);
        assert_eq!(&small.data[(small.width + 2) * 3..][..3], &[0, 0, 255]);
    }
}
