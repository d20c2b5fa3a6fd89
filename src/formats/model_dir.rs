//! The weights of an HF model directory, whichever of its three layouts it uses.

use std::path::Path;

use super::pickle::read_torch_file;
use super::st_file::read_safetensors;
use super::tensor::{TensorMap, is_buffer_key};
use crate::error::{Error, Result};

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
        for (name, t) in read_torch_file(&bin)? {
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
