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

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip data ({e}); download the file again")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Gunzips bytes that are known to be gzip (bundled data).
pub fn gunzip(bytes: &[u8], what: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(what, format!("corrupt gzip data: {e}")))?;
    Ok(out)
}
