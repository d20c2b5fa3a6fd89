//! Loading and saving models as HF model directories: `config.json` plus weights under HF
//! key names in HF orientation (Conv1D (in, out), nn.Linear (out, in)), so transformers
//! loads what igpt writes and igpt loads what transformers writes, unchanged.
//!
//! Prefixes are reconciled as HF does: a bare `ImageGPTModel` checkpoint (no
//! `transformer.` prefix) loads into a model with a head's transformer and vice versa.

use std::collections::BTreeSet;
use std::path::Path;

use super::gpt::ImageGpt;
use super::params::{ModelKind, ParamLayout};
use crate::config::ImageGptConfig;
use crate::error::{Error, Result};
use crate::formats::{self, TensorMap};

/// Which class a checkpoint is: config.json's `architectures`, else its keys.
fn infer_kind(cfg: &ImageGptConfig, tensors: &TensorMap) -> ModelKind {
    if let Some(k) = cfg.architectures.iter().flatten().find_map(|a| ModelKind::from_hf_architecture(a)) {
        return k;
    }
    if tensors.contains_key("lm_head.weight") {
        ModelKind::CausalLm
    } else if tensors.contains_key("score.weight") {
        ModelKind::Classifier
    } else {
        ModelKind::Base
    }
}

/// Loads an HF model directory; the class comes from config.json (or the keys).
pub fn load_model(dir: &Path) -> Result<ImageGpt> {
    load_model_as(dir, None)
}

/// Loads an HF model directory as `kind` (None = as saved). Loading a causal model as
/// `Base` drops its head; loading as `Classifier` needs a `score.weight`.
pub fn load_model_as(dir: &Path, kind: Option<ModelKind>) -> Result<ImageGpt> {
    if !dir.is_dir() {
        return Err(Error::format(
            dir,
            "not a model directory (expected config.json and model.safetensors or pytorch_model.bin)",
        ));
    }
    let cfg = ImageGptConfig::from_file(&dir.join("config.json"))?;
    let tensors = formats::read_model_dir(dir)?;
    let kind = kind.unwrap_or_else(|| infer_kind(&cfg, &tensors));
    // every tensor is checked against the config's layout before the arena is allocated:
    // a config far larger than its weights is refused, not allocated
    let layout = super::params::ParamLayout::new(&cfg, kind);
    let keys = match_tensors(&layout, &tensors, dir, kind)?;
    let mut model = ImageGpt::zeros(cfg, kind)?;
    for (e, key) in layout.entries.iter().zip(keys) {
        model.params[e.range.clone()].copy_from_slice(&tensors[&key].0.data);
    }
    Ok(model)
}

/// The key in `tensors` of every entry of `layout` (with or without the `transformer.`
/// prefix, as HF accepts), each of the right shape and finite; nothing left over but the
/// head of another class.
fn match_tensors(layout: &ParamLayout, tensors: &TensorMap, dir: &Path, kind: ModelKind) -> Result<Vec<String>> {
    let mut used = BTreeSet::new();
    let mut keys = Vec::with_capacity(layout.entries.len());
    for e in &layout.entries {
        // Accept the name with or without the transformer prefix (HF does the same).
        let alt = match e.name.strip_prefix("transformer.") {
            Some(bare) => bare.to_string(),
            None if e.name.starts_with("lm_head") || e.name.starts_with("score") => e.name.clone(),
            None => format!("transformer.{}", e.name),
        };
        let key = if tensors.contains_key(&e.name) { &e.name } else { &alt };
        let Some((t, path)) = tensors.get(key) else {
            return Err(Error::MissingTensor { path: dir.to_path_buf(), name: e.name.clone() });
        };
        if t.shape != e.shape {
            return Err(Error::ShapeMismatch {
                path: path.clone(),
                name: key.clone(),
                expected: e.shape.clone(),
                got: t.shape.clone(),
            });
        }
        if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{key}` holds {} at element {i}: the weights are broken (a diverged run?); use an earlier checkpoint",
                    t.data[i]
                ),
            ));
        }
        used.insert(key.clone());
        keys.push(key.clone());
    }
    for (name, (_, path)) in tensors {
        if used.contains(name) {
            continue;
        }
        // Heads of other classes are dropped when loading as a different class (HF does too).
        let other_head = (name == "lm_head.weight" && kind != ModelKind::CausalLm)
            || (name == "score.weight" && kind != ModelKind::Classifier);
        if !other_head {
            return Err(Error::UnexpectedTensor { path: path.clone(), name: name.clone() });
        }
    }
    Ok(keys)
}

/// The config as saved: `architectures` set to the model's class.
fn saved_config(model: &ImageGpt) -> ImageGptConfig {
    let mut cfg = model.config.clone();
    cfg.architectures = Some(vec![model.kind.hf_architecture().to_string()]);
    // A variant is not transformers' ImageGPT: its Auto classes must refuse it.
    cfg.model_type = if cfg.is_plain() { "imagegpt" } else { "igpt" }.into();
    cfg
}

/// The PyTorch definition of igpt's variants that a variant checkpoint carries, so that
/// `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` computes igpt's
/// numbers (transformers' own ImageGPT refuses `"model_type": "igpt"`).
const REMOTE_FILES: [(&str, &str); 2] = [
    ("configuration_igpt.py", include_str!("hf_remote/configuration_igpt.py")),
    ("modeling_igpt.py", include_str!("hf_remote/modeling_igpt.py")),
];

/// The model card of a BERT checkpoint: what transformers users must know.
const BERT_CARD: &str = "# An ImageGPT trained with the BERT objective: not a causal model\n\n\
This checkpoint was trained by igpt to predict masked pixels from all the others (the paper's BERT \
objective), with bidirectional attention. `config.json` says `\"objective\": \"bert\"` and \
`\"model_type\": \"igpt\"`, so transformers' own ImageGPT classes (which always attend causally) \
refuse it; load it with `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`, which \
runs `modeling_igpt.py` next to the weights: every position attends to every position, `input_ids` \
are the pixels themselves (no start token) and `token_mask` (B, T) marks the masked pixels, whose \
token embedding is multiplied by 0. It cannot sample or complete images (there is no raster order to \
decode in); `igpt eval` reports its masked-token NLL, `igpt probe` and `igpt finetune` use \
bidirectional features.\n";

/// `auto_map` of a variant's config.json.
const REMOTE_CLASSES: [(&str, &str); 3] = [
    ("AutoConfig", "configuration_igpt.IGPTConfig"),
    ("AutoModel", "modeling_igpt.IGPTModel"),
    ("AutoModelForCausalLM", "modeling_igpt.IGPTForCausalImageModeling"),
];

/// Saves `config.json` and `model.safetensors` (F32, HF keys) into `dir`, creating it; a
/// variant (`model_type` igpt) also gets its PyTorch modeling files and an `auto_map`.
/// Each file is written to a temporary name and renamed.
pub fn save_model(model: &ImageGpt, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut json = serde_json::to_value(saved_config(model)).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("dtype".into(), "float32".into());
        if !model.config.is_plain() {
            // transformers' remote-code convention: the files below define these classes
            let map: serde_json::Map<String, serde_json::Value> =
                REMOTE_CLASSES.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
            obj.insert("auto_map".into(), map.into());
        }
    }
    if !model.config.is_plain() {
        for (name, text) in REMOTE_FILES {
            formats::write_atomic(&dir.join(name), text.as_bytes())?;
        }
    }
    if !model.config.is_causal() {
        formats::write_atomic(&dir.join("README.md"), BERT_CARD.as_bytes())?;
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Invalid(e.to_string()))?;
    formats::write_atomic(&dir.join("config.json"), text.as_bytes())?;
    let list: Vec<(String, Vec<usize>, &[f32])> = model
        .layout
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone(), &model.params[e.range.clone()]))
        .collect();
    formats::write_safetensors(&dir.join("model.safetensors"), &list)
}
