//! What a probe is fitted on: the pooled, normalised residual stream of each layer, the raw
//! pixels of the baseline, and `--save-features` files that other tools read.

use std::path::Path;

use safetensors::Dtype;

use crate::backend::Backend;
use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::model::{ImageGpt, Logits, Workspace};
use crate::tokenizer::ImageProcessorConfig;

/// Pooled features of every layer for every image of a split: feats[l] is (N, C).
pub fn layer_features<B: Backend>(
    model: &ImageGpt<B>,
    data: &TokenFile,
    layers: &[usize],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let (c, t, eps) = (model.config.n_embd, data.seq_len(), model.config.layer_norm_epsilon);
    if t != model.config.n_positions {
        return Err(Error::Invalid(format!(
            "{}: images of {t} pixels, the model takes {}",
            data.path.display(),
            model.config.n_positions
        )));
    }
    let mut feats: Vec<Vec<f32>> = layers.iter().map(|_| Vec::with_capacity(data.count * c)).collect();
    let mut ws = Workspace::<B>::new();
    let mut tokens = vec![0u32; batch * t];
    for start in (0..data.count).step_by(batch.max(1)) {
        let b = batch.min(data.count - start);
        for i in 0..b {
            data.image_into(start + i, &mut tokens[i * t..(i + 1) * t]);
        }
        model.forward(&mut ws, &tokens[..b * t], b, t, Logits::None, true)?;
        for (f, &l) in feats.iter_mut().zip(layers) {
            // residual stream after block l (hidden_states[l], except the last which HF stores after ln_f)
            let h = if l == model.config.n_layer { &ws.last_block_output } else { &ws.hidden_states[l] };
            f.extend(crate::backend::pool::normalised_mean_over_positions(&h[..b * t * c], b, t, c, eps));
        }
        progress(b);
    }
    Ok(feats)
}

/// Raw-pixel features: the palette colours of every pixel, (N, H*W*3), in [0, 255].
pub fn pixel_features(data: &TokenFile, proc: &ImageProcessorConfig) -> Vec<f32> {
    let t = data.seq_len();
    let mut tokens = vec![0u32; t];
    let mut out = Vec::with_capacity(data.count * t * 3);
    for i in 0..data.count {
        data.image_into(i, &mut tokens);
        out.extend(proc.decode(&tokens).iter().map(|&v| v as f32));
    }
    out
}

/// One split's features (N, D) and labels (N).
pub struct Split<'a> {
    pub x: &'a [f32],
    pub y: &'a [u16],
}

/// DIR/layer_N.safetensors (or DIR/NAME.safetensors): float32 `train`, `val`[, `test`] (N, D)
/// features before standardisation and int64 `train_labels`, `val_labels`[, `test_labels`]
/// (N), the format `../shared/bench/sklearn_probe.py` reads.
pub fn save_features(path: &Path, d: usize, splits: &[(&str, Split)]) -> Result<()> {
    let mut tensors = Vec::new();
    for (name, s) in splits {
        let n = s.y.len();
        if s.x.len() != n * d {
            return Err(Error::Invalid(format!("{name}: {} features for {n} rows of {d}", s.x.len())));
        }
        tensors.push((name.to_string(), Dtype::F32, vec![n, d], s.x.iter().flat_map(|v| v.to_le_bytes()).collect()));
        let labels: Vec<u8> = s.y.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
        tensors.push((format!("{name}_labels"), Dtype::I64, vec![n], labels));
    }
    crate::formats::write_safetensors_raw(path, &tensors)
}
