//! HF's `ImageGPTImageProcessor` (Pillow backend): `preprocessor_config.json` read and
//! written, and the pipeline image -> resize -> rescale -> normalise -> nearest colour.
//! The way back: token ids -> RGB with `rint(127.5 * (c + 1))`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::image_io::RgbImage;
use super::resize::resize_bilinear;
use crate::error::{Error, Result};

/// `size` is `{"height": h, "width": w}` in current files and a plain int in legacy ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    HeightWidth { height: usize, width: usize },
    Square(usize),
}

impl SizeSpec {
    pub fn hw(&self) -> (usize, usize) {
        match *self {
            SizeSpec::HeightWidth { height, width } => (height, width),
            SizeSpec::Square(s) => (s, s),
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_half() -> [f64; 3] {
    [0.5; 3]
}
fn d_resample() -> u32 {
    2
}
fn d_size() -> SizeSpec {
    SizeSpec::HeightWidth { height: 256, width: 256 }
}
fn d_type() -> Option<String> {
    Some("ImageGPTImageProcessor".into())
}

/// `preprocessor_config.json` with HF's field names and class defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessorConfig {
    /// Palette in [-1, 1] RGB space, (n_clusters, 3).
    pub clusters: Vec<[f64; 3]>,
    #[serde(default = "d_true")]
    pub do_color_quantize: bool,
    #[serde(default = "d_true")]
    pub do_normalize: bool,
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    #[serde(default = "d_true")]
    pub do_resize: bool,
    #[serde(default = "d_half")]
    pub image_mean: [f64; 3],
    #[serde(default = "d_half")]
    pub image_std: [f64; 3],
    #[serde(default = "d_type", skip_serializing_if = "Option::is_none")]
    pub image_processor_type: Option<String>,
    /// PIL resample code; only 2 (BILINEAR) is implemented.
    #[serde(default = "d_resample")]
    pub resample: u32,
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "d_size")]
    pub size: SizeSpec,
}

/// A palette igpt can use: at most 65535 colours (token ids are u16, one is SOS), every
/// coordinate a finite number (JSON has no NaN: a NaN would be written as `null`).
pub fn check_palette(path: &Path, clusters: &[[f64; 3]]) -> Result<()> {
    if clusters.len() > u16::MAX as usize {
        return Err(Error::format(
            path,
            format!(
                "the palette has {} colours; igpt's token ids take at most 65535 (the paper uses 512)",
                clusters.len()
            ),
        ));
    }
    if let Some(i) = clusters.iter().position(|c| c.iter().any(|v| !v.is_finite())) {
        return Err(Error::format(
            path,
            format!("palette colour {i} is {:?}: every coordinate must be a finite number", clusters[i]),
        ));
    }
    Ok(())
}

impl ImageProcessorConfig {
    /// A processor for `clusters` at height x width, HF defaults otherwise.
    pub fn new(clusters: Vec<[f64; 3]>, height: usize, width: usize) -> Self {
        let mut c: ImageProcessorConfig = serde_json::from_str(r#"{"clusters": []}"#).expect("defaults deserialise");
        c.clusters = clusters;
        c.size = SizeSpec::HeightWidth { height, width };
        c
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: ImageProcessorConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid ImageGPT preprocessor_config.json: {e}")))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.clusters.is_empty() && self.do_color_quantize {
            return Err(Error::format(path, "`clusters` is empty: a palette is needed to quantise colours"));
        }
        check_palette(path, &self.clusters)?;
        if self.resample != 2 && self.do_resize {
            return Err(Error::format(
                path,
                format!("resample = {} is not supported; igpt implements Pillow BILINEAR (2)", self.resample),
            ));
        }
        let (h, w) = self.size.hw();
        if h == 0 || w == 0 || h > 4096 || w > 4096 {
            return Err(Error::format(path, format!("`size` is {h}x{w}: give 1 to 4096 pixels a side")));
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        check_palette(path, &self.clusters)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::formats::write_atomic(path, text.as_bytes())
    }

    pub fn n_clusters(&self) -> usize {
        self.clusters.len()
    }

    /// (height, width) of the model's images.
    pub fn hw(&self) -> (usize, usize) {
        self.size.hw()
    }

    /// Resize (if asked) to the configured size. Returns (H, W, 3) u8. With `do_resize: false`
    /// the image must already have the model's size.
    pub fn resize(&self, img: &RgbImage) -> Result<Vec<u8>> {
        let (h, w) = self.hw();
        if (img.width, img.height) == (w, h) {
            return Ok(img.data.clone());
        }
        if !self.do_resize {
            return Err(Error::Invalid(format!(
                "the image is {}x{} but the model takes {w}x{h} and its preprocessor_config.json says `do_resize: false`; resize the image to {w}x{h} or set `do_resize` to true",
                img.width, img.height
            )));
        }
        Ok(resize_bilinear(&img.data, (img.width, img.height), (w, h), 3))
    }

    /// u8 -> model space exactly as HF: f32(f64(u8) * rescale), then (v - mean) / std in f32.
    pub fn normalize_pixel(&self, rgb: [u8; 3]) -> [f32; 3] {
        let mut out = [0f32; 3];
        for c in 0..3 {
            let mut v = if self.do_rescale { (rgb[c] as f64 * self.rescale_factor) as f32 } else { rgb[c] as f32 };
            if self.do_normalize {
                v = (v - self.image_mean[c] as f32) / self.image_std[c] as f32;
            }
            out[c] = v;
        }
        out
    }

    /// Nearest cluster by squared distance as NumPy computes it in HF
    /// (`|p|^2 - 2 p.c + |c|^2`, |p|^2 in f32, the rest in f64); the first index wins ties.
    pub fn nearest(&self, p: [f32; 3]) -> u32 {
        let a2 = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]) as f64;
        let (mut best, mut best_d) = (0usize, f64::INFINITY);
        for (i, c) in self.clusters.iter().enumerate() {
            let ab = p[0] as f64 * c[0] + p[1] as f64 * c[1] + p[2] as f64 * c[2];
            let b2 = c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
            let d = a2 - 2.0 * ab + b2;
            if d < best_d {
                best_d = d;
                best = i;
            }
        }
        best as u32
    }

    /// Token ids of an image (raster order, no SOS): HF's `input_ids`.
    pub fn encode(&self, img: &RgbImage) -> Result<Vec<u32>> {
        Ok(self.resize(img)?.chunks_exact(3).map(|p| self.nearest(self.normalize_pixel([p[0], p[1], p[2]]))).collect())
    }

    /// Normalised pixel values (H, W, 3) f32: HF's `pixel_values` with do_color_quantize = false
    /// (HF lays them out (3, H, W)).
    pub fn pixel_values(&self, img: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.resize(img)?.chunks_exact(3).flat_map(|p| self.normalize_pixel([p[0], p[1], p[2]])).collect())
    }

    /// Token ids back to RGB: rint(127.5 * (c + 1)) per channel. Ids outside the palette
    /// (e.g. SOS) become mid-grey.
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        tokens
            .iter()
            .flat_map(|&t| match self.clusters.get(t as usize) {
                Some(c) => c.map(|v| (127.5 * (v + 1.0)).round_ties_even().clamp(0.0, 255.0) as u8),
                None => [128, 128, 128],
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_current_size() {
        let legacy: ImageProcessorConfig = serde_json::from_str(
            r#"{"clusters": [[0,0,0]], "size": 32, "feature_extractor_type": "ImageGPTFeatureExtractor"}"#,
        )
        .unwrap();
        assert_eq!(legacy.hw(), (32, 32));
        let cur: ImageProcessorConfig =
            serde_json::from_str(r#"{"clusters": [[0,0,0]], "size": {"height": 24, "width": 30}}"#).unwrap();
        assert_eq!(cur.hw(), (24, 30));
        let defaults: ImageProcessorConfig = serde_json::from_str(r#"{"clusters": [[0,0,0]]}"#).unwrap();
        assert_eq!(defaults.hw(), (256, 256));
        assert_eq!(defaults.rescale_factor, 1.0 / 255.0);
    }

    #[test]
    fn quantise_roundtrip_and_ties() {
        // Palette of exact grey levels: decode(encode(x)) returns the palette colour.
        let p = ImageProcessorConfig::new(vec![[-1.0; 3], [0.0; 3], [1.0; 3], [0.0; 3]], 1, 1);
        assert_eq!(p.nearest(p.normalize_pixel([0, 0, 0])), 0);
        assert_eq!(p.nearest(p.normalize_pixel([255, 255, 255])), 2);
        // 128 -> 0.00392..: nearest is index 1, not its duplicate 3 (first index wins).
        assert_eq!(p.nearest(p.normalize_pixel([128, 128, 128])), 1);
        assert_eq!(p.decode(&[0, 1, 2]), vec![0, 0, 0, 128, 128, 128, 255, 255, 255]);
    }
}
