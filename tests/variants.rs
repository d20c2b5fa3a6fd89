//! The architecture options against the independent PyTorch implementation
//! (tests/fixtures/variants, `architectures.md`): logits and hidden states, GPT and BERT
//! losses, step-0 gradients of every parameter, 5 AdamW steps, greedy decoding and per-image
//! NLL; cached decoding against the full forward for every variant (the local ring
//! included); a window covering the image equals dense attention.

use std::path::{Path, PathBuf};

use igpt::ImageGptConfig;
use igpt::config::{AttentionKind, PositionEmbedding};
use igpt::model::train_graph::{Objective, TrainActs};
use igpt::model::{ImageGpt, KvCache, KvPrecision, Logits, ModelKind, Workspace, cross_entropy, load_model};
use igpt::sample::{Prompt, Sampler, Sampling, generate};
use igpt::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use safetensors::{Dtype, SafeTensors};

const SOFTMAX_VARIANTS: [&str; 4] = ["pos2d", "rope2d", "local", "local-pos2d"];
/// Every variant whose inference igpt runs (linear attention trains in a later release).
const ALL_VARIANTS: [&str; 5] = ["pos2d", "rope2d", "local", "local-pos2d", "linear"];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/variants").join(name)
}

/// A fixture's reference tensors, tokens, scalars and tolerances.
struct Fixture {
    name: &'static str,
    refs: Vec<u8>,
    tokens: Vec<u8>,
    json: serde_json::Value,
    tol: serde_json::Value,
}

impl Fixture {
    fn load(name: &'static str) -> Fixture {
        let read = |f: &str| std::fs::read(dir(name).join(f)).unwrap_or_else(|e| panic!("{name}/{f}: {e}"));
        let json = |f: &str| serde_json::from_slice(&read(f)).unwrap();
        Fixture {
            name,
            refs: read("refs.safetensors"),
            tokens: read("tokens.safetensors"),
            json: json("refs.json"),
            tol: json("tolerances.json"),
        }
    }

    fn tensor(bytes: &[u8], key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let v = st.tensor(key).unwrap_or_else(|_| panic!("{key} missing"));
        (v.dtype(), v.shape().to_vec(), v.data().to_vec())
    }

    fn f32(&self, key: &str) -> Vec<f32> {
        let (d, _, b) = Self::tensor(&self.refs, key);
        assert_eq!(d, Dtype::F32, "{key}");
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn ints(bytes: &[u8], key: &str) -> Vec<u32> {
        let (d, _, b) = Self::tensor(bytes, key);
        match d {
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect(),
            Dtype::U8 => b.iter().map(|&x| x as u32).collect(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn input_ids(&self) -> Vec<u32> {
        Self::ints(&self.tokens, "input_ids")
    }
    fn image_tokens(&self) -> Vec<u32> {
        Self::ints(&self.tokens, "tokens")
    }

    fn atol(&self, key: &str) -> f32 {
        self.tol["atol"][key].as_f64().unwrap_or_else(|| panic!("{}: no atol for {key}", self.name)) as f32
    }

    fn check(&self, key: &str, ours: &[f32], want: &[f32], atol: f32) {
        assert_eq!(ours.len(), want.len(), "{}/{key}: length", self.name);
        let diff = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{:>12} {key:<24} max|diff| {diff:.3e}  atol {atol:.3e}", self.name);
        assert!(diff <= atol, "{}/{key}: max |diff| {diff:e} > atol {atol:e}", self.name);
    }

    fn model(&self) -> ImageGpt {
        load_model(&dir(self.name)).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

#[test]
fn forward_logits_hidden_states_and_nll() {
    for name in ALL_VARIANTS {
        let fx = Fixture::load(name);
        let model = fx.model();
        let (b, t, v) = (3, model.config.n_positions, model.config.n_colors());
        let mut ws = Workspace::new();
        model.forward(&mut ws, &fx.input_ids(), b, t, Logits::All, true).unwrap();
        fx.check("logits", &ws.logits, &fx.f32("logits"), fx.atol("logits"));
        let hidden: Vec<f32> = ws.hidden_states.concat();
        fx.check("hidden_states", &hidden, &fx.f32("hidden_states"), fx.atol("hidden_states"));
        let (_, per_row) = cross_entropy(&ws.logits, &fx.image_tokens(), v);
        for (r, want) in fx.json["nll_nats_per_token"].as_array().unwrap().iter().enumerate() {
            let got: f64 = per_row[r * t..(r + 1) * t].iter().sum::<f64>() / t as f64;
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() < fx.atol("nll_nats_per_token") as f64,
                "{name}: NLL of image {r}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn gpt_and_bert_losses_and_step0_gradients() {
    for name in ALL_VARIANTS {
        let fx = Fixture::load(name);
        let model = fx.model();
        let (b, t) = (3, model.config.n_positions);
        let tokens = fx.image_tokens();
        let mut acts = TrainActs::new();
        let mut grads = vec![0f32; model.params.len()];
        let loss = model.forward_backward(&mut acts, &mut grads, &tokens, b, t, Objective::Gpt, None).unwrap();
        let want = fx.json["loss_gpt"].as_f64().unwrap();
        assert!((loss - want).abs() < fx.atol("loss_gpt") as f64, "{name}: GPT loss {loss} vs {want}");
        for e in &model.layout.entries {
            let want = fx.f32(&format!("grad.{}", e.name));
            fx.check(
                &format!("grad {}", e.name.trim_start_matches("transformer.")),
                &grads[e.range.clone()],
                &want,
                fx.atol("grad"),
            );
        }
        let mask: Vec<bool> = Fixture::ints(&fx.refs, "bert_mask").iter().map(|&m| m == 1).collect();
        let loss = model.loss(&mut acts, &tokens, b, t, Objective::Bert, Some(&mask)).unwrap();
        let want = fx.json["loss_bert"].as_f64().unwrap();
        assert!((loss - want).abs() < fx.atol("loss_bert") as f64, "{name}: BERT loss {loss} vs {want}");
    }
}

/// A model trained with the BERT objective runs bidirectionally in every inference pass: its
/// masked forward gives the fixture's `logits_bert` (and its loss `loss_bert`), its plain
/// forward differs from the causal one, and cached decoding is refused.
#[test]
fn bert_models_infer_bidirectionally() {
    for name in ALL_VARIANTS {
        let fx = Fixture::load(name);
        let mut model = fx.model();
        model.config.objective = Objective::Bert;
        let (b, t, v) = (3, model.config.n_positions, model.config.n_colors());
        let tokens = fx.image_tokens();
        let mask: Vec<bool> = Fixture::ints(&fx.refs, "bert_mask").iter().map(|&m| m == 1).collect();
        let mut ws = Workspace::new();
        model.forward_masked(&mut ws, &tokens, &mask, b, t).unwrap();
        fx.check(&format!("{name} logits_bert"), &ws.logits, &fx.f32("logits_bert"), fx.atol("logits_bert"));
        let masked: Vec<f64> = igpt::model::cross_entropy(&ws.logits, &tokens, v)
            .1
            .into_iter()
            .zip(&mask)
            .filter(|x| *x.1)
            .map(|x| x.0)
            .collect();
        let loss = masked.iter().sum::<f64>() / masked.len() as f64;
        let want = fx.json["loss_bert"].as_f64().unwrap();
        assert!((loss - want).abs() < fx.atol("loss_bert") as f64, "{name}: masked NLL {loss} vs {want}");
        // the unmasked pass attends both ways: position 0 sees the pixels after it
        let gpt = fx.model();
        let mut causal = Workspace::new();
        gpt.forward(&mut causal, &tokens, b, t, Logits::All, false).unwrap();
        model.forward(&mut ws, &tokens, b, t, Logits::All, false).unwrap();
        assert!((0..v).any(|j| (ws.logits[j] - causal.logits[j]).abs() > 1e-3), "{name}: BERT row 0 is causal");
        let mut cache = KvCache::with_precision(&model.config, b, KvPrecision::F32);
        let err = model.forward_cached(&mut ws, &mut cache, &tokens[..b], 1, Logits::Last).unwrap_err();
        assert!(err.to_string().contains("BERT model"), "{err}");
        assert!(gpt.forward_masked(&mut ws, &tokens, &mask, b, t).is_err(), "a GPT model has no masked pass");
    }
}

/// 5 AdamW steps on the fixed batch (lr 1e-3, betas 0.9/0.95, eps 1e-8, no decay, clip 1.0).
#[test]
fn adamw_trajectory() {
    for name in ALL_VARIANTS {
        let fx = Fixture::load(name);
        let mut model = fx.model();
        let (b, t) = (3, model.config.n_positions);
        let tokens = fx.image_tokens();
        let mut opt = AdamW::new(AdamWConfig::default(), &model.layout);
        let (mut acts, mut grads) = (TrainActs::new(), vec![0f32; model.params.len()]);
        for (s, want) in fx.json["traj_losses"].as_array().unwrap().iter().enumerate() {
            grads.fill(0.0);
            let loss = model.forward_backward(&mut acts, &mut grads, &tokens, b, t, Objective::Gpt, None).unwrap();
            let want = want.as_f64().unwrap();
            assert!((loss - want).abs() < fx.atol("traj_losses") as f64, "{name} step {s}: {loss} vs {want}");
            clip_grad_norm(&mut grads, 1.0);
            opt.update(&mut model.params, &grads, 1e-3);
        }
    }
}

/// Greedy decoding from [SOS], uncached and with the KV cache (ring, blocks or S and z).
#[test]
fn greedy_decoding() {
    for name in ALL_VARIANTS {
        let fx = Fixture::load(name);
        let model = fx.model();
        let n = model.config.n_positions;
        let want = Fixture::ints(&fx.refs, "greedy");
        let uncached = igpt::generate::greedy_uncached(&model, &[model.config.sos_token()], 1, n).unwrap();
        assert_eq!(uncached[1..], want[..], "{name}: uncached greedy");
        let mut sampler = Sampler::new(0, Sampling { greedy: true, ..Default::default() });
        let cached = generate(&model, &Prompt::empty(1, n), &mut sampler, |_, _| {}).unwrap();
        assert_eq!(cached[0], want, "{name}: cached greedy");
    }
}

/// Largest |cached - uncached| logit over a prompt, a second multi-row chunk and single
/// steps to the end of the sequence.
fn cached_vs_uncached(model: &ImageGpt, prec: KvPrecision, chunks: &[usize]) -> f32 {
    let (b, t, v) = (2, model.config.n_positions, model.config.n_colors());
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7919 + 3) % v) as u32).collect();
    let mut full = Workspace::new();
    model.forward(&mut full, &ids, b, t, Logits::All, false).unwrap();
    let mut cache = KvCache::with_precision(&model.config, b, prec);
    let mut ws = Workspace::new();
    let mut pos = 0;
    let mut worst = 0f32;
    let mut sizes = chunks.to_vec();
    sizes.resize(chunks.len() + t - chunks.iter().sum::<usize>(), 1);
    for n in sizes {
        let chunk: Vec<u32> = (0..b).flat_map(|r| ids[r * t + pos..r * t + pos + n].to_vec()).collect();
        model.forward_cached(&mut ws, &mut cache, &chunk, n, Logits::Last).unwrap();
        pos += n;
        for r in 0..b {
            let want = &full.logits[(r * t + pos - 1) * v..(r * t + pos) * v];
            worst = ws.logits[r * v..(r + 1) * v].iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        }
    }
    worst
}

#[test]
fn cached_decoding_equals_the_full_forward_for_every_variant() {
    let linear = Fixture::load("linear").model();
    let worst = cached_vs_uncached(&linear, KvPrecision::F32, &[5, 9]);
    assert!(worst <= 1e-5, "linear: recurrent logits differ by {worst}");
    for name in SOFTMAX_VARIANTS {
        let model = Fixture::load(name).model();
        for (prec, tol) in [(KvPrecision::F32, 1e-5), (KvPrecision::F16, 5e-3), (KvPrecision::Int8, 6e-2)] {
            let worst = cached_vs_uncached(&model, prec, &[5, 9]);
            assert!(worst <= tol, "{name} {prec:?}: cached logits differ by {worst}");
        }
    }
}

/// The recurrent decoding form of `linear` gives the chunked parallel form's logits within
/// 1e-5 at every position of a 20 x 20 image (400 slots: seven chunks of the parallel pass,
/// the last one ragged), with each position option, one position at a time and after a prompt.
#[test]
fn linear_recurrent_form_matches_the_parallel_form_over_400_slots() {
    for pos in [PositionEmbedding::Learned1d, PositionEmbedding::Learned2d, PositionEmbedding::Rope2d] {
        let mut cfg = ImageGptConfig::with_shape(2, 32, 4).with_image(20, 15);
        (cfg.attention, cfg.position_embedding) = (AttentionKind::Linear, pos);
        let mut model = ImageGpt::init_random(cfg, ModelKind::CausalLm, 11).unwrap();
        model.params.iter_mut().for_each(|w| *w *= 4.0); // larger q and k than the 0.02 init
        for chunks in [&[1][..], &[130, 7]] {
            let worst = cached_vs_uncached(&model, KvPrecision::F32, chunks);
            assert!(worst <= 1e-5, "{pos:?} chunks {chunks:?}: recurrent logits differ by {worst}");
        }
    }
}

/// A random local model at 16 x 16 whose ring (the last 2 rows, rounded to one 64-key block)
/// wraps four times: prompts longer than the ring, a later multi-row chunk, single steps.
#[test]
fn local_ring_wraps_and_matches_the_full_forward() {
    for pos in [PositionEmbedding::Learned1d, PositionEmbedding::Learned2d, PositionEmbedding::Rope2d] {
        let mut cfg = ImageGptConfig::with_shape(2, 32, 4).with_image(16, 16);
        (cfg.attention, cfg.local_rows, cfg.local_cols, cfg.position_embedding) = (AttentionKind::Local2d, 1, 3, pos);
        let mut model = ImageGpt::init_random(cfg, ModelKind::CausalLm, 7).unwrap();
        model.params.iter_mut().for_each(|w| *w *= 8.0); // sharper attention than the 0.02 init
        for chunks in [&[100, 30][..], &[1, 40], &[64, 64]] {
            let worst = cached_vs_uncached(&model, KvPrecision::F32, chunks);
            assert!(worst <= 1e-4, "{pos:?} chunks {chunks:?}: cached logits differ by {worst}");
        }
    }
}

/// The ring's memory follows the window, not the image: a 64-wide local model holds
/// (local_rows + 1) x 64 positions per layer at 64 x 64 and at 64 x 128 alike.
#[test]
fn local_cache_memory_does_not_grow_with_the_image() {
    let bytes = |h: usize| {
        let mut cfg = ImageGptConfig::with_shape(2, 64, 4);
        (cfg.n_positions, cfg.image_width, cfg.vocab_size) = (64 * h, Some(64), 17);
        (cfg.attention, cfg.local_rows, cfg.local_cols) = (AttentionKind::Local2d, 8, 8);
        KvCache::new(&cfg, 3).bytes()
    };
    // 3 sequences x 2 layers x (K and V) x 4 heads x 9 rows of 64 x 16 dims x 4 bytes
    assert_eq!(bytes(64), 3 * 2 * 2 * 4 * 9 * 64 * 16 * 4);
    assert_eq!(bytes(64), bytes(128));
    let mut dense = ImageGptConfig::with_shape(2, 64, 4).with_image(64, 16);
    dense.image_width = Some(64);
    assert_eq!(KvCache::new(&dense, 3).bytes(), 3 * 2 * 2 * 4 * 4096 * 16 * 4);
}

/// local_2d with a window covering the image is dense attention (GPT and BERT).
#[test]
fn a_window_covering_the_image_is_dense() {
    let fx = Fixture::load("local");
    let mut local = fx.model();
    (local.config.local_rows, local.config.local_cols) = (7, 7);
    let mut dense = local.clone();
    dense.config.attention = AttentionKind::Dense;
    let (b, t) = (3, 64);
    let (mut a, mut d) = (Workspace::new(), Workspace::new());
    local.forward(&mut a, &fx.input_ids(), b, t, Logits::All, false).unwrap();
    dense.forward(&mut d, &fx.input_ids(), b, t, Logits::All, false).unwrap();
    fx.check("covering window vs dense", &a.logits, &d.logits, 1e-6);
    let mask: Vec<bool> = Fixture::ints(&fx.refs, "bert_mask").iter().map(|&m| m == 1).collect();
    let mut acts = TrainActs::new();
    let la = local.loss(&mut acts, &fx.image_tokens(), b, t, Objective::Bert, Some(&mask)).unwrap();
    let ld = dense.loss(&mut acts, &fx.image_tokens(), b, t, Objective::Bert, Some(&mask)).unwrap();
    assert!((la - ld).abs() < 1e-6, "BERT: {la} vs {ld}");
    // and the fixture's own window is not dense
    let narrow = fx.model();
    narrow.forward(&mut a, &fx.input_ids(), b, t, Logits::All, false).unwrap();
    assert!(a.logits.iter().zip(&d.logits).any(|(x, y)| (x - y).abs() > 1e-2));
}

/// Bad variant configurations are refused naming the field and the fix; a reduced-precision
/// cache is refused for linear attention.
#[test]
fn bad_variant_configs_are_refused() {
    let base = || ImageGptConfig::with_shape(2, 32, 4).with_image(8, 16);
    let err = |c: ImageGptConfig| ImageGpt::zeros(c, ModelKind::CausalLm).unwrap_err().to_string();
    let mut c = base();
    (c.position_embedding, c.n_head) = (PositionEmbedding::Rope2d, 16); // head size 2
    assert!(err(c).contains("rope_2d needs a head size divisible by 4"));
    let mut c = base();
    c.image_width = Some(7);
    assert!(err(c).contains("image_width (7) must divide n_positions (64)"));
    let mut c = base();
    (c.attention, c.local_rows) = (AttentionKind::Local2d, -1);
    assert!(err(c).contains("local_rows must be >= 0"));
    let mut c = base();
    c.rope_theta = 0.0;
    assert!(err(c).contains("rope_theta must be a finite number > 0"));
    let mut c = base();
    (c.attention, c.n_positions) = (AttentionKind::Local2d, 60);
    assert!(err(c).contains("not a square: set image_width"));
    // linear attention: --kv-cache f16/int8 do not apply to its (S, z) state
    let model = Fixture::load("linear").model();
    let mut sampler = Sampler::new(0, Sampling { kv_cache: KvPrecision::F16, ..Default::default() });
    let err = generate(&model, &Prompt::empty(1, 64), &mut sampler, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("does not apply to linear attention"), "{err}");
}

/// A variant checkpoint round-trips, says `"model_type": "igpt"` and carries its PyTorch
/// modeling files with an `auto_map` (tools/check_hf_load.py runs them against the fixture's
/// logits in the reference venv); a plain one stays transformers' own.
#[test]
fn variant_checkpoints_carry_their_modeling_file() {
    let tmp = tempfile::tempdir().unwrap();
    for name in SOFTMAX_VARIANTS {
        let model = Fixture::load(name).model();
        let out = tmp.path().join(name);
        igpt::model::save_model(&model, &out).unwrap();
        let back = load_model(&out).unwrap();
        assert_eq!(back.params, model.params, "{name}");
        assert_eq!(back.config.attention, model.config.attention);
        assert_eq!(back.config.position_embedding, model.config.position_embedding);
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["model_type"], "igpt");
        assert_eq!(cfg["auto_map"]["AutoModelForCausalLM"], "modeling_igpt.IGPTForCausalImageModeling");
        let py = std::fs::read_to_string(out.join("modeling_igpt.py")).unwrap();
        assert!(py.contains("class IGPTForCausalImageModeling") && out.join("configuration_igpt.py").exists());
    }
    let plain = load_model(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-imagegpt/tiny")).unwrap();
    let out = tmp.path().join("plain");
    igpt::model::save_model(&plain, &out).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "imagegpt");
    assert!(cfg.get("auto_map").is_none() && cfg.get("attention").is_none() && cfg.get("local_rows").is_none());
    assert!(!out.join("modeling_igpt.py").exists());
}
