//! A folder of PNG/JPEG images, searched recursively. When the folder has first-level
//! sub-folders, their sorted names are the classes (ImageNet / torchvision ImageFolder
//! layout); otherwise images have no labels.

use std::path::{Path, PathBuf};

use super::{Item, RawSplit};
use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// Image files under `dir`, sorted. A folder reached twice through symbolic links (a loop,
/// or two links to one folder) is read once, and so is a file reached by two paths.
fn walk(dir: &Path, seen: &mut std::collections::HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if !seen.insert(real) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, seen, out)?;
        } else if is_image(&p) && std::fs::canonicalize(&p).is_ok_and(|r| seen.insert(r)) {
            out.push(p);
        }
    }
    Ok(())
}

/// Image paths with their class index (None: no class folders).
pub type Labelled = Vec<(PathBuf, Option<u16>)>;

/// The image paths under `dir` and their class index, and the class names (sorted
/// sub-folder names).
pub fn list(dir: &Path) -> Result<(Labelled, Vec<String>)> {
    if !dir.is_dir() {
        return Err(Error::format(dir, "not a folder"));
    }
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    let mut files = Vec::new();
    walk(dir, &mut Default::default(), &mut files)?;
    if files.is_empty() {
        return Err(Error::format(dir, "no PNG or JPEG images found (searched recursively)"));
    }
    let labelled = files
        .into_iter()
        .map(|p| {
            let label = p.strip_prefix(dir).ok().and_then(|rel| rel.components().next()).and_then(|c| {
                let name = c.as_os_str().to_string_lossy();
                classes.iter().position(|k| *k == name).map(|i| i as u16)
            });
            (p, if classes.is_empty() { None } else { label })
        })
        .collect();
    Ok((labelled, classes))
}

/// Reads every image (decoding in parallel, each resized to `fit` x `fit` at once when
/// given); `progress` is called once per image.
pub fn read(dir: &Path, fit: Option<usize>, progress: &(dyn Fn() + Sync)) -> Result<RawSplit> {
    use rayon::prelude::*;
    let (files, classes) = list(dir)?;
    let items: Result<Vec<Item>> = files
        .par_iter()
        .map(|(p, label)| {
            let image = RgbImage::open(p)?.fit(fit);
            progress();
            Ok(Item { image, label: *label })
        })
        .collect();
    Ok(RawSplit { items: items?, classes })
}
