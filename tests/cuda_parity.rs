//! The CUDA engine against the CPU engine (issue #16), on a machine with an NVIDIA GPU:
//! every kernel on the same random inputs, then whole models (the HF fixtures' and the
//! architecture variants': logits, hidden states, the training step's loss and gradients
//! with and without dropout, the fine-tuning step, greedy decoding). The CPU engine is the
//! reference (its own tests pin it to transformers and PyTorch). Each check prints its
//! measured difference; the tolerances are f32 rounding's (sums in another order), stated
//! at each.
//!
//! Skips, saying why, where no GPU is present.
#![cfg(feature = "cuda")]

use igpt::backend::attention::{AttnDims, Form, KvPrecision, Mask, Seq};
use igpt::backend::cuda::Cuda;
use igpt::backend::dropout::{Dropout, DropoutSites};
use igpt::backend::embed::Axis;
use igpt::backend::optim::AdamWStep;
use igpt::backend::rope::Rope;
use igpt::backend::{Activation, Backend, Cpu, WeightLayout};
use igpt::model::train_graph::{Objective, TrainActs};
use igpt::model::{ImageGpt, KvCache, Logits, Workspace, load_model};
use igpt::rng::Rng;

/// The GPU engine, or None (with the reason printed) where there is no GPU.
fn gpu() -> Option<Cuda> {
    if let Err(e) = igpt::backend::device::gpu_info(0) {
        eprintln!("skipped: no GPU here ({e})");
        return None;
    }
    Some(Cuda::new(0).unwrap_or_else(|e| panic!("a GPU is present but the CUDA engine does not start: {e}")))
}

/// The fixtures: under IGPT_ROOT where set (a test binary carried to a GPU machine, where
/// the build's checkout path does not exist), else this checkout's.
fn fixtures() -> std::path::PathBuf {
    let root = std::env::var("IGPT_ROOT").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&root).join("tests/fixtures")
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

/// Asserts max |gpu - cpu| <= atol + rtol max |cpu| and prints the measured difference.
fn close(what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(0f32, |m, x| m.max(x.abs()));
    let (mut worst, mut at) = (0f32, 0);
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            (worst, at) = (if d.is_nan() { f32::INFINITY } else { d }, i);
        }
    }
    eprintln!("{what:<44} max |gpu - cpu| {worst:.3e} (of values up to {scale:.3e})");
    assert!(worst <= atol + rtol * scale, "{what}: element {at}: gpu {} vs cpu {}", gpu[at], cpu[at]);
}

/// Named outputs of every kernel on fixed inputs, computed by engine `be`.
fn kernel_outputs<B: Backend>(be: &B) -> Vec<(String, Vec<f32>)> {
    let up = |h: &[f32]| be.upload(h).unwrap();
    let get = |b: &B::Buf| be.download(b, 0..be.size(b)).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = Vec::new();
    let (n, c) = (37, 96);
    let (x, w, dy) = (up(&rand(n * c, 1)), up(&rand(c, 2)), up(&rand(n * c, 3)));
    // norms
    let (mut o, mut r) = (be.zeros(n * c).unwrap(), be.zeros(n).unwrap());
    be.rmsnorm_forward(be.whole_mut(&mut o), be.whole_mut(&mut r), be.whole(&x), be.whole(&w), 1e-5);
    let (mut dx, mut dw) = (up(&rand(n * c, 4)), up(&rand(c, 5)));
    be.rmsnorm_backward(
        be.whole_mut(&mut dx),
        be.whole_mut(&mut dw),
        be.whole(&dy),
        be.whole(&x),
        be.whole(&r),
        be.whole(&w),
    );
    out.extend([("rmsnorm_forward".into(), get(&o)), ("rmsnorm rstd".into(), get(&r))]);
    out.extend([("rmsnorm_backward dx".into(), get(&dx)), ("rmsnorm_backward dw".into(), get(&dw))]);
    // activations
    for act in [Activation::QuickGelu, Activation::GeluTanh, Activation::Relu] {
        let mut a = be.zeros(n * c).unwrap();
        be.act_forward(act, be.whole_mut(&mut a), be.whole(&x));
        let mut d = be.zeros(n * c).unwrap();
        be.act_backward(act, be.whole_mut(&mut d), be.whole(&dy), be.whole(&x));
        let mut inplace = up(&rand(n * c, 1));
        be.act_inplace(act, be.whole_mut(&mut inplace));
        out.extend([(format!("act_forward {act:?}"), get(&a)), (format!("act_backward {act:?}"), get(&d))]);
        out.push((format!("act_inplace {act:?}"), get(&inplace)));
    }
    // matrix products: (m, k, n) = (37, 96, 80), both weight layouts, bias, accumulate
    let (m, k, nn) = (n, c, 80);
    let wm = up(&rand(k * nn, 6));
    let bias = up(&rand(nn, 7));
    for (layout, acc) in [(WeightLayout::InOut, false), (WeightLayout::OutIn, true)] {
        let mut y = up(&rand(m * nn, 8));
        be.matmul_forward(
            be.whole_mut(&mut y),
            be.whole(&x),
            be.whole(&wm),
            Some(be.whole(&bias)),
            (m, k, nn),
            layout,
            acc,
        );
        out.push((format!("matmul_forward {layout:?} accumulate {acc}"), get(&y)));
    }
    let dyn_ = up(&rand(m * nn, 9));
    let mut dwm = up(&rand(k * nn, 10));
    be.matmul_backward_weight(be.whole_mut(&mut dwm), be.whole(&x), be.whole(&dyn_), (m, k, nn));
    let mut db = up(&rand(nn, 11));
    be.bias_backward(be.whole_mut(&mut db), be.whole(&dyn_), nn);
    out.extend([("matmul_backward_weight".into(), get(&dwm)), ("bias_backward".into(), get(&db))]);
    // elementwise, dropout, pooling
    let mut s = up(&rand(n * c, 12));
    be.add_inplace(be.whole_mut(&mut s), be.whole(&x));
    be.dropout(Dropout::new(0.3, 99).unwrap(), be.whole_mut(&mut s));
    out.push(("add_inplace + dropout".into(), get(&s)));
    let (pb, pt) = (1, n);
    out.push(("mean_over_positions".into(), be.mean_over_positions(be.whole(&x), pb, pt, c)));
    let mut dpool = up(&rand(n * c, 13));
    be.mean_over_positions_backward(be.whole_mut(&mut dpool), be.view(&w, 0..c), pb, pt, c);
    out.push(("mean_over_positions_backward".into(), get(&dpool)));
    // the fused cross-entropy: its loss and the gradient it leaves
    let v = 67;
    let mut logits = up(&rand(n * v, 14));
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let weights: Vec<f32> = (0..n).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 / n as f32 }).collect();
    let loss = be.cross_entropy_fused(be.whole_mut(&mut logits), &targets, &weights, v);
    out.extend([
        ("cross_entropy_fused loss".into(), vec![loss as f32]),
        ("cross_entropy_fused grad".into(), get(&logits)),
    ]);
    // embeddings with 2D tables (8 x 4 slots of width 4... t = 12 positions from pos0 = 3)
    let (t, pos0, width) = (12, 3, 4);
    let tokens: Vec<u32> = (0..2 * t as u32).map(|i| (i * 5) % 9).collect();
    let scale: Vec<f32> = (0..2 * t).map(|i| if i % 4 == 1 { 0.0 } else { 1.0 }).collect();
    let (wte, row, col) = (up(&rand(9 * c, 15)), up(&rand(8 * c, 16)), up(&rand(width * c, 17)));
    let mut e = be.zeros(2 * t * c).unwrap();
    let tables = [(be.whole(&row), Axis::Row(width)), (be.whole(&col), Axis::Col(width))];
    be.embed_forward(be.whole_mut(&mut e), &tokens, be.whole(&wte), Some(&scale), &tables, t, pos0, c);
    out.push(("embed_forward".into(), get(&e)));
    let mut grads = up(&rand((9 + 8 + width) * c, 18));
    let ranges = [(9 * c..17 * c, Axis::Row(width)), (17 * c..(17 + width) * c, Axis::Col(width))];
    let de = up(&rand(2 * t * c, 19));
    be.embed_backward(be.whole_mut(&mut grads), 0..9 * c, &ranges, be.whole(&de), &tokens, Some(&scale), t, c);
    out.push(("embed_backward".into(), get(&grads)));
    // rope_2d and its inverse
    let rope = Rope { nh: 4, hs: 24, width, theta: 100.0 };
    let mut qkv = up(&rand(2 * t * 3 * c, 20));
    be.rope(&rope, be.whole_mut(&mut qkv), t, pos0, false);
    out.push(("rope".into(), get(&qkv)));
    be.rope(&rope, be.whole_mut(&mut qkv), t, pos0, true);
    out.push(("rope then its inverse".into(), get(&qkv)));
    // AdamW and the gradient norm
    let (mut p, g) = (up(&rand(1000, 21)), up(&rand(1000, 22)));
    let (mut mo, mut vo) = (up(&rand(1100, 23)), up(&rand(1100, 24).iter().map(|x| x * x).collect::<Vec<_>>()));
    let step = AdamWStep { beta1: 0.9, beta2: 0.95, eps: 1e-8, bc2_sqrt: 0.3, step_size: 1e-3 };
    be.adamw(&mut p, &g, &mut mo, &mut vo, 100, step);
    out.extend([("adamw params".into(), get(&p)), ("adamw m".into(), get(&mo)), ("adamw v".into(), get(&vo))]);
    out.push(("sum_squares".into(), vec![be.sum_squares(&g) as f32]));
    out.extend(attention_outputs(be));
    out
}

/// Softmax attention forward and backward under every mask, with and without dropout.
fn attention_outputs<B: Backend>(be: &B) -> Vec<(String, Vec<f32>)> {
    let get = |b: &B::Buf| be.download(b, 0..be.size(b)).unwrap();
    let (b, t, nh, hs) = (2, 24, 3, 40);
    let c = nh * hs;
    let qkv = be.upload(&rand(b * t * 3 * c, 30)).unwrap();
    let dout = be.upload(&rand(b * t * c, 31)).unwrap();
    let mut out = Vec::new();
    let masks = [
        Mask::Causal,
        Mask::Full,
        Mask::Local2d { rows: 1, cols: 2, width: 6, causal: true },
        Mask::Local2d { rows: 1, cols: 1, width: 6, causal: false },
    ];
    for (mask, drop) in masks.iter().flat_map(|&m| [(m, None), (m, Dropout::new(0.2, 5))]) {
        let d = AttnDims { b, t, tk: t, nh, hs, mask, form: Form::Softmax, scale: 0.3, dropout: drop };
        let view =
            |part: usize| Seq { data: be.whole(&qkv), offset: part * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        let (mut o, mut saved) = (be.zeros(b * t * c).unwrap(), B::Saved::default());
        be.attention_forward(be.whole_mut(&mut o), &mut saved, view(0), view(1), view(2), d);
        let mut dqkv = be.zeros(b * t * 3 * c).unwrap();
        be.attention_backward(
            be.whole_mut(&mut dqkv),
            be.whole(&dout),
            be.whole(&o),
            &saved,
            view(0),
            view(1),
            view(2),
            d,
        );
        let name = format!("attention {mask:?} dropout {}", drop.is_some());
        out.extend([(format!("{name} out"), get(&o)), (format!("{name} dqkv"), get(&dqkv))]);
    }
    // decoding: a prompt of 5 slots, then one slot at a time, against the full forward
    let d = AttnDims { b, t, tk: t, nh, hs, mask: Mask::Causal, form: Form::Softmax, scale: 0.3, dropout: None };
    let mut state = be.decode_state((Mask::Causal, Form::Softmax), b, (nh, hs), t, KvPrecision::F32);
    let mut o = be.zeros(b * c).unwrap();
    let mut steps = Vec::new();
    for (past, len) in [(0, 5), (5, 1), (6, 1)] {
        let rows = be.upload(&qkv_rows(&get(&qkv), (b, t, c), past, len)).unwrap();
        let view =
            |part: usize| Seq { data: be.whole(&rows), offset: part * c, batch_stride: len * 3 * c, row_stride: 3 * c };
        let mut saved = B::Saved::default();
        be.resize(&mut o, b * len * c).unwrap();
        let dd = AttnDims { t: len, tk: past + len, ..d };
        be.attend_cached(&mut state, be.whole_mut(&mut o), &mut saved, view(0), view(1), view(2), past, dd);
        steps.extend(get(&o));
    }
    out.push(("attend_cached (prompt, two steps)".into(), steps));
    out
}

/// Rows past..past+len of each sequence of qkv (B, T, 3C).
fn qkv_rows(qkv: &[f32], (b, t, c): (usize, usize, usize), past: usize, len: usize) -> Vec<f32> {
    (0..b).flat_map(|i| qkv[(i * t + past) * 3 * c..(i * t + past + len) * 3 * c].to_vec()).collect()
}

#[test]
fn every_kernel_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (want, got) = (kernel_outputs(&Cpu), kernel_outputs(&gpu));
    for ((name, cpu), (_, g)) in want.iter().zip(&got) {
        // f32 sums in another order: a few ulps of the largest value
        close(name, g, cpu, 1e-5, 2e-5);
    }
}

/// A model's logits and hidden states, and its training step's loss and gradients.
fn model_outputs<B: Backend>(
    m: &ImageGpt<B>,
    tokens: &[u32],
    (b, t): (usize, usize),
    drop: bool,
) -> Vec<(String, Vec<f32>)> {
    let be = &m.be;
    let mut ws = Workspace::<B>::new();
    m.forward(&mut ws, tokens, b, t, Logits::All, true).unwrap();
    let mut out = vec![("logits".to_string(), be.download(&ws.logits, 0..be.size(&ws.logits)).unwrap())];
    out.push(("hidden states".into(), ws.hidden_states.concat()));
    let mut acts = TrainActs::<B>::new();
    if drop {
        acts.set_dropout(DropoutSites::new(3, 0.1, 0.1, 0.1));
    }
    let mut grads = be.zeros(be.size(&m.params)).unwrap();
    let loss = m.forward_backward(&mut acts, &mut grads, tokens, b, t, Objective::Gpt, None).unwrap();
    out.push(("training loss".into(), vec![loss as f32]));
    out.push(("gradients".into(), be.download(&grads, 0..be.size(&grads)).unwrap()));
    out
}

/// Greedy decoding of `steps` tokens from [SOS], KV-cached.
fn greedy<B: Backend>(m: &ImageGpt<B>, b: usize, steps: usize) -> Vec<u32> {
    let be = &m.be;
    let v = m.config.n_colors();
    let mut cache = KvCache::on(be, &m.config, b, KvPrecision::F32);
    let mut ws = Workspace::<B>::new();
    let mut next = vec![m.config.sos_token(); b];
    let mut all = Vec::new();
    for _ in 0..steps {
        m.forward_cached(&mut ws, &mut cache, &next, 1, Logits::Last).unwrap();
        let logits = be.download(&ws.logits, 0..b * v).unwrap();
        next = logits.chunks_exact(v).map(igpt::backend::loss::argmax).collect();
        all.extend(&next);
    }
    all
}

#[test]
fn fixture_models_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let root = fixtures();
    let models = [
        "hf-imagegpt/tiny",
        "hf-imagegpt/small",
        "variants/pos2d",
        "variants/rope2d",
        "variants/local",
        "variants/local-pos2d",
    ];
    for name in models {
        let cpu = load_model(&root.join(name)).unwrap();
        let on_gpu = cpu.to_engine(gpu.clone()).unwrap();
        let (b, t) = (2, cpu.config.n_positions);
        let mut rng = Rng::new(7);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(cpu.config.n_colors() as u64) as u32).collect();
        for drop in [false, true] {
            for ((what, want), (_, got)) in
                model_outputs(&cpu, &tokens, (b, t), drop).iter().zip(model_outputs(&on_gpu, &tokens, (b, t), drop))
            {
                // the bound for f32 logits (TF32 off): 1e-4; gradients relative to their largest
                close(&format!("{name} {what} (dropout {drop})"), &got, want, 1e-4, 1e-4);
            }
        }
        if cpu.config.is_causal() {
            assert_eq!(greedy(&on_gpu, 2, 40), greedy(&cpu, 2, 40), "{name}: greedy decoding");
            eprintln!("{name:<44} greedy decoding of 2 x 40 tokens: equal");
        }
    }
}

#[test]
fn the_fine_tuning_step_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = load_model(&fixtures().join("hf-imagegpt/tiny")).unwrap();
    let on_gpu = cpu.to_engine(gpu.clone()).unwrap();
    let (b, t, c, k) = (2, cpu.config.n_positions, cpu.config.n_embd, 3);
    let mut rng = Rng::new(9);
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(16) as u32).collect();
    let score = rand(k * c, 40);
    let labels = [2u16, 0];
    let want = {
        let (mut g, mut ds) = (vec![0f32; cpu.params.len()], vec![0f32; k * c]);
        let mut acts = TrainActs::new();
        let (gl, cl, _) = cpu
            .forward_backward_classify(&mut acts, &mut g, &score, &mut ds, &tokens, &labels, b, t, (0.5, None))
            .unwrap();
        (gl, cl, g, ds)
    };
    let got = {
        let be = &on_gpu.be;
        let (s, mut ds) = (be.upload(&score).unwrap(), be.zeros(k * c).unwrap());
        let mut g = be.zeros(be.size(&on_gpu.params)).unwrap();
        let mut acts = TrainActs::<Cuda>::new();
        let (dsv, sv) = (be.whole_mut(&mut ds), be.whole(&s));
        let (gl, cl, _) =
            on_gpu.forward_backward_classify(&mut acts, &mut g, sv, dsv, &tokens, &labels, b, t, (0.5, None)).unwrap();
        (gl, cl, be.download(&g, 0..be.size(&g)).unwrap(), be.download(&ds, 0..k * c).unwrap())
    };
    close("fine-tuning losses", &[got.0 as f32, got.1 as f32], &[want.0 as f32, want.1 as f32], 1e-5, 1e-5);
    close("fine-tuning gradients", &got.2, &want.2, 1e-5, 1e-4);
    close("fine-tuning score gradient", &got.3, &want.3, 1e-5, 1e-4);
}
