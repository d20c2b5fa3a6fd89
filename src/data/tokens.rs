//! Token files: what `igpt prepare` writes and training reads, memory-mapped.
//!
//! Layout (little-endian): a 64-byte header — magic `IGPTTOK\0`, version u32, image count
//! u64, height u32, width u32, colour count u32, has-labels u32, zero padding — then
//! count x height x width u16 token ids (raster order, no SOS), then count u16 labels when
//! has-labels is 1.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"IGPTTOK\0";
pub const VERSION: u32 = 1;
const HEADER: usize = 64;

/// Writes a token file through a temporary file and a rename.
pub fn write(path: &Path, tokens: &[u16], labels: Option<&[u16]>, (h, w): (usize, usize), colors: usize) -> Result<()> {
    let n = tokens.len() / (h * w).max(1);
    assert_eq!(n * h * w, tokens.len(), "token file: tokens are not whole images");
    let mut out = Vec::with_capacity(HEADER + 2 * (tokens.len() + n));
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((n as u64).to_le_bytes());
    out.extend((h as u32).to_le_bytes());
    out.extend((w as u32).to_le_bytes());
    out.extend((colors as u32).to_le_bytes());
    out.extend((labels.is_some() as u32).to_le_bytes());
    out.resize(HEADER, 0);
    out.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    if let Some(l) = labels {
        assert_eq!(l.len(), n, "token file: one label per image");
        out.extend(l.iter().flat_map(|t| t.to_le_bytes()));
    }
    crate::formats::write_atomic(path, &out)
}

/// The most classes a labelled data set may have (a probe or fine-tuning head is K x D).
pub const MAX_CLASSES: usize = 10_000;

/// The number of classes of labelled token files in `data_dir`: the lines of its labels.txt
/// when it names any (every label must be below that), else 1 + the largest label.
pub fn class_count(data_dir: &Path, files: &[&TokenFile]) -> Result<usize> {
    let names = std::fs::read_to_string(data_dir.join("labels.txt")).unwrap_or_default();
    let named = names.lines().filter(|l| !l.trim().is_empty()).count();
    let mut k = named;
    for f in files {
        let Some(labels) = f.labels() else { continue };
        let Some((i, &top)) = labels.iter().enumerate().max_by_key(|(_, l)| **l) else { continue };
        if named > 0 && top as usize >= named {
            return Err(Error::format(
                &f.path,
                format!(
                    "image {i} has label {top}, but {} names {named} classes (0..{}); prepare the data again",
                    data_dir.join("labels.txt").display(),
                    named - 1
                ),
            ));
        }
        k = k.max(top as usize + 1);
    }
    if k > MAX_CLASSES {
        return Err(Error::format(
            data_dir,
            format!("the labels go up to {}: igpt fits at most {MAX_CLASSES} classes; check the label column", k - 1),
        ));
    }
    Ok(k)
}

/// A memory-mapped token file.
pub struct TokenFile {
    pub path: PathBuf,
    map: Mmap,
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub colors: usize,
    pub has_labels: bool,
    /// The images in the file's numbering that this view shows (None: all, in order).
    rows: Option<Vec<usize>>,
    /// Images in the file itself.
    stored: usize,
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self> {
        let regen = "regenerate it with `igpt prepare --data ... --out DIR`";
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is only read; igpt writes token files by rename, never in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() < HEADER || &map[..8] != MAGIC {
            return Err(Error::format(path, format!("not an igpt token file (bad magic); {regen}")));
        }
        let u32_at = |i: usize| u32::from_le_bytes(map[i..i + 4].try_into().expect("4 bytes")) as usize;
        let version = u32_at(8) as u32;
        if version != VERSION {
            return Err(Error::format(
                path,
                format!("token file version {version}, this igpt reads version {VERSION}; {regen}"),
            ));
        }
        let count = u64::from_le_bytes(map[12..20].try_into().expect("8 bytes"));
        let (height, width, colors, labels_flag) = (u32_at(20), u32_at(24), u32_at(28), u32_at(32));
        if count == 0 || height == 0 || width == 0 || colors == 0 || colors > u16::MAX as usize || labels_flag > 1 {
            return Err(Error::format(
                path,
                format!(
                    "header says {count} images of {height}x{width}, {colors} colours, labels flag {labels_flag}: a token file has at least one image, a size, 1 to 65535 colours and a flag of 0 or 1; {regen}"
                ),
            ));
        }
        let has_labels = labels_flag == 1;
        // the expected length in u64, checked: a header cannot make it wrap
        let expect = (height as u64 * width as u64)
            .checked_mul(count)
            .and_then(|n| n.checked_add(if has_labels { count } else { 0 }))
            .and_then(|n| n.checked_mul(2))
            .and_then(|n| n.checked_add(HEADER as u64));
        if expect != Some(map.len() as u64) {
            return Err(Error::format(
                path,
                format!(
                    "{} bytes, but the header says {count} images of {height}x{width}: truncated or corrupt; {regen}",
                    map.len()
                ),
            ));
        }
        let count = count as usize;
        let n_tok = count * height * width;
        if let Some(i) = map[HEADER..HEADER + 2 * n_tok]
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) as usize >= colors)
        {
            return Err(Error::format(
                path,
                format!(
                    "token {i} (image {}) is not below the file's {colors} colours: corrupt; {regen}",
                    i / (height * width)
                ),
            ));
        }
        Ok(TokenFile {
            path: path.to_path_buf(),
            map,
            count,
            height,
            width,
            colors,
            has_labels,
            rows: None,
            stored: count,
        })
    }

    /// The first `n` images, stratified by label (each class keeps its share of the file, the
    /// earliest images of each class first; `--limit`); the whole file when n >= count.
    pub fn limit(mut self, n: usize) -> Self {
        if n >= self.count {
            return self;
        }
        let labels: Vec<Option<u16>> = (0..self.count).map(|i| self.label(i)).collect();
        // in the file's numbering (a view of a view composes)
        let rows: Vec<usize> = super::stratified_first(&labels, n).into_iter().map(|i| self.row(i)).collect();
        self.count = rows.len();
        self.rows = Some(rows);
        self
    }

    /// The image of the file that view image `i` is.
    fn row(&self, i: usize) -> usize {
        self.rows.as_ref().map_or(i, |r| r[i])
    }

    pub fn seq_len(&self) -> usize {
        self.height * self.width
    }

    fn u16_at(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.map[i], self.map[i + 1]])
    }

    /// Tokens of image `i` (H*W ids).
    pub fn image(&self, i: usize) -> Vec<u16> {
        let t = self.seq_len();
        let base = HEADER + 2 * self.row(i) * t;
        (0..t).map(|j| self.u16_at(base + 2 * j)).collect()
    }

    /// Tokens of image `i` written into `out` as u32.
    pub fn image_into(&self, i: usize, out: &mut [u32]) {
        let (t, i) = (self.seq_len(), self.row(i));
        let bytes = &self.map[HEADER + 2 * i * t..HEADER + 2 * (i + 1) * t];
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = u16::from_le_bytes([b[0], b[1]]) as u32;
        }
    }

    pub fn label(&self, i: usize) -> Option<u16> {
        self.has_labels.then(|| self.u16_at(HEADER + 2 * self.stored * self.seq_len() + 2 * self.row(i)))
    }

    pub fn labels(&self) -> Option<Vec<u16>> {
        self.has_labels.then(|| (0..self.count).map(|i| self.label(i).expect("has labels")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("train.tokens");
        let toks: Vec<u16> = (0..3 * 4 * 2).map(|i| (i * 37 % 511) as u16).collect();
        write(&p, &toks, Some(&[2, 0, 1]), (4, 2), 512).unwrap();
        let f = TokenFile::open(&p).unwrap();
        assert_eq!((f.count, f.height, f.width, f.colors, f.has_labels), (3, 4, 2, 512, true));
        assert_eq!(f.image(1), toks[8..16]);
        assert_eq!(f.labels().unwrap(), vec![2, 0, 1]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let err = TokenFile::open(&p).err().unwrap().to_string();
        assert!(err.contains("truncated") && err.contains("igpt prepare"), "{err}");
        let mut bad = bytes.clone();
        bad[0] = b'X';
        std::fs::write(&p, &bad).unwrap();
        assert!(TokenFile::open(&p).err().unwrap().to_string().contains("bad magic"));
        let mut v2 = bytes;
        v2[8] = 9;
        std::fs::write(&p, &v2).unwrap();
        assert!(TokenFile::open(&p).err().unwrap().to_string().contains("version 9"));
    }
}
