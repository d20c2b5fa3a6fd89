//! `igpt train` end to end on a small prepared set: exact resume after an interruption,
//! BERT and augmentation paths, refused mismatches, a NaN stop, checkpoints that load.

mod common;

use std::path::{Path, PathBuf};

use igpt::data::prepare::{PrepareConfig, Quiet, prepare};
use igpt::data::spec::DataSpec;
use igpt::model::train_graph::Objective;
use igpt::model::{ModelKind, load_model};
use igpt::train::{NoObserver, TrainConfig, read_metrics, run};

/// 40 small colourful images in two classes, prepared at 8x8 with 16 colours.
fn prepared(tmp: &Path) -> PathBuf {
    let imgs = tmp.join("imgs");
    common::two_class_images(&imgs);
    let out = tmp.join("data");
    let src = DataSpec::Folder(imgs).load(&|| {}).unwrap();
    prepare(src, &out, &PrepareConfig { size: 8, colors: 16, val_fraction: 0.2, ..Default::default() }, &Quiet)
        .unwrap();
    out
}

fn cfg(data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        preset: "tiny".into(),
        batch: 4,
        steps: Some(8),
        lr: 3e-3,
        warmup: 2,
        eval_every: 3,
        eval_batches: 2,
        log_every: 1,
        seed: 5,
        keep: 2,
        ..Default::default()
    }
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    for (objective, hflip, drop) in
        [(Objective::Gpt, true, None), (Objective::Bert, false, None), (Objective::Gpt, false, Some(0.2))]
    {
        let a_dir = tmp.path().join(format!("a-{objective:?}-{drop:?}"));
        let b_dir = tmp.path().join(format!("b-{objective:?}-{drop:?}"));
        let (embd_pdrop, attn_pdrop, resid_pdrop) = (drop, drop, drop);
        let base = TrainConfig { objective, hflip, embd_pdrop, attn_pdrop, resid_pdrop, ..cfg(&data, &a_dir) };
        let full = run(&base, false, &mut NoObserver).unwrap();
        assert_eq!(full.steps, 8);
        // Interrupted after step 5 (last checkpoint at step 3), then resumed.
        let b = TrainConfig { out: b_dir.clone(), stop_after: Some(5), ..base.clone() };
        assert_eq!(run(&b, false, &mut NoObserver).unwrap().steps, 5);
        let resumed = run(&TrainConfig { stop_after: None, ..b.clone() }, true, &mut NoObserver).unwrap();
        assert_eq!(resumed.steps, 8);
        let (la, va) = read_metrics(&a_dir.join("metrics.jsonl"));
        let (lb, vb) = read_metrics(&b_dir.join("metrics.jsonl"));
        assert_eq!(la.len(), 8);
        assert_eq!(la, lb, "{objective:?}: per-step losses differ after resume");
        assert_eq!(va, vb);
        // Losses are real numbers that go down on this tiny set.
        assert!(la.iter().all(|(_, l)| l.is_finite()));
        assert!(la[7].1 < la[0].1, "{objective:?}: {la:?}");
        // Keep the last 2 step checkpoints plus best; they load as HF models.
        let ckpts: Vec<String> = std::fs::read_dir(a_dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(ckpts.len(), 2, "{ckpts:?}");
        let best = load_model(&a_dir.join("best")).unwrap();
        assert_eq!(best.kind, ModelKind::CausalLm);
        // the saved model records its objective; a BERT one carries the model card
        assert_eq!(best.config.objective, objective);
        assert_eq!(best.config.attn_pdrop, drop.unwrap_or(0.0), "the dropout trained with is recorded");
        assert_eq!(a_dir.join("best/README.md").exists(), objective == Objective::Bert);
        assert!(a_dir.join("loss.png").exists() && a_dir.join("train.json").exists());
        // A second run into the same folder without --resume is refused.
        assert!(run(&base, false, &mut NoObserver).unwrap_err().to_string().contains("--resume"));
    }
}

/// Two micro-batches of 4 take the same 8 images in the same order as one batch of 8, and
/// their mean gradient is the batch's: the runs' losses agree to rounding (the sums run in
/// another order, so not bit for bit), and differ once the accumulation is dropped.
#[test]
fn gradient_accumulation_equals_the_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let run_with = |name: &str, batch: usize, grad_accum: usize| {
        let c = TrainConfig { batch, grad_accum, eval_every: 100, ..cfg(&data, &tmp.path().join(name)) };
        run(&c, false, &mut NoObserver).unwrap();
        read_metrics(&tmp.path().join(name).join("metrics.jsonl")).0
    };
    let (one, accumulated, half) = (run_with("b8", 8, 1), run_with("b4x2", 4, 2), run_with("b4", 4, 1));
    assert_eq!(one.len(), 8);
    for ((s, a), (_, b)) in one.iter().zip(&accumulated) {
        assert!((a - b).abs() < 1e-6 * a.abs(), "step {s}: batch 8 {a} vs 4 x 2 {b}");
    }
    let gap = one.iter().zip(&half).map(|((_, a), (_, b))| (a - b).abs()).fold(0.0, f64::max);
    assert!(gap > 1e-2, "a batch of 4 alone should train differently: {gap}");
}

#[test]
fn mismatches_and_nan_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    // --init with a model whose palette (16 colours) matches but positions do: hf tiny is 8x8/16 colours -> fine;
    // a model with 512 colours does not match.
    let small = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-imagegpt/small");
    let c = TrainConfig { init: Some(small), ..cfg(&data, &tmp.path().join("r1")) };
    let err = run(&c, false, &mut NoObserver).unwrap_err().to_string();
    assert!(err.contains("does not match the data"), "{err}");
    // Continuing from the HF tiny fixture (same size and palette size) works.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-imagegpt/tiny");
    let c = TrainConfig { init: Some(tiny), steps: Some(2), ..cfg(&data, &tmp.path().join("r2")) };
    assert_eq!(run(&c, false, &mut NoObserver).unwrap().steps, 2);
    // An absurd learning rate blows the loss up: the run stops naming the step.
    let c = TrainConfig { lr: 1e30, warmup: 0, clip: 0.0, eval_every: 1, ..cfg(&data, &tmp.path().join("r3")) };
    let err = run(&c, false, &mut NoObserver).unwrap_err().to_string();
    assert!(err.contains("at step") && err.contains("last good checkpoint"), "{err}");
    // Missing data folder
    let c = cfg(&tmp.path().join("nope"), &tmp.path().join("r4"));
    assert!(run(&c, false, &mut NoObserver).unwrap_err().to_string().contains("igpt prepare"));
}

/// Dropout (all three sites) in a training pass: the gradient is the derivative of the loss
/// with the same masks (central differences along random directions), the masks differ
/// between keys, evaluation never drops, and a probability outside [0, 1) or attention
/// dropout on linear attention is refused naming the field.
#[test]
fn dropout_gradients_are_the_derivative_of_the_dropped_loss() {
    use igpt::backend::dropout::DropoutSites;
    use igpt::config::ImageGptConfig;
    use igpt::model::ImageGpt;
    use igpt::model::train_graph::TrainActs;
    let mut mcfg = ImageGptConfig::with_shape(2, 32, 4).with_image(6, 12);
    (mcfg.embd_pdrop, mcfg.attn_pdrop, mcfg.resid_pdrop) = (0.2, 0.3, 0.25);
    let mut model = ImageGpt::init_random(mcfg, ModelKind::CausalLm, 3).unwrap();
    let (b, t) = (2, 36);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 12) as u32).collect();
    let mut acts = TrainActs::new();
    let sites = DropoutSites::new(11, 0.2, 0.3, 0.25);
    let loss_with = |model: &ImageGpt, acts: &mut TrainActs, sites: DropoutSites| {
        acts.set_dropout(sites);
        let mut g = vec![0f32; model.params.len()];
        model.forward_backward(acts, &mut g, &tokens, b, t, Objective::Gpt, None).unwrap()
    };
    acts.set_dropout(sites);
    let mut grads = vec![0f32; model.params.len()];
    let l0 = model.forward_backward(&mut acts, &mut grads, &tokens, b, t, Objective::Gpt, None).unwrap();
    assert_eq!(loss_with(&model, &mut acts, sites), l0, "the same key gives the same loss");
    assert_ne!(loss_with(&model, &mut acts, DropoutSites::new(12, 0.2, 0.3, 0.25)), l0);
    let plain = loss_with(&model, &mut acts, DropoutSites::default());
    assert_ne!(plain, l0, "dropout changes the training loss");
    acts.set_dropout(sites);
    assert_eq!(model.loss(&mut acts, &tokens, b, t, Objective::Gpt, None).unwrap(), plain, "evaluation never drops");
    let mut rng = igpt::rng::Rng::new(5);
    for _ in 0..4 {
        let u: Vec<f32> = (0..model.params.len()).map(|_| rng.normal() as f32).collect();
        let norm = u.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let h = 1e-2 / norm;
        let at = |s: f64, model: &mut ImageGpt, acts: &mut TrainActs| {
            let p0 = model.params.clone();
            model.params.iter_mut().zip(&u).for_each(|(p, d)| *p += (s * h) as f32 * d);
            let l = loss_with(model, acts, sites);
            model.params = p0;
            l
        };
        let numeric = (at(1.0, &mut model, &mut acts) - at(-1.0, &mut model, &mut acts)) / (2.0 * h);
        let analytic: f64 = grads.iter().zip(&u).map(|(g, d)| *g as f64 * *d as f64).sum();
        assert!((numeric - analytic).abs() < 2e-2 * analytic.abs().max(1e-2), "{numeric} vs {analytic}");
    }
    // refused values name the field
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let bad = TrainConfig { attn_pdrop: Some(1.5), ..cfg(&data, &tmp.path().join("r1")) };
    assert!(run(&bad, false, &mut NoObserver).unwrap_err().to_string().contains("--attn-pdrop"));
    let lin = TrainConfig {
        attention: igpt::config::AttentionKind::Linear,
        attn_pdrop: Some(0.1),
        ..cfg(&data, &tmp.path().join("r2"))
    };
    assert!(
        run(&lin, false, &mut NoObserver)
            .unwrap_err()
            .to_string()
            .contains("linear attention has no attention probabilities")
    );
}
