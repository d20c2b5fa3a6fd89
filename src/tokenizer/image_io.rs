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

/// The largest side of an image igpt decodes.
pub const MAX_SIDE: u32 = 16_384;
/// The most memory one decoded image may take (the decoder's own buffers included).
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3, "RgbImage: data does not match its size");
        RgbImage { width, height, data }
    }

    /// Decodes PNG or JPEG bytes; `path` names the source in errors. The decoder is held to
    /// [`MAX_DECODE_BYTES`] and [`MAX_SIDE`], checked from the header before any pixel is
    /// inflated (a 10000x10000 PNG of a few kilobytes is refused, not decoded).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Image { path: path.to_path_buf(), msg };
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        (limits.max_image_width, limits.max_image_height) = (Some(MAX_SIDE), Some(MAX_SIDE));
        reader.limits(limits);
        let img = reader.decode().map_err(|e| match e {
            image::ImageError::Limits(_) => bad(format!(
                "{e}: igpt decodes images of at most {MAX_SIDE} pixels a side and {} MiB; shrink it first (e.g. `convert in.png -resize 1024x1024 out.png`)",
                MAX_DECODE_BYTES >> 20
            )),
            e => bad(e.to_string()),
        })?;
        // image's to_rgb8 drops alpha and replicates grey, as Pillow's convert("RGB").
        let rgb = img.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::Image { path: path.to_path_buf(), msg: "the image is empty".into() });
        }
        Ok(RgbImage { width: w, height: h, data: rgb.into_raw() })
    }

    /// The image resized (Pillow-exact bilinear) to side x side, if `side` is given and differs.
    pub fn fit(self, side: Option<usize>) -> Self {
        match side {
            Some(s) if (self.width, self.height) != (s, s) => {
                let data = crate::tokenizer::resize::resize_bilinear(&self.data, (self.width, self.height), (s, s), 3);
                RgbImage { width: s, height: s, data }
            }
            _ => self,
        }
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
