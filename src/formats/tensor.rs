//! A checkpoint tensor as igpt holds it (f32, row-major, with its shape) and the conversion
//! of the floating dtypes checkpoints store (f32, f64, f16, bf16 through `half`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::error::{Error, Result};

/// A tensor read from a checkpoint, converted to f32 (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named tensors and the file each came from (for error messages).
pub type TensorMap = BTreeMap<String, (Tensor, PathBuf)>;

/// Non-parameter buffers that older transformers versions saved (`attn.bias` causal mask,
/// `attn.masked_bias`): never weights, always skipped.
pub fn is_buffer_key(name: &str) -> bool {
    name.ends_with("attn.masked_bias") || (name.ends_with("attn.bias") && !name.ends_with("c_attn.bias"))
}

/// Converts little-endian raw bytes of a floating dtype to f32.
pub fn bytes_to_f32(bytes: &[u8], dtype: Dtype, path: &Path, name: &str) -> Result<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        }
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(Error::format(
                path,
                format!("tensor `{name}` has dtype {other:?}; only F32, F64, F16 and BF16 weights are supported"),
            ));
        }
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        let f = |bits: u16, dt| bytes_to_f32(&bits.to_le_bytes(), dt, Path::new("x"), "t").unwrap()[0];
        assert_eq!(f(0x3c00, Dtype::F16), 1.0);
        assert_eq!(f(0xc000, Dtype::F16), -2.0);
        assert_eq!(f(0x0001, Dtype::F16), 2f32.powi(-24));
        assert!(f(0x7c00, Dtype::F16).is_infinite());
        assert_eq!(f(0x3f80, Dtype::BF16), 1.0);
        assert!(bytes_to_f32(&[0; 4], Dtype::I32, Path::new("x"), "t").unwrap_err().to_string().contains("I32"));
    }
}
