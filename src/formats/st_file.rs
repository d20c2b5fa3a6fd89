//! safetensors files: reading every floating tensor of one, writing one through a temporary
//! file and a rename.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::atomic::tmp_path;
use super::tensor::{Tensor, TensorMap, bytes_to_f32, is_buffer_key};
use crate::error::{Error, Result};

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
