//! The hand-written backward against PyTorch (tests/fixtures/train-tiny): every parameter's
//! gradient at step 0 for the GPT and BERT objectives.

mod common;

use std::path::{Path, PathBuf};

use igpt::model::load_model;
use igpt::model::train_graph::{Objective, TrainActs};
use safetensors::SafeTensors;

fn train_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train-tiny")
}

fn read_all(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype())).collect()
}

fn batch(name: &str, step: usize) -> (Vec<u32>, Vec<usize>) {
    let all = read_all(&train_fixture().join("batches.safetensors"));
    let (_, shape, data, dtype) = all.into_iter().find(|t| t.0 == name).unwrap();
    let per = shape[1] * shape[2];
    let vals: Vec<u32> = match dtype {
        safetensors::Dtype::I64 => {
            data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
        }
        _ => data.iter().map(|&b| b as u32).collect(),
    };
    (vals[step * per..(step + 1) * per].to_vec(), shape)
}

#[test]
fn step0_gradients_match_pytorch() {
    let model = load_model(&common::fixture("tiny")).unwrap();
    for (obj, file) in
        [(Objective::Gpt, "grads_step0_gpt.safetensors"), (Objective::Bert, "grads_step0_bert.safetensors")]
    {
        let (tokens, shape) = batch(if obj == Objective::Gpt { "gpt_tokens" } else { "bert_tokens" }, 0);
        let mask: Option<Vec<bool>> =
            (obj == Objective::Bert).then(|| batch("bert_mask", 0).0.iter().map(|&m| m == 1).collect());
        let mut grads = vec![0f32; model.params.len()];
        let mut acts = TrainActs::new();
        let loss =
            model.forward_backward(&mut acts, &mut grads, &tokens, shape[1], shape[2], obj, mask.as_deref()).unwrap();
        let refj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(train_fixture().join("reference.json")).unwrap()).unwrap();
        let key = if obj == Objective::Gpt { "gpt" } else { "bert" };
        let want_loss = refj["results"][key]["losses_f64"][0].as_f64().unwrap();
        assert!((loss - want_loss).abs() < 1e-5, "{key}: loss {loss} vs {want_loss}");
        let mut worst = (0f32, String::new());
        for (name, _, data, _) in read_all(&train_fixture().join(file)) {
            let want: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let e = model.layout.find(&name).unwrap_or_else(|| panic!("{name}"));
            let got = &grads[e.range.clone()];
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
        eprintln!("{key}: loss {loss:.7} (ref {want_loss:.7}), worst gradient diff {:.2e} in {}", worst.0, worst.1);
        assert!(worst.0 <= 1e-6, "{key}: gradient of {} differs by {:e}", worst.1, worst.0);
    }
}

/// 10 GPT steps and 3 BERT steps of AdamW (lr 1e-3, betas 0.9/0.95, clip 1.0) from the tiny
/// fixture: every loss, every pre-clip gradient norm and the final weights.
#[test]
fn adamw_trajectory_matches_pytorch() {
    use igpt::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
    let refj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(train_fixture().join("reference.json")).unwrap()).unwrap();
    for (obj, key, steps) in [(Objective::Gpt, "gpt", 10), (Objective::Bert, "bert", 3)] {
        let mut model = load_model(&common::fixture("tiny")).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &model.layout);
        let mut acts = TrainActs::new();
        let mut grads = vec![0f32; model.params.len()];
        for s in 0..steps {
            let (tokens, shape) = batch(if obj == Objective::Gpt { "gpt_tokens" } else { "bert_tokens" }, s);
            let mask: Option<Vec<bool>> =
                (obj == Objective::Bert).then(|| batch("bert_mask", s).0.iter().map(|&m| m == 1).collect());
            grads.fill(0.0);
            let loss = model
                .forward_backward(&mut acts, &mut grads, &tokens, shape[1], shape[2], obj, mask.as_deref())
                .unwrap();
            let norm = clip_grad_norm(&mut grads, 1.0);
            opt.update(&mut model.params, &grads, 1e-3);
            let want_loss = refj["results"][key]["losses_f64"][s].as_f64().unwrap();
            let want_norm = refj["results"][key]["grad_norms_f64"][s].as_f64().unwrap();
            assert!((loss - want_loss).abs() < 1e-5, "{key} step {s}: loss {loss} vs {want_loss}");
            assert!(((norm - want_norm) / want_norm).abs() < 1e-4, "{key} step {s}: grad norm {norm} vs {want_norm}");
        }
        let mut worst = 0f32;
        for (name, _, data, _) in read_all(&train_fixture().join(format!("final_{key}.safetensors"))) {
            let want: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let e = model.layout.find(&name).unwrap();
            worst = model.params[e.range.clone()].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        }
        eprintln!("{key}: final weights max |diff| {worst:.2e} (tolerance 5e-3)");
        assert!(worst <= 5e-3, "{key}: final weights differ by {worst}");
    }
}
