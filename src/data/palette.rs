//! The colour palette: k-means in HF's [-1, 1] RGB space (k-means++ initialisation, Lloyd
//! iterations parallel over colours, empty clusters re-seeded), fitted on a seeded pixel
//! sample. Pixels are 8-bit, so the fit runs on the distinct colours weighted by their
//! counts: the same optimum as over every pixel, at a fraction of the cost.
//!
//! Also reads existing palettes: an HF `preprocessor_config.json` or a raw (k, 3) `.npy`
//! (OpenAI's `kmeans_centers.npy`).

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::backend::isa::multiversion;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tokenizer::ImageProcessorConfig;

/// Distinct 8-bit colours and how often each occurs.
#[derive(Clone, Debug, Default)]
pub struct ColorCounts {
    pub colors: Vec<[u8; 3]>,
    pub counts: Vec<u64>,
}

impl ColorCounts {
    /// Counts the colours of interleaved RGB pixels.
    pub fn from_pixels(rgb: &[u8]) -> Self {
        let mut map: HashMap<u32, u64> = HashMap::new();
        for p in rgb.chunks_exact(3) {
            *map.entry(u32::from_le_bytes([p[0], p[1], p[2], 0])).or_default() += 1;
        }
        let mut v: Vec<(u32, u64)> = map.into_iter().collect();
        v.sort_unstable(); // deterministic order
        ColorCounts {
            colors: v
                .iter()
                .map(|(c, _)| {
                    let b = c.to_le_bytes();
                    [b[0], b[1], b[2]]
                })
                .collect(),
            counts: v.iter().map(|(_, n)| *n).collect(),
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// k-means settings.
#[derive(Clone, Debug)]
pub struct KMeansConfig {
    pub k: usize,
    pub max_iter: usize,
    /// Stop when the inertia improves by less than this fraction.
    pub tol: f64,
    pub seed: u64,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig { k: 512, max_iter: 100, tol: 1e-5, seed: 0 }
    }
}

/// A fitted palette.
#[derive(Clone, Debug)]
pub struct KMeansFit {
    /// (k, 3) centres in [-1, 1].
    pub centers: Vec<[f32; 3]>,
    /// Weighted sum of squared distances of the fitted pixels to their centre.
    pub inertia: f64,
    pub iterations: usize,
}

/// A colour in model space, exactly as the image processor normalises it.
pub fn to_model_space(proc: &ImageProcessorConfig, c: [u8; 3]) -> [f32; 3] {
    proc.normalize_pixel(c)
}

/// Squared distances from `p` to every centre; returns (index, distance) of the nearest
/// (first index on ties). Centres in structure-of-arrays form for vectorisation (inlined
/// into the multiversioned callers, so that the FMAs are instructions, not libm calls).
#[inline(always)]
fn nearest(p: [f32; 3], cx: &[f32], cy: &[f32], cz: &[f32], d: &mut [f32]) -> (usize, f32) {
    for i in 0..cx.len() {
        let (dx, dy, dz) = (p[0] - cx[i], p[1] - cy[i], p[2] - cz[i]);
        d[i] = dx.mul_add(dx, dy.mul_add(dy, dz * dz));
    }
    let mut best = (0, f32::INFINITY);
    for (i, &v) in d.iter().enumerate() {
        if v < best.1 {
            best = (i, v);
        }
    }
    best
}

struct Soa {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
}

impl Soa {
    fn of(c: &[[f32; 3]]) -> Soa {
        Soa {
            x: c.iter().map(|v| v[0]).collect(),
            y: c.iter().map(|v| v[1]).collect(),
            z: c.iter().map(|v| v[2]).collect(),
        }
    }
}

multiversion! {
/// Weighted inertia of `points` against `centers`, and each point's nearest centre.
pub fn assign(points: &[[f32; 3]], weights: &[f64], centers: &[[f32; 3]]) -> (f64, Vec<u32>) {
    let s = Soa::of(centers);
    let res: Vec<(u32, f64)> = points
        .par_iter()
        .zip(weights.par_iter())
        .map_init(
            || vec![0f32; centers.len()],
            |d, (p, &w)| {
                let (i, dist) = nearest(*p, &s.x, &s.y, &s.z, d);
                (i as u32, dist as f64 * w)
            },
        )
        .collect();
    (res.iter().map(|r| r.1).sum(), res.into_iter().map(|r| r.0).collect())
}
}

/// Weighted k-means++ (greedy, 2 + ln k trials per centre, as scikit-learn).
fn kmeans_pp(points: &[[f32; 3]], weights: &[f64], k: usize, rng: &mut Rng) -> Vec<[f32; 3]> {
    let pick = |rng: &mut Rng, w: &[f64]| -> usize {
        let total: f64 = w.iter().sum();
        let mut u = rng.uniform() * total;
        for (i, &x) in w.iter().enumerate() {
            if u < x {
                return i;
            }
            u -= x;
        }
        w.len() - 1
    };
    let dist2 = |a: &[f32; 3], b: &[f32; 3]| -> f64 { (0..3).map(|i| ((a[i] - b[i]) as f64).powi(2)).sum() };
    let mut centers = vec![points[pick(rng, weights)]];
    let mut closest: Vec<f64> = points.par_iter().map(|p| dist2(p, &centers[0])).collect();
    let trials = 2 + (k as f64).ln() as usize;
    while centers.len() < k {
        let pot: Vec<f64> = closest.iter().zip(weights).map(|(d, w)| d * w).collect();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for _ in 0..trials {
            let cand = pick(rng, &pot);
            let c = points[cand];
            let new_closest: Vec<f64> =
                points.par_iter().zip(closest.par_iter()).map(|(p, &d)| d.min(dist2(p, &c))).collect();
            let potential: f64 = new_closest.iter().zip(weights).map(|(d, w)| d * w).sum();
            if best.as_ref().is_none_or(|b| potential < b.0) {
                best = Some((potential, cand, new_closest));
            }
        }
        let (_, cand, new_closest) = best.expect("at least one trial");
        centers.push(points[cand]);
        closest = new_closest;
    }
    centers
}

/// Fits k centres to weighted points. `progress(iteration, inertia)` after each Lloyd step.
pub fn kmeans(
    points: &[[f32; 3]],
    weights: &[f64],
    cfg: &KMeansConfig,
    mut progress: impl FnMut(usize, f64),
) -> Result<KMeansFit> {
    if points.is_empty() {
        return Err(Error::Invalid("k-means: no pixels to fit".into()));
    }
    let k = cfg.k.min(points.len()).max(1);
    let mut rng = Rng::new(cfg.seed);
    let mut centers = kmeans_pp(points, weights, k, &mut rng);
    let mut prev = f64::INFINITY;
    let mut iterations = 0;
    let mut inertia = f64::INFINITY;
    for it in 0..cfg.max_iter {
        let (cur, labels) = assign(points, weights, &centers);
        inertia = cur;
        iterations = it + 1;
        progress(iterations, inertia);
        // Update: weighted means, accumulated in f64.
        let mut sums = vec![[0f64; 4]; k];
        for ((p, &w), &l) in points.iter().zip(weights).zip(&labels) {
            let s = &mut sums[l as usize];
            s[0] += p[0] as f64 * w;
            s[1] += p[1] as f64 * w;
            s[2] += p[2] as f64 * w;
            s[3] += w;
        }
        for (c, s) in centers.iter_mut().zip(&sums) {
            if s[3] > 0.0 {
                *c = [(s[0] / s[3]) as f32, (s[1] / s[3]) as f32, (s[2] / s[3]) as f32];
            }
        }
        let any_empty = sums.iter().any(|s| s[3] == 0.0);
        if any_empty {
            // Re-seed each empty cluster at the point farthest from its centre.
            let s = Soa::of(&centers);
            let mut d = vec![0f32; k];
            let mut far: Vec<(f32, usize)> =
                points.iter().enumerate().map(|(i, p)| (nearest(*p, &s.x, &s.y, &s.z, &mut d).1, i)).collect();
            far.sort_by(|a, b| b.0.total_cmp(&a.0));
            let empty_idx: Vec<usize> = sums.iter().enumerate().filter(|(_, s)| s[3] == 0.0).map(|(i, _)| i).collect();
            for (j, ci) in empty_idx.into_iter().enumerate() {
                centers[ci] = points[far[j % far.len()].1];
            }
        }
        if prev.is_finite() && (prev - cur) <= cfg.tol * prev && !any_empty {
            break;
        }
        prev = cur;
    }
    Ok(KMeansFit { centers, inertia, iterations })
}

/// Reads a palette: an HF `preprocessor_config.json` (its `clusters`) or a (k, 3) `.npy`
/// array of float32/float64 values in [-1, 1].
pub fn read_palette(path: &Path) -> Result<Vec<[f64; 3]>> {
    let is_npy = path.extension().is_some_and(|e| e == "npy");
    if !is_npy {
        return Ok(ImageProcessorConfig::from_file(path)?.clusters);
    }
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if b.len() < 12 || &b[..6] != b"\x93NUMPY" {
        return Err(Error::format(path, "not a .npy file (bad magic)"));
    }
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = String::from_utf8_lossy(
        b.get(start..start + hlen).ok_or_else(|| Error::format(path, "truncated .npy header"))?,
    )
    .into_owned();
    let f8 = header.contains("'<f8'");
    if !(f8 || header.contains("'<f4'")) || header.contains("'fortran_order': True") {
        return Err(Error::format(
            path,
            format!("unsupported .npy array ({header}); expected little-endian float32/float64, C order, shape (k, 3)"),
        ));
    }
    let data = &b[start + hlen..];
    let vals: Vec<f64> = if f8 {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    } else {
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect()
    };
    if vals.is_empty() || !vals.len().is_multiple_of(3) {
        return Err(Error::format(path, format!("{} values is not a (k, 3) palette", vals.len())));
    }
    let clusters: Vec<[f64; 3]> = vals.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    crate::tokenizer::processor::check_palette(path, &clusters)?;
    Ok(clusters)
}

/// Writes a (k, 3) float32 `.npy` (OpenAI's kmeans_centers.npy format).
pub fn write_npy(path: &Path, centers: &[[f64; 3]]) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 3), }}", centers.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for c in centers {
        for v in c {
            out.extend((*v as f32).to_le_bytes());
        }
    }
    crate::formats::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_centres_and_is_reproducible() {
        // Four tight blobs of different sizes; k-means must find their means.
        let truth = [[-0.8f32, -0.8, -0.8], [0.7, -0.5, 0.1], [0.0, 0.9, -0.6], [0.5, 0.5, 0.9]];
        let mut rng = Rng::new(11);
        let mut pts = Vec::new();
        for (i, c) in truth.iter().enumerate() {
            for _ in 0..(200 + 150 * i) {
                pts.push([
                    c[0] + 0.02 * rng.normal() as f32,
                    c[1] + 0.02 * rng.normal() as f32,
                    c[2] + 0.02 * rng.normal() as f32,
                ]);
            }
        }
        let w = vec![1.0; pts.len()];
        let cfg = KMeansConfig { k: 4, seed: 3, ..Default::default() };
        let fit = kmeans(&pts, &w, &cfg, |_, _| {}).unwrap();
        for t in &truth {
            let best = fit
                .centers
                .iter()
                .map(|c| (0..3).map(|i| (c[i] - t[i]).abs()).fold(0f32, f32::max))
                .fold(f32::MAX, f32::min);
            assert!(best < 0.01, "centre {t:?} not found: {:?}", fit.centers);
        }
        // inertia ~ n * 3 * 0.02^2
        let expect = pts.len() as f64 * 3.0 * 4e-4;
        assert!((fit.inertia / expect - 1.0).abs() < 0.15, "{} vs {expect}", fit.inertia);
        let again = kmeans(&pts, &w, &cfg, |_, _| {}).unwrap();
        assert_eq!(fit.centers, again.centers);
        // k is capped at the number of points.
        let few = kmeans(&pts[..3], &w[..3], &KMeansConfig { k: 10, ..Default::default() }, |_, _| {}).unwrap();
        assert_eq!(few.centers.len(), 3);
    }

    #[test]
    fn npy_roundtrip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.npy");
        let c = vec![[0.5, -0.25, 1.0], [-1.0, 0.0, 0.125]];
        write_npy(&p, &c).unwrap();
        assert_eq!(read_palette(&p).unwrap(), c);
    }
}
