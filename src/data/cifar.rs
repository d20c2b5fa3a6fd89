//! CIFAR-10 / CIFAR-100 binary files (and emoji32, which uses CIFAR-10's layout): records
//! of 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine) label bytes, then 1024 red, 1024 green
//! and 1024 blue bytes, each plane row-major, for a 32x32 image.

use std::path::Path;

use super::Item;
use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

const PIXELS: usize = 32 * 32;

/// Parses CIFAR records. `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100, the fine label is used).
pub fn parse(bytes: &[u8], label_bytes: usize, path: &Path) -> Result<Vec<Item>> {
    let rec = label_bytes + 3 * PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is not a whole number of {rec}-byte CIFAR records (1 label byte for CIFAR-10, 2 for CIFAR-100); the file is truncated or not a CIFAR binary file",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(rec)
        .map(|r| {
            let label = r[label_bytes - 1] as u16;
            let planes = &r[label_bytes..];
            let mut data = Vec::with_capacity(3 * PIXELS);
            for i in 0..PIXELS {
                data.extend_from_slice(&[planes[i], planes[PIXELS + i], planes[2 * PIXELS + i]]);
            }
            Item { image: RgbImage::new(32, 32, data), label: Some(label) }
        })
        .collect())
}

/// Reads a CIFAR file (raw or gzipped), guessing 1 or 2 label bytes from the file size
/// (30730000 bytes = 10000 CIFAR-10 records; CIFAR-100 files are multiples of 3074).
pub fn read(path: &Path, label_bytes: Option<usize>) -> Result<Vec<Item>> {
    let bytes = super::read_maybe_gz(path)?;
    let lb = label_bytes.unwrap_or(if bytes.len() % 3073 == 0 { 1 } else { 2 });
    parse(&bytes, lb, path)
}

/// Writes CIFAR-10 records (for tests and tools).
pub fn write_records(items: &[(u8, &RgbImage)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (label, img) in items {
        assert_eq!((img.width, img.height), (32, 32), "CIFAR images are 32x32");
        out.push(*label);
        for c in 0..3 {
            out.extend(img.data.chunks_exact(3).map(|p| p[c]));
        }
    }
    out
}
