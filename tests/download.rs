//! `--download` against a loopback HTTP server started by the test: files are fetched,
//! SHA-256-checked, renamed into the cache only when they match; a mismatch or a dead
//! address is a clear error that leaves nothing behind; CIFAR archives are unpacked.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use igpt::data::download::{self, Quiet, Remote};
use sha2::Digest;

/// Serves `files` (path -> body) over HTTP/1.1 on 127.0.0.1 until the test ends; 404 otherwise.
fn serve(files: Vec<(String, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let files = files.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(body);
                    }
                    None => {
                        let _ =
                            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn sha(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn fetch_checks_sha256_falls_back_to_the_next_address_and_never_keeps_a_bad_file() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let base = serve(vec![("/good/data.bin".into(), body.clone()), ("/evil/data.bin".into(), b"tampered".to_vec())]);
    let tmp = tempfile::tempdir().unwrap();

    // The first address is dead (404), the second serves the file.
    let bases: &'static [&'static str] =
        Box::leak(vec![leak(format!("{base}/missing/")), leak(format!("{base}/good/"))].into_boxed_slice());
    let r = Remote { file: "data.bin", bases, sha256: leak(sha(&body)), size: body.len() as u64 };
    struct Count(std::sync::atomic::AtomicU64, std::sync::Mutex<Option<u64>>);
    impl download::Transfer for Count {
        fn start(&self, _f: &str, _u: &str, total: Option<u64>) {
            *self.1.lock().unwrap() = total;
        }
        fn advance(&self, n: u64) {
            self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let progress = Count(Default::default(), Default::default());
    let path = download::fetch(&r, tmp.path(), &progress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(progress.0.load(std::sync::atomic::Ordering::Relaxed), body.len() as u64);
    assert_eq!(*progress.1.lock().unwrap(), Some(body.len() as u64), "Content-Length reaches the bar");
    assert_eq!(files_in(tmp.path()), vec!["data.bin"], "no .part file left");
    assert_eq!(download::sha256_file(&path).unwrap(), sha(&body));

    // A file whose checksum does not match is refused and removed.
    let tmp2 = tempfile::tempdir().unwrap();
    let bases: &'static [&'static str] = Box::leak(vec![leak(format!("{base}/evil/"))].into_boxed_slice());
    let r = Remote { file: "data.bin", bases, sha256: leak(sha(&body)), size: body.len() as u64 };
    let err = download::fetch(&r, tmp2.path(), &Quiet).unwrap_err().to_string();
    assert!(err.contains("SHA-256") && err.contains("data.bin") && err.contains(&sha(b"tampered")), "{err}");
    assert!(err.contains(&tmp2.path().display().to_string()), "the error says where to put the file: {err}");
    assert!(files_in(tmp2.path()).is_empty(), "nothing kept after a mismatch");
}

#[test]
fn cifar_archives_are_unpacked_into_the_files_the_reader_expects() {
    let tmp = tempfile::tempdir().unwrap();
    let img = igpt::tokenizer::RgbImage::new(32, 32, vec![7; 3072]);
    let rec = igpt::data::cifar::write_records(&[(3, &img), (1, &img)]);
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for name in ["cifar-10-batches-bin/data_batch_1.bin", "cifar-10-batches-bin/readme.html"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(rec.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, &rec[..]).unwrap();
    }
    let gz = tar.into_inner().unwrap().finish().unwrap();
    let archive = tmp.path().join("a.tar.gz");
    std::fs::write(&archive, gz).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let got = download::extract_tar_gz(&archive, &out, &|n| n.ends_with(".bin")).unwrap();
    assert_eq!(got, vec![out.join("data_batch_1.bin")]);
    let items = igpt::data::cifar::read(&got[0], None).unwrap();
    assert_eq!(items.iter().map(|i| i.label.unwrap()).collect::<Vec<_>>(), vec![3, 1]);
    // A truncated archive is an error naming it.
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    let err = download::extract_tar_gz(&archive, &out, &|_| true).unwrap_err().to_string();
    assert!(err.contains("a.tar.gz") && err.contains("download again"), "{err}");
}

#[test]
fn prepare_download_of_a_named_set_uses_the_mirror_and_refuses_wrong_checksums() {
    // The loopback "mirror" serves MNIST-named files with the wrong contents: the real
    // files' SHA-256 values are pinned, so the download must fail, name the file and the
    // checksum, keep nothing, and exit non-zero.
    let base = serve(
        [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
        .iter()
        .map(|f| (format!("/mnist/{f}"), b"not mnist".to_vec()))
        .collect(),
    );
    let cache = tempfile::tempdir().unwrap();
    let out = cache.path().join("prep");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_igpt"))
        .args(["prepare", "--data", "mnist", "--download", "--out", out.to_str().unwrap()])
        .env("IGPT_DATA", cache.path())
        .env("IGPT_DOWNLOAD_MIRROR", format!("{base}/mnist"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("SHA-256"), "{err}");
    assert!(err.contains("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"), "{err}");
    assert!(files_in(&cache.path().join("mnist")).is_empty());
    assert!(!out.exists());

    // Without --download a missing set says how to get it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_igpt"))
        .args(["prepare", "--data", "mnist", "--out", out.to_str().unwrap()])
        .env("IGPT_DATA", cache.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--download"), "{err}");

    // Fashion-MNIST: the Debian package's files count as present (no request is made: the
    // mirror answers 404 to everything).
    if Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_igpt"))
            .args(["prepare", "--data", "fashion-mnist", "--download", "--out", out.to_str().unwrap()])
            .args(["--size", "4", "--colors", "4", "--palette-sample", "10000", "--json"])
            .env("IGPT_DATA", cache.path())
            .env("IGPT_DOWNLOAD_MIRROR", format!("{base}/nothing-here"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(rep["counts"]["test"], 10000);
    }
}

#[test]
fn every_named_set_pins_a_sha256_per_file() {
    for name in ["mnist", "fashion-mnist", "cifar10", "cifar100"] {
        let rs = download::remotes(name).unwrap();
        for r in rs {
            assert_eq!(r.sha256.len(), 64, "{name} {}", r.file);
            assert!(r.sha256.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(r.size > 0 && !r.bases.is_empty());
        }
    }
    assert!(download::remotes("emoji32").is_none());
}
