//! Checkpoints: RUN/checkpoints/step-N/ and RUN/best/, each a complete HF model directory
//! (config.json, model.safetensors, preprocessor_config.json) plus optimizer.safetensors
//! (AdamW moments keyed `<param>.m` / `<param>.v`) and state.json (format version, step,
//! RNG state, data cursor, best val loss). Written into a temporary folder and renamed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::batches::Cursor;
use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::formats::{read_safetensors, write_atomic, write_safetensors};
use crate::model::{ImageGpt, save_model};
use crate::rng::Rng;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps done.
    pub step: u64,
    pub rng: Rng,
    pub cursor: Cursor,
    pub best_val_loss: Option<f64>,
    pub tokens_seen: u64,
    pub adam_step: u64,
}

/// Writes a checkpoint folder atomically (temporary folder, then rename over `dir`).
pub fn save(dir: &Path, model: &ImageGpt, opt: &AdamW, state: &TrainState, palette: &Path) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::Invalid(format!("{}: no parent folder", dir.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    save_model(model, &tmp)?;
    std::fs::copy(palette, tmp.join("preprocessor_config.json")).map_err(|e| Error::io(palette, e))?;
    let mut moments: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for e in &model.layout.entries {
        moments.push((format!("{}.m", e.name), e.shape.clone(), &opt.m[e.range.clone()]));
        moments.push((format!("{}.v", e.name), e.shape.clone(), &opt.v[e.range.clone()]));
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    // Swap into place: an existing folder is moved aside first, then removed.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// Step checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Vec<(u64, PathBuf)> {
    let dir = run.join("checkpoints");
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join("state.json").exists().then_some((step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Removes all but the newest `keep` step checkpoints.
pub fn prune(run: &Path, keep: usize) -> Result<()> {
    let all = list(run);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}

/// Loads optimizer moments and state from a checkpoint folder into `opt`.
pub fn load_state(dir: &Path, model: &ImageGpt, opt: &mut AdamW) -> Result<TrainState> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| Error::format(&sp, format!("invalid state.json: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::format(
            &sp,
            format!("checkpoint format {} (this igpt writes {FORMAT_VERSION})", state.format_version),
        ));
    }
    let mut moments = crate::formats::TensorMap::new();
    read_safetensors(&dir.join("optimizer.safetensors"), &mut moments)?;
    for e in &model.layout.entries {
        for (suffix, buf) in [(".m", &mut opt.m), (".v", &mut opt.v)] {
            let key = format!("{}{suffix}", e.name);
            let (t, _) = moments
                .get(&key)
                .ok_or_else(|| Error::MissingTensor { path: dir.join("optimizer.safetensors"), name: key.clone() })?;
            buf[e.range.clone()].copy_from_slice(&t.data);
        }
    }
    opt.step = state.adam_step;
    Ok(state)
}
