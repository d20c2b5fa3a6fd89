//! IDX files (MNIST, Fashion-MNIST), raw or gzipped: big-endian magic 0x00000803 for
//! (N, H, W) u8 images and 0x00000801 for (N) u8 labels. Grey images become RGB by
//! replicating the channel (Pillow's convert("RGB")).

use std::path::Path;

use super::Item;
use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Reads an IDX image file and, optionally, its label file.
pub fn read(images: &Path, labels: Option<&Path>) -> Result<Vec<Item>> {
    let ib = super::read_maybe_gz(images)?;
    if ib.len() < 16 || be32(&ib, 0) != 0x0803 {
        let found = if ib.len() >= 4 { format!("0x{:08x}", be32(&ib, 0)) } else { "nothing".into() };
        return Err(Error::format(
            images,
            format!(
                "bad IDX magic {found}: expected 0x00000803 (u8 images, 3 dimensions); is this an IDX image file such as train-images-idx3-ubyte.gz?"
            ),
        ));
    }
    let (n, h, w) = (be32(&ib, 4), be32(&ib, 8), be32(&ib, 12));
    // sizes in u64, checked: a header cannot make them wrap
    let want = (n as u64).checked_mul(h as u64).and_then(|x| x.checked_mul(w as u64));
    if n == 0 || h == 0 || w == 0 || want != Some(ib.len() as u64 - 16) {
        return Err(Error::format(
            images,
            format!(
                "IDX header says {n} images of {h}x{w} but the file has {} bytes of pixels: truncated or not an image file?",
                ib.len() - 16
            ),
        ));
    }
    let lab = match labels {
        Some(lp) => {
            let lb = super::read_maybe_gz(lp)?;
            if lb.len() < 8 || be32(&lb, 0) != 0x0801 {
                return Err(Error::format(
                    lp,
                    "bad IDX magic: expected 0x00000801 (u8 labels); is this the labels file?",
                ));
            }
            if be32(&lb, 4) != n || lb.len() != 8 + n {
                return Err(Error::format(lp, format!("{} labels for {n} images", be32(&lb, 4))));
            }
            Some(lb[8..].to_vec())
        }
        None => None,
    };
    Ok((0..n)
        .map(|i| {
            let px = &ib[16 + i * h * w..16 + (i + 1) * h * w];
            let data = px.iter().flat_map(|&g| [g, g, g]).collect();
            Item { image: RgbImage::new(w, h, data), label: lab.as_ref().map(|l| l[i] as u16) }
        })
        .collect())
}

/// Writes IDX image and label files (for tests and tools).
pub fn write(images: &[Vec<u8>], h: usize, w: usize, labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut ib = Vec::new();
    for v in [0x0803u32, images.len() as u32, h as u32, w as u32] {
        ib.extend(v.to_be_bytes());
    }
    for im in images {
        ib.extend(im);
    }
    let mut lb = Vec::new();
    for v in [0x0801u32, labels.len() as u32] {
        lb.extend(v.to_be_bytes());
    }
    lb.extend(labels);
    (ib, lb)
}
