//! Mutation tests of every parser: 10,000 mutated copies of a valid input each (bits flipped,
//! bytes and words set to edge values, slices cut, repeated or inserted; numbers in JSON
//! replaced by huge, negative or non-numbers), each parsed in-process. No parse may panic,
//! take more than a few seconds, or allocate more than `CAP` bytes beyond what was live
//! before it (a counting global allocator measures the peak).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use igpt::config::ImageGptConfig;
use igpt::data::{cifar, idx, parquet, tokens};
use igpt::model::{ImageGpt, ModelKind, load_model, save_model};
use igpt::tokenizer::{ImageProcessorConfig, RgbImage};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), Relaxed) + l.size(), Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), Relaxed) + l.size(), Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                PEAK.fetch_max(LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size(), Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most a single parse of a mutated small input may allocate: the stated caps (an image
/// decoder's 256 MiB) and nothing near the sizes a mutated header can claim.
const CAP: usize = 300 << 20;
const MUTANTS: usize = 10_000;
const SLOW: Duration = Duration::from_secs(5);

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 17
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EDGE: [u64; 8] = [0, 1, 0x7f, 0xff, 0x7fff_ffff, 0xffff_ffff, 1 << 40, u64::MAX];
const NUMBERS: [&str; 8] = ["0", "-1", "1e308", "99999999999999999999", "NaN", "4294967296", "\"x\"", "null"];

/// One mutant of `valid`: one to four edits, or for JSON (`text`) sometimes a number swapped.
fn mutate(valid: &[u8], rng: &mut Lcg, text: bool) -> Vec<u8> {
    let mut b = valid.to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = b.len().max(1);
        match rng.below(if text { 8 } else { 7 }) {
            0 => {
                let i = rng.below(n);
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(n);
                if let Some(x) = b.get_mut(i) {
                    *x = EDGE[rng.below(8)] as u8;
                }
            }
            2 => {
                let (i, v) = (rng.below(n), EDGE[rng.below(8)]);
                let w = [4, 8][rng.below(2)];
                let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                for (x, &byte) in b.iter_mut().skip(i).zip(&bytes[..w]) {
                    *x = byte;
                }
            }
            3 => b.truncate(rng.below(n)),
            4 => {
                let (i, len) = (rng.below(n), 1 + rng.below(64));
                let piece: Vec<u8> = b.iter().skip(i).take(len).copied().collect();
                let at = rng.below(n);
                b.splice(at.min(b.len())..at.min(b.len()), piece);
            }
            5 => {
                let at = rng.below(n).min(b.len());
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            6 => {
                let (i, len) = (rng.below(n), 1 + rng.below(32));
                let end = (i + len).min(b.len());
                if i < end {
                    b.drain(i..end);
                }
            }
            _ => {
                // a number in the JSON replaced
                let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
                if let Some(&i) = digits.get(rng.below(digits.len())) {
                    let mut j = i;
                    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.' || b[j] == b'e' || b[j] == b'-') {
                        j += 1;
                    }
                    b.splice(i..j, NUMBERS[rng.below(8)].bytes());
                }
            }
        }
    }
    b
}

/// Parses `MUTANTS` mutants of `valid` with `parse`, checking no panic, time and allocation.
fn fuzz(name: &str, valid: &[u8], text: bool, seed: u64, mut parse: impl FnMut(&[u8]) -> bool) {
    let mut rng = Lcg(seed);
    let (mut ok, mut worst_alloc, mut worst_time) = (0, 0, Duration::ZERO);
    assert!(parse(valid), "{name}: the valid input does not parse");
    for i in 0..MUTANTS {
        let m = mutate(valid, &mut rng, text);
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| parse(&m)));
        let (took, grew) = (t0.elapsed(), PEAK.load(Relaxed).saturating_sub(base));
        let Ok(accepted) = r else {
            let _ = std::fs::write(std::env::temp_dir().join(format!("igpt-mutant-{name}-{i}")), &m);
            panic!("{name}: mutant {i} panicked (saved to the temp folder as igpt-mutant-{name}-{i})");
        };
        assert!(took < SLOW, "{name}: mutant {i} took {took:?}");
        assert!(grew <= CAP, "{name}: mutant {i} allocated {} MiB", grew >> 20);
        ok += accepted as usize;
        worst_alloc = worst_alloc.max(grew);
        worst_time = worst_time.max(took);
    }
    eprintln!(
        "{name}: {MUTANTS} mutants, {ok} still parse; at most {} KiB allocated and {worst_time:?} per parse",
        worst_alloc >> 10
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A tiny model (1 layer, n_embd 8, 4x4 images, 16 colours) saved in `dir`.
fn tiny_model(dir: &Path) {
    let cfg = ImageGptConfig::with_shape(1, 8, 2).with_image(4, 16);
    let m = ImageGpt::init_random(cfg, ModelKind::CausalLm, 1).unwrap();
    save_model(&m, dir).unwrap();
}

fn png(side: usize) -> Vec<u8> {
    common::png_bytes(side)
}

/// Every parser in one test: the allocator's peak is process-wide, so they run one by one.
#[test]
fn no_mutant_of_a_valid_input_panics_hangs_or_allocates_past_the_cap() {
    // the parquet crate's panics that igpt turns into errors are not printed (as in the binary)
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !igpt::error::containing_panics() {
            hook(info)
        }
    }));
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // safetensors (the whole model directory loader over a mutated weights file)
    let m = d.join("m");
    tiny_model(&m);
    let st = std::fs::read(m.join("model.safetensors")).unwrap();
    fuzz("safetensors", &st, false, 1, |b| {
        write(&m.join("model.safetensors"), b);
        load_model(&m).is_ok()
    });
    write(&m.join("model.safetensors"), &st);

    // config.json (loaded with valid weights)
    let cfg = std::fs::read(m.join("config.json")).unwrap();
    fuzz("config.json", &cfg, true, 2, |b| {
        write(&m.join("config.json"), b);
        load_model(&m).is_ok()
    });
    write(&m.join("config.json"), &cfg);

    // preprocessor_config.json
    let proc = ImageProcessorConfig::new((0..16).map(|i| [i as f64 / 16.0, -0.5, 0.25]).collect(), 4, 4);
    let pp = d.join("preprocessor_config.json");
    proc.save(&pp).unwrap();
    let pj = std::fs::read(&pp).unwrap();
    let img = RgbImage::new(6, 5, (0..90).map(|i| i as u8).collect());
    fuzz("preprocessor_config.json", &pj, true, 3, |b| {
        write(&pp, b);
        ImageProcessorConfig::from_file(&pp).is_ok_and(|p| p.encode(&img).is_ok())
    });

    // pytorch_model.bin: mutated pickles in a valid zip, and mutated zips
    let pickle = valid_pickle();
    let bin = d.join("pytorch_model.bin");
    fuzz("pickle", &pickle, false, 4, |b| {
        write(&bin, &torch_zip(b, 16));
        igpt::formats::pickle::read_torch_file(&bin).is_ok()
    });
    let zipped = torch_zip(&pickle, 16);
    fuzz("pytorch_model.bin zip", &zipped, false, 5, |b| {
        write(&bin, b);
        igpt::formats::pickle::read_torch_file(&bin).is_ok()
    });

    // token files (opened, then every image and label read)
    let tp = d.join("train.tokens");
    let toks: Vec<u16> = (0..4 * 16).map(|i| (i % 16) as u16).collect();
    tokens::write(&tp, &toks, Some(&[0, 1, 0, 1]), (4, 4), 16).unwrap();
    let tv = std::fs::read(&tp).unwrap();
    fuzz("token file", &tv, false, 6, |b| {
        write(&tp, b);
        tokens::TokenFile::open(&tp).is_ok_and(|f| {
            (0..f.count).for_each(|i| drop(f.image(i)));
            f.labels();
            true
        })
    });

    // CIFAR records
    let imgs: Vec<RgbImage> = (0..3).map(|k| RgbImage::new(32, 32, vec![k as u8 * 40; 32 * 32 * 3])).collect();
    let recs = cifar::write_records(&imgs.iter().enumerate().map(|(i, im)| (i as u8, im)).collect::<Vec<_>>());
    fuzz("CIFAR", &recs, false, 7, |b| cifar::parse(b, 1, Path::new("c.bin")).is_ok());

    // IDX images (raw and gzipped) with their labels
    let (ib, lb) = idx::write(&[vec![1; 16], vec![2; 16], vec![3; 16]], 4, 4, &[0, 1, 2]);
    let (ip, lp) = (d.join("i"), d.join("l"));
    write(&lp, &lb);
    fuzz("IDX", &ib, false, 8, |b| {
        write(&ip, b);
        idx::read(&ip, Some(&lp)).is_ok()
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&ib).unwrap();
    fuzz("IDX gzip", &gz.finish().unwrap(), false, 9, |b| {
        write(&ip, b);
        idx::read(&ip, Some(&lp)).is_ok()
    });
    write(&ip, &ib);
    fuzz("IDX labels", &lb, false, 10, |b| {
        write(&lp, b);
        idx::read(&ip, Some(&lp)).is_ok()
    });

    // parquet (hub layout, three small PNGs)
    let pq = d.join("p.parquet");
    parquet::write(&pq, &[png(4), png(5), png(3)], &[0, 1, 2], &["a", "b", "c"], 2).unwrap();
    let pv = std::fs::read(&pq).unwrap();
    fuzz("parquet", &pv, false, 11, |b| {
        write(&pq, b);
        parquet::read(&pq, &Default::default(), Some(4), &|| {}).is_ok()
    });

    // PNG
    let p = png(8);
    fuzz("PNG", &p, false, 12, |b| RgbImage::decode(b, Path::new("x.png")).is_ok());
}

/// A state dict of two float tensors over one storage of 16 floats: `a` (2, 4) and `b`
/// (4,) at offset 8, as torch.save writes it (protocol 2, memoised).
fn valid_pickle() -> Vec<u8> {
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(".to_vec();
    for (name, offset, shape, stride) in [("a", 0u8, &[2u8, 4][..], &[4u8, 1][..]), ("b", 8, &[4], &[1])] {
        p.extend_from_slice(b"X\x01\x00\x00\x00");
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x10tQK");
        p.push(offset);
        for dims in [shape, stride] {
            for &x in dims {
                p.extend_from_slice(&[b'K', x]);
            }
            p.push(if dims.len() == 1 { 0x85 } else { 0x86 });
        }
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    p
}

fn torch_zip(pickle: &[u8], floats: usize) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/data/0", o).unwrap();
    z.write_all(&(0..floats).flat_map(|i| (i as f32).to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    z.finish().unwrap().into_inner()
}
