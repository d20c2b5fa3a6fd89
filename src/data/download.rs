//! `--download`: fetches CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST from their official
//! addresses (then a well-known mirror), checks every file's SHA-256, and stores the files
//! where `--data NAME` looks for them (`spec::cache_dir`). A download is written to
//! `NAME.part` and renamed only once its checksum matches, so the cache never holds a
//! partial or corrupt file. `$IGPT_DOWNLOAD_MIRROR` replaces the addresses with one base URL
//! (a local mirror; the tests use a loopback server).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One file of a data set: where it lives and what it must hash to.
#[derive(Clone, Debug)]
pub struct Remote {
    pub file: &'static str,
    /// Base URLs tried in order; the file name is appended.
    pub bases: &'static [&'static str],
    pub sha256: &'static str,
    pub size: u64,
}

const MNIST_BASES: &[&str] = &["https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"];
const FASHION_BASES: &[&str] = &[
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];
const CIFAR_BASES: &[&str] = &["https://www.cs.toronto.edu/~kriz/"];

const MNIST: [Remote; 4] = [
    Remote {
        file: "train-images-idx3-ubyte.gz",
        bases: MNIST_BASES,
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        size: 9_912_422,
    },
    Remote {
        file: "train-labels-idx1-ubyte.gz",
        bases: MNIST_BASES,
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        size: 28_881,
    },
    Remote {
        file: "t10k-images-idx3-ubyte.gz",
        bases: MNIST_BASES,
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        size: 1_648_877,
    },
    Remote {
        file: "t10k-labels-idx1-ubyte.gz",
        bases: MNIST_BASES,
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        size: 4_542,
    },
];

const FASHION: [Remote; 4] = [
    Remote {
        file: "train-images-idx3-ubyte.gz",
        bases: FASHION_BASES,
        sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        size: 26_421_880,
    },
    Remote {
        file: "train-labels-idx1-ubyte.gz",
        bases: FASHION_BASES,
        sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        size: 29_515,
    },
    Remote {
        file: "t10k-images-idx3-ubyte.gz",
        bases: FASHION_BASES,
        sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        size: 4_422_102,
    },
    Remote {
        file: "t10k-labels-idx1-ubyte.gz",
        bases: FASHION_BASES,
        sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        size: 5_148,
    },
];

const CIFAR10: Remote = Remote {
    file: "cifar-10-binary.tar.gz",
    bases: CIFAR_BASES,
    sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    size: 170_052_171,
};
const CIFAR100: Remote = Remote {
    file: "cifar-100-binary.tar.gz",
    bases: CIFAR_BASES,
    sha256: "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
    size: 168_513_733,
};

/// The files of a named data set (`mnist`, `fashion-mnist`, `cifar10`, `cifar100`).
pub fn remotes(name: &str) -> Option<Vec<Remote>> {
    Some(match name {
        "mnist" => MNIST.to_vec(),
        "fashion-mnist" => FASHION.to_vec(),
        "cifar10" => vec![CIFAR10],
        "cifar100" => vec![CIFAR100],
        _ => return None,
    })
}

/// What a download reports as it goes (the binary draws a bar from it).
pub trait Transfer: Sync {
    fn start(&self, _file: &str, _url: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// No reporting.
pub struct Quiet;
impl Transfer for Quiet {}

/// The URLs to try for a file: `$IGPT_DOWNLOAD_MIRROR` alone when set, else its bases.
pub fn urls(r: &Remote) -> Vec<String> {
    match std::env::var("IGPT_DOWNLOAD_MIRROR") {
        Ok(m) if !m.is_empty() => vec![format!("{}/{}", m.trim_end_matches('/'), r.file)],
        _ => r.bases.iter().map(|b| format!("{b}{}", r.file)).collect(),
    }
}

/// The lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Streams one URL into `part`, hashing as it goes; returns the hex SHA-256.
fn fetch_url(url: &str, part: &Path, file: &str, t: &dyn Transfer) -> std::result::Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let total = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let mut body = resp.into_body().into_reader();
    let out = File::create(part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut out = BufWriter::new(out);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    t.start(file, url, total);
    loop {
        let n = body.read(&mut buf).map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", part.display()))?;
        t.advance(n as u64);
    }
    out.flush().map_err(|e| format!("{}: {e}", part.display()))?;
    t.finish();
    Ok(hex(&h.finalize()))
}

/// Downloads `r` into `dir` unless it is already there; checks its SHA-256 and renames it
/// into place. Tries each URL in turn; the error lists what every URL answered.
pub fn fetch(r: &Remote, dir: &Path, t: &dyn Transfer) -> Result<PathBuf> {
    let dest = dir.join(r.file);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let part = dir.join(format!("{}.part", r.file));
    let mut failures = Vec::new();
    for url in urls(r) {
        match fetch_url(&url, &part, r.file, t) {
            Ok(sum) if sum == r.sha256 => {
                std::fs::rename(&part, &dest).map_err(|e| Error::io(&dest, e))?;
                return Ok(dest);
            }
            Ok(sum) => failures.push(format!("{url}: SHA-256 {sum}, expected {} (corrupt or changed file)", r.sha256)),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
        let _ = std::fs::remove_file(&part);
    }
    Err(Error::Invalid(format!(
        "could not download {} ({} bytes):\n  {}\nput the file in {} by hand, or set IGPT_DOWNLOAD_MIRROR to a mirror's base URL",
        r.file,
        r.size,
        failures.join("\n  "),
        dir.display()
    )))
}

/// Extracts the members of a `.tar.gz` whose file names satisfy `keep` into `dir` (flat),
/// each through a temporary name and a rename.
pub fn extract_tar_gz(archive: &Path, dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let f = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let bad =
        |e: std::io::Error| Error::format(archive, format!("corrupt archive ({e}); delete it and download again"));
    let mut out = Vec::new();
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if !entry.header().entry_type().is_file() || !keep(&name) {
            continue;
        }
        let dest = dir.join(&name);
        let tmp = dir.join(format!("{name}.part"));
        let mut w = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        std::io::copy(&mut entry, &mut w).map_err(bad)?;
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        out.push(dest);
    }
    Ok(out)
}

/// Makes a named data set's files present in `dir` (its cache folder): downloads what is
/// missing, and unpacks the CIFAR archives into the binary batch files (and the class-name
/// files beside them).
pub fn ensure(name: &str, dir: &Path, needed: &[&str], t: &dyn Transfer) -> Result<()> {
    if needed.iter().all(|f| dir.join(f).exists()) {
        return Ok(());
    }
    let list = remotes(name).ok_or_else(|| Error::Invalid(format!("`{name}` cannot be downloaded")))?;
    for r in &list {
        let path = fetch(r, dir, t)?;
        if r.file.ends_with(".tar.gz") {
            extract_tar_gz(&path, dir, &|n| {
                needed.contains(&n) || n.ends_with("names.txt") || n.ends_with(".meta.txt")
            })?;
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    match needed.iter().find(|f| !dir.join(f).exists()) {
        Some(f) => Err(Error::format(dir.join(f), "missing after the download: the archive does not hold it")),
        None => Ok(()),
    }
}
