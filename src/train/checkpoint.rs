//! Checkpoints: RUN/checkpoints/step-N/ and RUN/best/, each a complete HF model directory
//! (config.json, model.safetensors, preprocessor_config.json) plus optimizer.safetensors
//! (AdamW moments keyed `<param>.m` / `<param>.v`) and state.json (format version, step,
//! RNG state, data cursor, best val loss). Written into a temporary folder and renamed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::batches::Cursor;
use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::formats::atomic::{clean_leftovers, link_or_copy_dir, remove_dir, replace_dir, staging_dir};
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
    /// The step whose model is in best/ (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub best_step: Option<u64>,
    pub tokens_seen: u64,
    pub adam_step: u64,
}

/// Writes a checkpoint folder: staged in `.name.tmp-PID`, then swapped in
/// ([`replace_dir`]), so a complete `dir` exists at every instant. If the write fails (a
/// full disk), the staged folder is removed and the previous `dir` is left as it was.
pub fn save(dir: &Path, model: &ImageGpt, opt: &AdamW, state: &TrainState, palette: &Path) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::Invalid(format!("{}: no parent folder", dir.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = staging_dir(dir)?;
    let written = write_contents(&tmp, model, opt, state, palette);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    replace_dir(&tmp, dir)
}

fn write_contents(tmp: &Path, model: &ImageGpt, opt: &AdamW, state: &TrainState, palette: &Path) -> Result<()> {
    save_model(model, tmp)?;
    std::fs::copy(palette, tmp.join("preprocessor_config.json")).map_err(|e| Error::io(palette, e))?;
    let mut moments: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for e in &model.layout.entries {
        moments.push((format!("{}.m", e.name), e.shape.clone(), &opt.m[e.range.clone()]));
        moments.push((format!("{}.v", e.name), e.shape.clone(), &opt.v[e.range.clone()]));
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), json.as_bytes())
}

/// The step recorded in a checkpoint folder's state.json (None: missing or unreadable).
pub fn step_of(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// Before a run starts or continues: removes what interrupted writes left (in RUN and
/// RUN/checkpoints), and makes RUN/best the checkpoint the latest state names as best when
/// best/ is missing or older than that step. (best/ is written before its step checkpoint,
/// so a kill between the two leaves a best/ ahead of the latest checkpoint: the resumed
/// run recomputes the same step and writes it again.) Returns what it did.
pub fn repair(run: &Path) -> Result<Vec<String>> {
    let mut done = clean_leftovers(run, None)?;
    done.extend(clean_leftovers(&run.join("checkpoints"), None)?);
    let Some((_, latest)) = list(run).pop() else { return Ok(done) };
    let text = std::fs::read_to_string(latest.join("state.json")).map_err(|e| Error::io(&latest, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| Error::format(latest.join("state.json"), format!("invalid state.json: {e}")))?;
    let Some(best_step) = state.best_step else { return Ok(done) };
    let best = run.join("best");
    if step_of(&best).is_some_and(|s| s >= best_step) {
        return Ok(done);
    }
    let Some((_, src)) = list(run).into_iter().find(|(s, _)| *s == best_step) else {
        done.push(format!(
            "{} does not hold step {best_step}'s model (the best so far) and that checkpoint was rotated away; it will be written at the next better evaluation",
            best.display()
        ));
        return Ok(done);
    };
    let tmp = staging_dir(&best)?;
    std::fs::remove_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    link_or_copy_dir(&src, &tmp)?;
    replace_dir(&tmp, &best)?;
    done.push(format!("restored {} from {} (the best step, {best_step})", best.display(), src.display()));
    Ok(done)
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
        remove_dir(p)?;
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
