//! Helpers shared by the integration tests: reading the HF reference fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-imagegpt").join(name)
}

pub struct Refs {
    bytes: Vec<u8>,
    pub tolerances: serde_json::Value,
}

impl Refs {
    pub fn load(name: &str) -> Refs {
        let dir = fixture(name);
        let bytes = std::fs::read(dir.join("refs.safetensors")).expect("refs.safetensors");
        let tol = std::fs::read_to_string(dir.join("tolerances.json")).expect("tolerances.json");
        Refs { bytes, tolerances: serde_json::from_str(&tol).unwrap() }
    }

    fn view(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(key).unwrap_or_else(|_| panic!("ref tensor {key} missing"));
        (v.dtype(), v.shape().to_vec(), v.data().to_vec())
    }

    pub fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.bytes).unwrap().names().contains(&key)
    }

    pub fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let (d, s, b) = self.view(key);
        assert_eq!(d, Dtype::F32, "{key}");
        (s, b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }

    pub fn i64(&self, key: &str) -> (Vec<usize>, Vec<u32>) {
        let (d, s, b) = self.view(key);
        assert_eq!(d, Dtype::I64, "{key}");
        (s, b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect())
    }

    pub fn u8(&self, key: &str) -> (Vec<usize>, Vec<u8>) {
        let (d, s, b) = self.view(key);
        assert_eq!(d, Dtype::U8, "{key}");
        (s, b)
    }

    pub fn atol(&self, key: &str) -> f32 {
        self.tolerances["tensors"][key]["atol"].as_f64().unwrap_or_else(|| panic!("no atol for {key}")) as f32
    }

    /// Asserts max |ours - ref| <= atol for `key`; prints the margin for the record.
    pub fn check(&self, fixture: &str, key: &str, ours: &[f32]) -> f32 {
        let (_, want) = self.f32(key);
        assert_eq!(ours.len(), want.len(), "{fixture}/{key}: length");
        let diff = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let atol = self.atol(key);
        eprintln!("{fixture:>10} {key:<28} max|diff| {diff:.3e}  atol {atol:.3e}");
        assert!(diff <= atol, "{fixture}/{key}: max |diff| {diff:e} > atol {atol:e}");
        diff
    }
}

/// PNG bytes of a side x side image of a fixed pattern.
pub fn png_bytes(side: usize) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.png");
    let px: Vec<u8> = (0..side * side * 3).map(|i| (i * 37 % 251) as u8).collect();
    igpt::tokenizer::RgbImage::new(side, side, px).save_png(&p).unwrap();
    std::fs::read(p).unwrap()
}

/// DIR/a and DIR/b: 20 colourful 12x12 images each (two classes).
pub fn two_class_images(dir: &Path) {
    for (c, class) in ["a", "b"].iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..20usize {
            let px: Vec<u8> = (0..12 * 12)
                .flat_map(|j| {
                    let (x, y) = (j % 12, j / 12);
                    [((x * 20 + i * 7) % 256) as u8, ((y * 20 + c * 100) % 256) as u8, (((x + y) * 10 + i) % 256) as u8]
                })
                .collect();
            igpt::tokenizer::RgbImage::new(12, 12, px).save_png(&dir.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
}
