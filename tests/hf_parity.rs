//! Parity with Hugging Face transformers' ImageGPT on the reference fixtures
//! (tests/fixtures/hf-imagegpt: random weights, outputs of transformers 5.24.0).
//! Every float tensor is checked against its tolerances.json atol; token ids exactly.

mod common;

use common::{Refs, fixture};
use igpt::generate::greedy_uncached;
use igpt::model::{Logits, ModelKind, Workspace, load_model};
use igpt::tokenizer::{ImageProcessorConfig, RgbImage};

const ALL: [&str; 4] = ["tiny", "small", "tiny-cls", "tiny-base"];

fn test_images(name: &str) -> Vec<RgbImage> {
    (0..3).map(|i| RgbImage::open(&fixture(name).join(format!("test_image_{i}.png"))).unwrap()).collect()
}

#[test]
fn processor_matches_pillow_and_hf_exactly() {
    for name in ALL {
        let refs = Refs::load(name);
        let proc = ImageProcessorConfig::from_file(&fixture(name).join("preprocessor_config.json")).unwrap();
        let imgs = test_images(name);
        let (h, w) = proc.hw();
        let (_, resized) = refs.u8("proc_resized");
        let (_, pixel_values) = refs.f32("proc_pixel_values"); // (3, C, H, W)
        let (_, ids) = refs.i64("proc_input_ids");
        for (i, img) in imgs.iter().enumerate() {
            assert_eq!(
                proc.resize(img).unwrap(),
                resized[i * h * w * 3..(i + 1) * h * w * 3],
                "{name}: resized image {i}"
            );
            let pv = proc.pixel_values(img).unwrap(); // (H, W, C)
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let want = pixel_values[((i * 3 + c) * h + y) * w + x];
                        assert!((pv[(y * w + x) * 3 + c] - want).abs() <= 1e-6, "{name}: pixel value");
                    }
                }
            }
            assert_eq!(proc.encode(img).unwrap(), ids[i * h * w..(i + 1) * h * w], "{name}: token ids of image {i}");
        }
    }
}

#[test]
fn forward_matches_hf_hidden_states_and_logits() {
    for name in ALL {
        let refs = Refs::load(name);
        let model = load_model(&fixture(name)).unwrap();
        let expect_kind = match name {
            "tiny-cls" => ModelKind::Classifier,
            "tiny-base" => ModelKind::Base,
            _ => ModelKind::CausalLm,
        };
        assert_eq!(model.kind, expect_kind);
        let (shape, ids) = refs.i64("input_ids");
        let (b, t) = (shape[0], shape[1]);
        let mut ws = Workspace::new();
        ws.want_attentions = refs.has("attentions.0");
        model.forward(&mut ws, &ids, b, t, Logits::All, true).unwrap();
        assert_eq!(ws.hidden_states.len(), model.config.n_layer + 1);
        for (i, hs) in ws.hidden_states.iter().enumerate() {
            refs.check(name, &format!("hidden_states.{i}"), hs);
        }
        refs.check(name, "last_block_output", &ws.last_block_output);
        refs.check(name, "last_hidden_state", &ws.last_hidden[..b * t * model.config.n_embd]);
        if model.kind == ModelKind::CausalLm {
            refs.check(name, "logits", &ws.logits);
        }
        for l in 0..model.config.n_layer {
            if ws.want_attentions {
                refs.check(name, &format!("attentions.{l}"), &ws.attentions[l]);
            }
        }
        if model.kind == ModelKind::Classifier {
            let pooled = model.pooled(&ws);
            refs.check(name, "pooled", &pooled);
            refs.check(name, "logits", &model.classify(&pooled).unwrap());
        }
        if refs.has("input_ids_full") {
            // Full context (every position embedding); only the last 16 positions are stored.
            let (shape, ids) = refs.i64("input_ids_full");
            let (b, t) = (shape[0], shape[1]);
            model.forward(&mut ws, &ids, b, t, Logits::All, false).unwrap();
            let (c, v) = (model.config.n_embd, model.config.n_colors());
            let tail = |buf: &[f32], width: usize| -> Vec<f32> {
                (0..b).flat_map(|i| buf[(i * t + t - 16) * width..(i + 1) * t * width].to_vec()).collect()
            };
            refs.check(name, "last_hidden_state_full_tail", &tail(&ws.last_hidden, c));
            refs.check(name, "logits_full_tail", &tail(&ws.logits, v));
        }
    }
}

#[test]
fn greedy_generation_matches_hf_generate() {
    for name in ["tiny", "small"] {
        let refs = Refs::load(name);
        let model = load_model(&fixture(name)).unwrap();
        for which in ["gen_short", "gen_tail"] {
            let (shape, prefix) = refs.i64(&format!("{which}_prefix"));
            let (oshape, want) = refs.i64(&format!("{which}_output"));
            let steps = oshape[1] - shape[1];
            let got = greedy_uncached(&model, &prefix, shape[0], steps).unwrap();
            assert_eq!(got, want, "{name}/{which}");
        }
    }
}

#[test]
fn pytorch_bin_equals_safetensors() {
    let dir = fixture("tiny");
    let from_st = load_model(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).unwrap();
    std::fs::copy(dir.join("pytorch_model.bin"), tmp.path().join("pytorch_model.bin")).unwrap();
    let from_bin = load_model(tmp.path()).unwrap();
    assert_eq!(from_bin.kind, ModelKind::CausalLm);
    assert!(from_st.params == from_bin.params, "pytorch_model.bin and model.safetensors differ");
}
