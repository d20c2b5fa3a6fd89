//! Pillow's BILINEAR resize of 8-bit images, bit for bit (`libImaging/Resample.c`):
//! separable, horizontal pass first, antialiased when shrinking (support scales with the
//! ratio), fixed-point weights with 22 fractional bits, intermediate clipped to u8.

const PRECISION_BITS: u32 = 22;

/// Fixed-point weights of one pass: for each output index, the first input index and weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>, // (xmin, count)
    k: Vec<Vec<i64>>,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut w: Vec<f64> = (0..n).map(|x| bilinear((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        let one = (1u64 << PRECISION_BITS) as f64;
        let kk = w.iter().map(|&v| if v < 0.0 { (v * one - 0.5) as i64 } else { (v * one + 0.5) as i64 }).collect();
        bounds.push((xmin, n));
        k.push(kk);
    }
    Coeffs { bounds, k }
}

#[inline]
fn clip8(v: i64) -> u8 {
    if v <= 0 {
        0
    } else if v >= (1i64 << PRECISION_BITS) << 8 {
        255
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes an interleaved 8-bit image with `ch` channels from (w, h) to (ow, oh).
///
/// # Shapes
/// src: (h, w, ch) row-major; returns (oh, ow, ch).
pub fn resize_bilinear(src: &[u8], (w, h): (usize, usize), (ow, oh): (usize, usize), ch: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * ch, "resize_bilinear: buffer does not match its size");
    let mut cur = src.to_vec();
    let (mut cw, ch_) = (w, h);
    if ow != w {
        let c = precompute(w, ow);
        let mut out = vec![0u8; ow * h * ch];
        for y in 0..h {
            for (xx, ((xmin, n), k)) in c.bounds.iter().zip(&c.k).enumerate() {
                for cc in 0..ch {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for j in 0..*n {
                        acc += cur[(y * w + xmin + j) * ch + cc] as i64 * k[j];
                    }
                    out[(y * ow + xx) * ch + cc] = clip8(acc);
                }
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != ch_ {
        let c = precompute(h, oh);
        let mut out = vec![0u8; cw * oh * ch];
        for (yy, ((ymin, n), k)) in c.bounds.iter().zip(&c.k).enumerate() {
            for x in 0..cw {
                for cc in 0..ch {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for j in 0..*n {
                        acc += cur[((ymin + j) * cw + x) * ch + cc] as i64 * k[j];
                    }
                    out[(yy * cw + x) * ch + cc] = clip8(acc);
                }
            }
        }
        cur = out;
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let img: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_bilinear(&img, (5, 4), (5, 4), 3), img);
        // A constant image stays constant whatever the sizes.
        let flat = vec![123u8; 7 * 9 * 3];
        for (ow, oh) in [(3, 3), (20, 11), (7, 2)] {
            assert!(resize_bilinear(&flat, (7, 9), (ow, oh), 3).iter().all(|&v| v == 123));
        }
    }
}
