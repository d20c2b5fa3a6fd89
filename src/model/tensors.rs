//! Reading named tensors from the files HF writes: `model.safetensors`, a sharded
//! `model.safetensors.index.json`, or a `pytorch_model.bin` (via the restricted unpickler
//! in `pickle.rs`). Every tensor comes back as f32 with its shape.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A tensor read from a checkpoint, converted to f32 (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named tensors and the file each came from (for error messages).
pub type TensorMap = BTreeMap<String, (Tensor, PathBuf)>;

pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let v = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: value = f * 2^-24
            let mag = f as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -mag } else { mag };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(v)
}

pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Converts little-endian raw bytes of a floating dtype to f32.
pub fn bytes_to_f32(bytes: &[u8], dtype: Dtype, path: &Path, name: &str) -> Result<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        }
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        other => {
            return Err(Error::format(
                path,
                format!("tensor `{name}` has dtype {other:?}; only F32, F64, F16 and BF16 weights are supported"),
            ));
        }
    };
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// All floating tensors of one safetensors file. Non-float tensors (e.g. a bool causal-mask
/// buffer) are returned with an empty shape marker so the caller can decide to skip them.
pub fn read_safetensors(path: &Path, out: &mut TensorMap) -> Result<()> {
    let bytes = read_file(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file ({e}); the file may be truncated: download or save it again"),
        )
    })?;
    for (name, view) in st.tensors() {
        if matches!(view.dtype(), Dtype::BOOL | Dtype::U8 | Dtype::I64 | Dtype::I32) && is_buffer_key(&name) {
            continue;
        }
        let data = bytes_to_f32(view.data(), view.dtype(), path, &name)?;
        out.insert(name, (Tensor { shape: view.shape().to_vec(), data }, path.to_path_buf()));
    }
    Ok(())
}

/// Non-parameter buffers that older transformers versions saved (`attn.bias` causal mask,
/// `attn.masked_bias`): never weights, always skipped.
pub fn is_buffer_key(name: &str) -> bool {
    name.ends_with("attn.masked_bias") || (name.ends_with("attn.bias") && !name.ends_with("c_attn.bias"))
}

/// Reads the weights of an HF model directory: `model.safetensors`, else the sharded
/// `model.safetensors.index.json`, else `pytorch_model.bin`.
pub fn read_model_dir(dir: &Path) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let bin = dir.join("pytorch_model.bin");
    if single.exists() {
        read_safetensors(&single, &mut out)?;
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            read_safetensors(&dir.join(shard), &mut out)?;
        }
        let missing: Vec<&String> = map.keys().filter(|k| !out.contains_key(*k) && !is_buffer_key(k)).collect();
        if let Some(k) = missing.first() {
            return Err(Error::MissingTensor { path: index.clone(), name: (*k).clone() });
        }
    } else if bin.exists() {
        for (name, t) in super::pickle::read_torch_file(&bin)? {
            if !is_buffer_key(&name) {
                out.insert(name, (t, bin.clone()));
            }
        }
    } else {
        return Err(Error::format(
            dir,
            "no weights found: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin",
        ));
    }
    Ok(out)
}

/// Writes f32 tensors as a safetensors file with HF's metadata `{"format": "pt"}`, through a
/// temporary file renamed into place (a crash never leaves a half-written file).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), Dtype::F32, s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    write_safetensors_raw(path, &bytes)
}

/// [`write_safetensors`] for tensors of any dtype given as (name, dtype, shape, little-endian bytes).
pub fn write_safetensors_raw(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views: Result<Vec<(String, safetensors::tensor::TensorView)>> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            safetensors::tensor::TensorView::new(*dt, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format(path, format!("tensor `{n}`: {e}")))
        })
        .collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tmp = tmp_path(path);
    safetensors::serialize_to_file(views?, Some(meta), &tmp)
        .map_err(|e| Error::format(&tmp, format!("writing safetensors: {e}")))?;
    // safetensors creates the file readable by its owner only; give it the mode of every
    // other file igpt writes (rw-r--r--)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `dir/name.tmp-<pid>` next to the target, for write-then-rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a text file through a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn half_conversions() {
        assert_eq!(super::f16_to_f32(0x3c00), 1.0);
        assert_eq!(super::f16_to_f32(0xc000), -2.0);
        assert_eq!(super::f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(super::bf16_to_f32(0x3f80), 1.0);
    }
}
