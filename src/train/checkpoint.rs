//! Checkpoints: RUN/checkpoints/step-N/ and RUN/best/, each a complete HF model directory
//! (config.json, model.safetensors, preprocessor_config.json) plus optimizer.safetensors
//! (AdamW moments keyed `<param>.m` / `<param>.v`) and state.json (format version, step,
//! RNG state, data cursor, best val loss). Written into a temporary folder and renamed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::batches::Cursor;
use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::formats::atomic::{clean_leftovers, remove_dir, write_dir_atomic};
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
    /// The best evaluation so far (validation loss, or accuracy when fine-tuning).
    pub best_val_loss: Option<f64>,
    /// Evaluations since the best one (early stopping).
    #[serde(default)]
    pub evals_since_best: usize,
    /// The step whose model is in best/ (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub best_step: Option<u64>,
    pub tokens_seen: u64,
    pub adam_step: u64,
    /// The schedule's length when --minutes fixed it.
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Whether the run applies its config's dropout (false in checkpoints of igpt versions
    /// that trained without dropout whatever the config said: those resume without it).
    #[serde(default)]
    pub dropout_applied: bool,
}

/// A parameter group trained beside the model (a classification head): its tensor name,
/// shape, values and range in the optimizer's moments.
pub struct Head<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
    pub range: std::ops::Range<usize>,
}

/// Writes a checkpoint folder as a whole ([`write_dir_atomic`]): a complete `dir` exists at
/// every instant, and a failed write (a full disk) leaves the previous one as it was.
pub fn save(
    dir: &Path,
    model: &ImageGpt,
    head: Option<&Head>,
    opt: &AdamW,
    state: &TrainState,
    palette: &Path,
) -> Result<()> {
    write_dir_atomic(dir, |tmp| write_contents(tmp, model, head, opt, state, palette))
}

/// A checkpoint's files in `tmp`: the model (HF layout), its palette, head.safetensors (the
/// extra group, if any), optimizer.safetensors (`<tensor>.m`, `<tensor>.v`) and state.json.
pub fn write_contents(
    tmp: &Path,
    model: &ImageGpt,
    head: Option<&Head>,
    opt: &AdamW,
    state: &TrainState,
    palette: &Path,
) -> Result<()> {
    save_model(model, tmp)?;
    std::fs::copy(palette, tmp.join("preprocessor_config.json")).map_err(|e| Error::io(palette, e))?;
    let mut moments: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    let groups = model.layout.entries.iter().map(|e| (e.name.as_str(), &e.shape[..], e.range.clone()));
    for (name, shape, range) in groups.chain(head.map(|h| (h.name, h.shape, h.range.clone()))) {
        moments.push((format!("{name}.m"), shape.to_vec(), &opt.m[range.clone()]));
        moments.push((format!("{name}.v"), shape.to_vec(), &opt.v[range]));
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
    if let Some(h) = head {
        write_safetensors(&tmp.join("head.safetensors"), &[(h.name.to_string(), h.shape.to_vec(), h.data)])?;
    }
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), json.as_bytes())
}

/// A checkpoint's extra parameter group `name` (head.safetensors).
pub fn load_head(dir: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let path = dir.join("head.safetensors");
    let mut map = crate::formats::TensorMap::new();
    read_safetensors(&path, &mut map)?;
    let (t, _) = map.remove(name).ok_or_else(|| Error::MissingTensor { path: path.clone(), name: name.into() })?;
    if t.shape != shape {
        return Err(Error::ShapeMismatch { path, name: name.into(), expected: shape.to_vec(), got: t.shape });
    }
    Ok(t.data)
}

/// The step recorded in a checkpoint folder's state.json (None: missing or unreadable).
pub fn step_of(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// Before a run starts or continues: removes what interrupted writes left (in RUN and
/// RUN/checkpoints), and rebuilds RUN/best from the checkpoint the latest state names as
/// best when best/ is missing or older than that step (`rebuild(checkpoint, dir)` writes
/// best/'s contents into the empty `dir`). best/ is written before its step checkpoint, so a
/// kill between the two leaves a best/ ahead of the latest checkpoint: the resumed run
/// recomputes the same step and writes it again. Returns what it did.
pub fn repair(run: &Path, rebuild: &dyn Fn(&Path, &Path) -> Result<()>) -> Result<Vec<String>> {
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
    write_dir_atomic(&best, |tmp| rebuild(&src, tmp))?;
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

/// Loads optimizer moments (the model's and the head's, if any) and state from a checkpoint
/// folder into `opt`.
pub fn load_state(
    dir: &Path,
    model: &ImageGpt,
    head: Option<(&str, std::ops::Range<usize>)>,
    opt: &mut AdamW,
) -> Result<TrainState> {
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
    let path = dir.join("optimizer.safetensors");
    let mut moments = crate::formats::TensorMap::new();
    read_safetensors(&path, &mut moments)?;
    let groups = model.layout.entries.iter().map(|e| (e.name.as_str(), e.range.clone()));
    for (name, range) in groups.chain(head) {
        for (suffix, buf) in [(".m", &mut opt.m), (".v", &mut opt.v)] {
            let key = format!("{name}{suffix}");
            let (t, _) =
                moments.get(&key).ok_or_else(|| Error::MissingTensor { path: path.clone(), name: key.clone() })?;
            if t.data.len() != range.len() {
                return Err(Error::format(
                    &path,
                    format!("`{key}` has {} values, expected {}", t.data.len(), range.len()),
                ));
            }
            buf[range.clone()].copy_from_slice(&t.data);
        }
    }
    opt.step = state.adam_step;
    Ok(state)
}
