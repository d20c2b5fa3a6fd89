//! `--data SPEC`: which data set to read.
//!
//! `emoji32` (bundled) | `fashion-mnist` | `mnist` | `cifar10` | `cifar100` | `folder:DIR` |
//! `cifar:FILE[,FILE..]` | `idx:IMAGES,LABELS` | `parquet:FILE[,FILE..]`. Named sets are
//! looked up in their usual places (Fashion-MNIST: the Debian package
//! `dataset-fashion-mnist`; all: the user's cache folder, `$IGPT_DATA` or
//! `~/.cache/igpt/datasets/NAME`), where `DataSpec::download` puts them.

use std::path::{Path, PathBuf};

use super::download::{self, Transfer};
use super::{Item, RawSplit, cifar, folder, idx, parquet};
use crate::error::{Error, Result};

/// The bundled emoji32 set (CIFAR-10 layout, gzipped; see data/emoji32/README.md).
const EMOJI32_TRAIN: &[u8] = include_bytes!("../../data/emoji32/emoji32_train.bin.gz");
const EMOJI32_TEST: &[u8] = include_bytes!("../../data/emoji32/emoji32_test.bin.gz");
const EMOJI32_LABELS: &str = include_str!("../../data/emoji32/emoji32_labels.txt");

const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// A parsed `--data` value.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    Emoji32,
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
    Folder(PathBuf),
    Cifar(Vec<PathBuf>),
    Idx(PathBuf, PathBuf),
    /// Hub-style parquet files; files named `test*` (or in a `test/` folder) are the test split.
    Parquet(Vec<PathBuf>, parquet::Columns),
}

const FASHION_DEBIAN: &str = "/usr/share/datasets/fashion-mnist";
const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];
const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];
const CIFAR100_FILES: [&str; 2] = ["train.bin", "test.bin"];

impl std::str::FromStr for DataSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let paths = |v: &str| v.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect::<Vec<_>>();
        Ok(match s.split_once(':') {
            None => match s {
                "emoji32" => DataSpec::Emoji32,
                "fashion-mnist" | "fashion_mnist" => DataSpec::FashionMnist,
                "mnist" => DataSpec::Mnist,
                "cifar10" => DataSpec::Cifar10,
                "cifar100" => DataSpec::Cifar100,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown data set `{other}`: use emoji32, fashion-mnist, mnist, cifar10, cifar100, folder:DIR, cifar:FILE[,FILE..], idx:IMAGES,LABELS or parquet:FILE[,FILE..]"
                    )));
                }
            },
            Some(("folder", d)) => DataSpec::Folder(PathBuf::from(d)),
            Some(("cifar", f)) if !paths(f).is_empty() => DataSpec::Cifar(paths(f)),
            Some(("parquet", f)) if !paths(f).is_empty() => DataSpec::Parquet(paths(f), Default::default()),
            Some(("idx", f)) if paths(f).len() == 2 => {
                let p = paths(f);
                DataSpec::Idx(p[0].clone(), p[1].clone())
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "cannot parse --data `{s}`: use folder:DIR, cifar:FILE[,FILE..], idx:IMAGES,LABELS or parquet:FILE[,FILE..]"
                )));
            }
        })
    }
}

/// A data set as read: its train split, its own test split when it has one, class names.
pub struct Source {
    pub name: String,
    pub train: RawSplit,
    pub test: Option<RawSplit>,
}

/// The cache folder of a named data set: `$IGPT_DATA/NAME` or `~/.cache/igpt/datasets/NAME`.
pub fn cache_dir(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("IGPT_DATA") {
        return PathBuf::from(d).join(name);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    home.unwrap_or_else(|| PathBuf::from(".cache")).join("igpt/datasets").join(name)
}

fn find_idx(name: &str, dirs: &[PathBuf], files: [&str; 4]) -> Result<[PathBuf; 4]> {
    for d in dirs {
        let p = files.map(|f| d.join(f));
        if p.iter().all(|f| f.exists()) {
            return Ok(p);
        }
    }
    let hint = if name == "fashion-mnist" {
        "; add --download, or install the Debian package: apt-get install dataset-fashion-mnist"
    } else {
        "; add --download to fetch it"
    };
    Err(Error::Invalid(format!(
        "{name} not found: looked for {} in {}{hint}",
        files.join(", "),
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

fn named(classes: &[&str]) -> Vec<String> {
    classes.iter().map(|s| s.to_string()).collect()
}

impl DataSpec {
    /// The name of a data set that `download` can fetch.
    pub fn downloadable(&self) -> Option<&'static str> {
        match self {
            DataSpec::FashionMnist => Some("fashion-mnist"),
            DataSpec::Mnist => Some("mnist"),
            DataSpec::Cifar10 => Some("cifar10"),
            DataSpec::Cifar100 => Some("cifar100"),
            _ => None,
        }
    }

    /// Downloads a named data set into its cache folder unless it is already on this
    /// machine (for Fashion-MNIST, the Debian package's folder counts). Returns whether
    /// anything had to be fetched.
    pub fn download(&self, t: &dyn Transfer) -> Result<bool> {
        let Some(name) = self.downloadable() else {
            return Err(Error::Invalid(format!(
                "--download works for mnist, fashion-mnist, cifar10 and cifar100, not {self:?}"
            )));
        };
        let needed: &[&str] = match self {
            DataSpec::Cifar10 => &CIFAR10_FILES,
            DataSpec::Cifar100 => &CIFAR100_FILES,
            _ => &IDX_FILES,
        };
        let debian = Path::new(FASHION_DEBIAN);
        if matches!(self, DataSpec::FashionMnist) && IDX_FILES.iter().all(|f| debian.join(f).exists()) {
            return Ok(false);
        }
        let dir = cache_dir(name);
        if needed.iter().all(|f| dir.join(f).exists()) {
            return Ok(false);
        }
        download::ensure(name, &dir, needed, t)?;
        Ok(true)
    }

    /// Reads the data set. `progress` is called once per decoded image (folders, parquet).
    pub fn load(&self, progress: &(dyn Fn() + Sync)) -> Result<Source> {
        self.load_at(None, progress)
    }

    /// Reads the data set; with `fit`, every decoded image (folders, parquet) is resized to
    /// fit x fit as soon as it is decoded (the same Pillow-exact resize `prepare` applies),
    /// so photos are never all held at full size.
    pub fn load_at(&self, fit: Option<usize>, progress: &(dyn Fn() + Sync)) -> Result<Source> {
        match self {
            DataSpec::Emoji32 => load_emoji32(),
            DataSpec::FashionMnist => load_named_idx("fashion-mnist", Some(FASHION_DEBIAN)),
            DataSpec::Mnist => load_named_idx("mnist", None),
            DataSpec::Cifar10 => {
                let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
                load_named_cifar("cifar10", &train, "test_batch.bin", 1)
            }
            DataSpec::Cifar100 => load_named_cifar("cifar100", &["train.bin".into()], "test.bin", 2),
            DataSpec::Folder(dir) => {
                Ok(Source { name: dir.display().to_string(), train: folder::read(dir, fit, progress)?, test: None })
            }
            DataSpec::Cifar(files) => load_cifar_files(files),
            DataSpec::Parquet(files, cols) => load_parquet(files, cols, fit, progress),
            DataSpec::Idx(images, labels) => {
                let items = idx::read(images, Some(labels))?;
                let classes = (0..class_count(&items, &[])).map(|i| i.to_string()).collect();
                Ok(Source { name: "idx".into(), train: RawSplit { items, classes }, test: None })
            }
        }
    }
}

/// 1 + the largest label of `a` and `b` (1 when none is labelled).
fn class_count(a: &[Item], b: &[Item]) -> usize {
    1 + a.iter().chain(b).filter_map(|i| i.label).max().unwrap_or(0) as usize
}

/// class_0, class_1, ... for sets without class names.
fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class_{i}")).collect()
}

/// A train and an optional test split sharing `classes`.
fn source(name: &str, train: Vec<Item>, test: Vec<Item>, classes: Vec<String>) -> Source {
    let test = (!test.is_empty()).then(|| RawSplit { items: test, classes: classes.clone() });
    Source { name: name.into(), train: RawSplit { items: train, classes }, test }
}

/// The bundled emoji32 set.
fn load_emoji32() -> Result<Source> {
    let classes: Vec<String> = EMOJI32_LABELS.lines().map(str::to_string).collect();
    let p = Path::new("<bundled emoji32>");
    let train = cifar::parse(&super::gunzip(EMOJI32_TRAIN, p)?, 1, p)?;
    let test = cifar::parse(&super::gunzip(EMOJI32_TEST, p)?, 1, p)?;
    Ok(source("emoji32", train, test, classes))
}

/// MNIST or Fashion-MNIST from its IDX files (`first`, then the cache folder).
fn load_named_idx(name: &str, first: Option<&str>) -> Result<Source> {
    let mut dirs: Vec<PathBuf> = first.map(PathBuf::from).into_iter().collect();
    dirs.push(cache_dir(name));
    let [ti, tl, vi, vl] = find_idx(name, &dirs, IDX_FILES)?;
    let classes = if name == "mnist" { (0..10).map(|d| d.to_string()).collect() } else { named(&FASHION_CLASSES) };
    Ok(source(name, idx::read(&ti, Some(&tl))?, idx::read(&vi, Some(&vl))?, classes))
}

/// CIFAR-10 or -100 (binary version) from the cache folder; `label_bytes` 1 or 2 (coarse,
/// fine: the fine label is used).
fn load_named_cifar(name: &str, train_files: &[String], test_file: &str, label_bytes: usize) -> Result<Source> {
    let dir = cache_dir(name);
    let mut train = Vec::new();
    for f in train_files {
        let p = dir.join(f);
        if !p.exists() {
            return Err(Error::Invalid(format!(
                "{name} not found: {} is missing (add --download, or put the binary version's files in {})",
                p.display(),
                dir.display()
            )));
        }
        train.extend(cifar::read(&p, Some(label_bytes))?);
    }
    let test = cifar::read(&dir.join(test_file), Some(label_bytes))?;
    let nclass = class_count(&train, &[]);
    let classes = if label_bytes == 1 {
        named(&CIFAR10_CLASSES)
    } else {
        std::fs::read_to_string(dir.join("fine_label_names.txt"))
            .ok()
            .map(|s| s.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()).collect::<Vec<_>>())
            .filter(|n| n.len() >= nclass)
            .unwrap_or_else(|| numbered(nclass))
    };
    Ok(source(name, train, test, classes))
}

/// `cifar:FILE,..`: files named test* form the test split, the others the training split.
fn load_cifar_files(files: &[PathBuf]) -> Result<Source> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for f in files {
        let is_test = f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test"));
        let items = cifar::read(f, None)?;
        if is_test { test.extend(items) } else { train.extend(items) }
    }
    if train.is_empty() {
        return Err(Error::Invalid("cifar: no training file given (files named test* form the test split)".into()));
    }
    let nclass = class_count(&train, &test);
    let classes = if nclass <= 10 { named(&CIFAR10_CLASSES[..nclass.max(1)]) } else { numbered(nclass) };
    Ok(source("cifar", train, test, classes))
}

/// `parquet:FILE,..`: files named test* (or in a test/ folder) form the test split.
fn load_parquet(
    files: &[PathBuf],
    cols: &parquet::Columns,
    fit: Option<usize>,
    progress: &(dyn Fn() + Sync),
) -> Result<Source> {
    let (mut train, mut test, mut names) = (Vec::new(), Vec::new(), None);
    for f in files {
        let read = parquet::read(f, cols, fit, progress)?;
        names = names.or(read.class_names);
        if parquet::is_test_file(f) { test.extend(read.items) } else { train.extend(read.items) }
    }
    if train.is_empty() {
        return Err(Error::Invalid(
            "parquet: no training file given (files named test* or in a test/ folder form the test split)".into(),
        ));
    }
    let nclass = class_count(&train, &test);
    let classes = match names {
        Some(n) if n.len() >= nclass => n,
        _ => numbered(nclass),
    };
    Ok(source("parquet", train, test, classes))
}
