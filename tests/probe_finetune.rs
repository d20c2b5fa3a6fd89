//! The classification path: gradient check of the fine-tuning loss, probe plumbing on the
//! tiny fixture, a fine-tuning smoke test, and the classifier loading back.

mod common;

use std::path::Path;

use igpt::data::tokens;
use igpt::finetune::{FinetuneConfig, finetune};
use igpt::logreg::Stop;
use igpt::model::train_graph::TrainActs;
use igpt::model::{ModelKind, load_model, load_model_as};
use igpt::probe::{NoProgress, ProbeOptions, run_probe};
use igpt::rng::Rng;

/// A prepared folder built from random 8x8 images in 2 classes whose colour statistics
/// differ (class 1 uses the upper half of the 16-colour palette more often).
fn tiny_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(common::fixture("tiny").join("preprocessor_config.json"), dir.join("preprocessor_config.json"))
        .unwrap();
    let mut rng = Rng::new(3);
    for (name, n) in [("train", 48), ("val", 16), ("test", 16)] {
        let labels: Vec<u16> = (0..n).map(|i| (i % 2) as u16).collect();
        let toks: Vec<u16> =
            labels
                .iter()
                .flat_map(|&l| {
                    (0..64)
                        .map(|_| {
                            if rng.uniform() < 0.7 {
                                (rng.below(8) + 8 * l as u64) as u16
                            } else {
                                rng.below(16) as u16
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
        tokens::write(&dir.join(format!("{name}.tokens")), &toks, Some(&labels), (8, 8), 16).unwrap();
    }
    std::fs::write(dir.join("labels.txt"), "low\nhigh\n").unwrap();
}

/// The fine-tuning gradients (generative + classification loss) against central differences,
/// for a GPT model (causal, next-pixel loss) and the same weights as a BERT model
/// (bidirectional, masked-pixel loss).
#[test]
fn classification_gradients_match_finite_differences() {
    for bert in [false, true] {
        check_classification_gradients(bert);
    }
}

fn check_classification_gradients(bert: bool) {
    let mut model = load_model(&common::fixture("tiny")).unwrap();
    if bert {
        model.config.objective = igpt::config::Objective::Bert;
    }
    let (b, t, c, k) = (2, 64, 32, 3);
    let mut rng = Rng::new(9);
    let toks: Vec<u32> = (0..b * t).map(|_| rng.below(16) as u32).collect();
    let labels = vec![2u16, 0];
    let score: Vec<f32> = (0..k * c).map(|_| 0.3 * rng.normal() as f32).collect();
    let mask: Vec<bool> = (0..b * t).map(|i| i % 7 == 3).collect();
    let masked = bert.then_some(&mask[..]);
    let mut acts = TrainActs::new();
    let loss = |m: &igpt::model::ImageGpt, s: &[f32], acts: &mut TrainActs| {
        let mut g = vec![0f32; m.params.len()];
        let mut ds = vec![0f32; s.len()];
        let (gl, cl, _) =
            m.forward_backward_classify(acts, &mut g, s, &mut ds, &toks, &labels, b, t, (0.5, masked)).unwrap();
        (0.5 * gl + cl, g, ds)
    };
    let (_, grads, dscore) = loss(&model, &score, &mut acts);
    let h = 1e-2f32;
    // a few transformer parameters across the graph, and score entries
    for name in [
        "transformer.ln_f.weight",
        "transformer.h.1.mlp.c_proj.bias",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.wpe.weight",
    ] {
        let e = model.layout.find(name).unwrap();
        for off in [0, e.range.len() / 2] {
            let i = e.range.start + off;
            let mut m = model.clone();
            m.params[i] += h;
            let up = loss(&m, &score, &mut acts).0;
            m.params[i] -= 2.0 * h;
            let down = loss(&m, &score, &mut acts).0;
            let num = (up - down) / (2.0 * h as f64);
            assert!(
                (num - grads[i] as f64).abs() < 2e-3 + 2e-2 * num.abs(),
                "bert {bert} {name}[{off}]: numeric {num} vs analytic {}",
                grads[i]
            );
        }
    }
    for i in [0, 17, k * c - 1] {
        let mut s = score.clone();
        s[i] += h;
        let up = loss(&model, &s, &mut acts).0;
        s[i] -= 2.0 * h;
        let down = loss(&model, &s, &mut acts).0;
        let num = (up - down) / (2.0 * h as f64);
        assert!(
            (num - dscore[i] as f64).abs() < 2e-3 + 2e-2 * num.abs(),
            "bert {bert} score[{i}]: numeric {num} vs analytic {}",
            dscore[i]
        );
    }
}

#[test]
fn probe_reports_every_layer_and_the_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_data(&tmp.path().join("data"));
    let model = load_model(&common::fixture("tiny")).unwrap();
    let feats = tmp.path().join("features");
    let opts = ProbeOptions {
        stop: Stop { max_iter: 100, ..Stop::default() },
        concat: 3,
        save_features: Some(feats.clone()),
        ..Default::default()
    };
    let r = run_probe(&model, &tmp.path().join("data"), &opts, &tmp.path().join("report"), &mut NoProgress).unwrap();
    assert_eq!(r.layers.len(), 3); // embeddings + 2 blocks
    assert_eq!(r.counts, (48, 16, 16));
    assert_eq!(r.classes, 2);
    // The classes differ in colour statistics: the raw-pixel baseline and the features separate them.
    assert!(r.baseline.test_acc.unwrap() > 0.8, "{:?}", r.baseline);
    assert!(r.best_val_acc > 0.8, "{:?}", r.layers);
    // --concat 3: the three layers side by side (3 x 32 features)
    let cc = r.concat.as_ref().expect("concat asked for");
    assert_eq!(cc.layers, vec![0, 1, 2]);
    assert!(cc.result.val_acc > 0.8 && cc.result.layer.is_none(), "{cc:?}");
    for f in ["probe.json", "probe.png", "probe.svg"] {
        assert!(tmp.path().join("report").join(f).exists());
    }
    // the regularisation path: strong to weak, the chosen strength on it, edges flagged
    for p in r.layers.iter().chain([&r.baseline, &cc.result]) {
        assert!(p.path.len() >= 9 && p.path.windows(2).all(|w| w[0].lambda > w[1].lambda), "{p:?}");
        let best = p.path.iter().position(|q| q.lambda == p.lambda).expect("the chosen lambda is on the path");
        assert_eq!(p.path[best].val_acc, p.val_acc);
        assert_eq!(p.lambda_on_edge, best == 0 || best == p.path.len() - 1);
        assert!(p.path.iter().all(|q| q.val_acc <= p.val_acc), "the best val accuracy is chosen: {p:?}");
    }
    // a warning for each edge and each unfinished chosen fit
    let flags = |p: &igpt::probe::ProbeResult| usize::from(p.lambda_on_edge) + usize::from(!p.converged);
    let expected: usize = r.layers.iter().chain([&r.baseline, &cc.result]).map(flags).sum();
    assert_eq!(r.warnings.len(), expected, "{:?}", r.warnings);
    // --save-features: every probed set, in the format sklearn_probe.py reads
    let names = ["layer_0", "layer_1", "layer_2", "pixels", "concat"];
    for (name, d) in names.iter().zip([32, 32, 32, 64 * 3, 96]) {
        let bytes = std::fs::read(feats.join(format!("{name}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (split, n) in [("train", 48), ("val", 16), ("test", 16)] {
            let x = st.tensor(split).unwrap();
            assert_eq!((x.dtype(), x.shape()), (safetensors::Dtype::F32, &[n, d][..]), "{name} {split}");
            let y = st.tensor(&format!("{split}_labels")).unwrap();
            assert_eq!((y.dtype(), y.shape()), (safetensors::Dtype::I64, &[n][..]));
            let labels: Vec<i64> =
                y.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
            assert!(labels.iter().all(|&l| l == 0 || l == 1) && labels.contains(&1), "{name} {split}: {labels:?}");
        }
    }
    let err = run_probe(
        &model,
        &tmp.path().join("data"),
        &ProbeOptions { layers: Some(vec![7]), stop: Stop { max_iter: 10, ..Stop::default() }, ..Default::default() },
        &tmp.path().join("r2"),
        &mut NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("layer 7 does not exist"), "{err}");
}

#[test]
fn finetune_smoke_learns_and_saves_an_hf_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    let cfg = FinetuneConfig {
        data: data.clone(),
        model: common::fixture("tiny"),
        out: tmp.path().join("ft"),
        steps: 60,
        batch: 8,
        lr: 3e-3,
        warmup: 5,
        eval_every: 20,
        patience: 10,
        ..Default::default()
    };
    let s = finetune(&cfg, false, &mut igpt::train::NoObserver).unwrap();
    assert!(s.best_val_acc >= 0.75, "{s:?}");
    let cls = load_model_as(&s.best_dir, None).unwrap();
    assert_eq!(cls.kind, ModelKind::Classifier);
    assert_eq!(cls.config.id2label.as_ref().unwrap()["1"], "high");
    let ft = tmp.path().join("ft");
    for f in ["finetune.json", "metrics.jsonl", "loss.png", "accuracy.png", "last/model.safetensors"] {
        assert!(ft.join(f).exists(), "{f}");
    }
    assert_eq!(load_model_as(&ft.join("last"), None).unwrap().kind, ModelKind::Classifier);
    // the pretraining loop's rotation: 2 step checkpoints (causal model + head + optimizer)
    let ckpts = igpt::train::checkpoint::list(&ft);
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![40, 60]);
    assert!(ckpts[1].1.join("head.safetensors").exists());
    // a second fine-tune into the same folder needs --resume
    let err = finetune(&cfg, false, &mut igpt::train::NoObserver).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
}

/// Fine-tuning resumes exactly: interrupted after step 25 (last checkpoint at 20) and
/// resumed, every logged loss, accuracy and the final weights equal the uninterrupted run's
/// (GPT with flips, and a BERT model whose generative loss uses seeded masks).
#[test]
fn an_interrupted_finetune_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    let metrics = |d: &std::path::Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    let lines = |text: String| -> Vec<String> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for k in ["tok_s", "elapsed_s"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v.to_string()
            })
            .collect()
    };
    let cfg = |out: &str| FinetuneConfig {
        data: data.clone(),
        model: common::fixture("tiny"),
        out: tmp.path().join(out),
        steps: 40,
        batch: 4,
        lr: 2e-3,
        warmup: 4,
        eval_every: 10,
        patience: 10,
        hflip: true,
        ..Default::default()
    };
    let a = finetune(&cfg("a"), false, &mut igpt::train::NoObserver).unwrap();
    let b_cfg = FinetuneConfig { stop_after: Some(25), ..cfg("b") };
    assert_eq!(finetune(&b_cfg, false, &mut igpt::train::NoObserver).unwrap().steps, 25);
    let b = finetune(&FinetuneConfig { stop_after: None, ..b_cfg }, true, &mut igpt::train::NoObserver).unwrap();
    assert_eq!((a.steps, b.steps), (40, 40));
    let (la, lb) = (lines(metrics(&tmp.path().join("a"))), lines(metrics(&tmp.path().join("b"))));
    assert_eq!(la.len(), 44, "40 train lines and 4 evaluations");
    assert_eq!(la, lb);
    assert_eq!(a.best_val_acc, b.best_val_acc);
    let w = |d: &str| std::fs::read(tmp.path().join(d).join("checkpoints/step-40/head.safetensors")).unwrap();
    assert_eq!(w("a"), w("b"));
}
