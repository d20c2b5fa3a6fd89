//! Image collections in, ImageGPT training data out: readers for image folders, CIFAR, IDX
//! and parquet files and the bundled emoji32 set, downloads of the named sets; a k-means
//! colour palette; token files.
//!
//! ```text
//! igpt prepare --data emoji32 --out data/emoji32-32 --size 32 --colors 512
//! ```

pub mod cifar;
pub mod download;
pub mod folder;
pub mod idx;
pub mod palette;
pub mod parquet;
pub mod prepare;
pub mod spec;
pub mod tokens;

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

/// One labelled image as read from a source.
pub struct Item {
    pub image: RgbImage,
    pub label: Option<u16>,
}

/// A split of a data set as read: images (any size) and class names.
pub struct RawSplit {
    pub items: Vec<Item>,
    pub classes: Vec<String>,
}

/// The indices of the first `n` items, stratified: each label (None counts as one) gets
/// its share of `n` (largest remainders first), filled with its earliest items; the indices
/// come back in their original order.
pub fn stratified_first(labels: &[Option<u16>], n: usize) -> Vec<usize> {
    let mut counts: std::collections::BTreeMap<Option<u16>, usize> = Default::default();
    for l in labels {
        *counts.entry(*l).or_default() += 1;
    }
    let total = labels.len().max(1);
    // each class's share, floored, then the largest remainders
    let mut quota: std::collections::HashMap<Option<u16>, usize> = Default::default();
    let mut rest: Vec<(f64, Option<u16>)> = Vec::new();
    for (&c, &m) in &counts {
        let share = n as f64 * m as f64 / total as f64;
        quota.insert(c, (share.floor() as usize).min(m));
        rest.push((share - share.floor(), c));
    }
    rest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut left = n.saturating_sub(quota.values().sum());
    for (_, c) in rest.iter().cycle().take(2 * rest.len()) {
        if left == 0 {
            break;
        }
        let q = quota.get_mut(c).expect("every class has a quota");
        if *q < counts[c] {
            *q += 1;
            left -= 1;
        }
    }
    let mut out = Vec::with_capacity(n);
    for (i, l) in labels.iter().enumerate() {
        let q = quota.get_mut(l).expect("every class has a quota");
        if *q > 0 {
            *q -= 1;
            out.push(i);
        }
    }
    out
}

/// The most bytes a gzip file may inflate to (Fashion-MNIST's largest file inflates to 47 MB).
pub const MAX_INFLATED: u64 = 1 << 30;

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic
/// (inflating at most [`MAX_INFLATED`] bytes).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) { gunzip(&raw, path) } else { Ok(raw) }
}

/// Gunzips bytes (at most [`MAX_INFLATED`] out: more is refused as a gzip bomb).
pub fn gunzip(bytes: &[u8], what: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(what, format!("corrupt gzip data ({e}); download the file again")))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(Error::format(
            what,
            format!(
                "inflates to more than {} MiB (a gzip bomb?); igpt reads at most that from one file",
                MAX_INFLATED >> 20
            ),
        ));
    }
    Ok(out)
}
