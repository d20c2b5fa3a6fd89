//! Decoding PNG and JPEG files to 8-bit RGB, as Pillow's `Image.open(f).convert("RGB")`:
//! alpha is dropped (not composited), grey is replicated, palettes are expanded.

use std::path::Path;

use crate::error::{Error, Result};

/// An 8-bit RGB image, (height, width, 3) row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3, "RgbImage: data does not match its size");
        RgbImage { width, height, data }
    }

    /// Decodes PNG or JPEG bytes; `path` names the source in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let img = image::load_from_memory(bytes)
            .map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
        // image's to_rgb8 drops alpha and replicates grey, as Pillow's convert("RGB").
        let rgb = img.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::Image { path: path.to_path_buf(), msg: "the image is empty".into() });
        }
        Ok(RgbImage { width: w, height: h, data: rgb.into_raw() })
    }

    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes, path)
    }

    /// Writes a PNG (through a temporary file and a rename).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::new();
        let enc = image::codecs::png::PngEncoder::new(&mut buf);
        image::ImageEncoder::write_image(
            enc,
            &self.data,
            self.width as u32,
            self.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Image { path: path.to_path_buf(), msg: e.to_string() })?;
        crate::formats::write_atomic(path, &buf)
    }
}
