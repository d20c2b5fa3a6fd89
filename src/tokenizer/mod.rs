//! The image tokenizer: HF's ImageGPT image processor (Pillow-exact resize, normalise,
//! nearest palette colour) and image decoding.

pub mod image_io;
pub mod processor;
pub mod resize;

pub use image_io::RgbImage;
pub use processor::{ImageProcessorConfig, SizeSpec};
pub use resize::resize_bilinear;
