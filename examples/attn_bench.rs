//! Micro-benchmark of the attention kernel alone: `cargo run --release --example attn_bench [THREADS]`.
//! Full causal attention over 1,024 positions, then decoding steps (one query row per
//! sequence against a KV cache) with f32 and f16 caches, reported as the cache bandwidth.
use igpt::backend::attention::{
    AttnDims, Form, KvBlocks, KvPrecision, Mask, SeqView, attention_forward, attention_with_kv,
};
use std::time::Instant;

fn main() {
    let (b, t, nh, hs) = (4, 1024, 8, 32);
    let c = nh * hs;
    let mut rng = igpt::rng::Rng::new(0);
    let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0f32; b * t * c];
    let mut lse = vec![0f32; b * nh * t];
    let d = AttnDims { b, t, tk: t, nh, hs, mask: Mask::Causal, form: Form::Softmax, scale: 0.17, dropout: None };
    let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(std::env::args().nth(1).map_or(2, |s| s.parse().unwrap()))
        .start_handler(|_| igpt::backend::math::flush_denormals())
        .build()
        .unwrap();
    pool.install(|| {
        for _ in 0..if std::env::var_os("DECODE_ONLY").is_some() { 0 } else { 3 } {
            let t0 = Instant::now();
            for _ in 0..10 {
                attention_forward(&mut out, &mut lse, view(0), view(1), view(2), d);
            }
            let dt = t0.elapsed().as_secs_f64() / 10.0;
            let flops = 4.0 * (b * nh) as f64 * (t * t) as f64 / 2.0 * hs as f64;
            println!("attention: {:.2} ms/call, {:.1} GFLOP/s (causal useful flops)", dt * 1e3, flops / dt / 1e9);
        }
        // Decoding, batch 8, 8 layers' caches (more than the L3 holds), 512 positions each.
        let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let (b, layers, past) = (8, env("LAYERS", 8), env("PAST", 512));
        let kv_src: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
        let kview = |p: usize| SeqView { data: &kv_src, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
        for prec in [KvPrecision::F32, KvPrecision::F16, KvPrecision::Int8] {
            let mut caches: Vec<KvBlocks> = (0..layers).map(|_| KvBlocks::with_precision(b, nh, hs, t, prec)).collect();
            for kv in &mut caches {
                kv.write(kview(1), kview(2), 0, past + 1);
            }
            let q = SeqView { data: &kv_src, offset: 0, batch_stride: t * 3 * c, row_stride: 3 * c };
            let d = AttnDims {
                b,
                t: 1,
                tk: past + 1,
                nh,
                hs,
                mask: Mask::Causal,
                form: Form::Softmax,
                scale: 0.17,
                dropout: None,
            };
            let mut out = vec![0f32; b * c];
            let mut lse = vec![0f32; b * nh];
            for _ in 0..3 {
                let t0 = Instant::now();
                let reps = env("REPS", 20);
                for _ in 0..reps {
                    for kv in &caches {
                        attention_with_kv(&mut out, &mut lse, q, kv, d);
                    }
                }
                let dt = t0.elapsed().as_secs_f64() / reps as f64;
                let bytes = (layers * caches[0].bytes()) as f64 * (past + 1) as f64 / caches[0].capacity() as f64;
                println!(
                    "decode {prec:?}: {:.2} ms per step of {layers} layers, {:.1} GB/s of cache read",
                    dt * 1e3,
                    bytes / dt / 1e9
                );
            }
        }
    });
}
