//! Micro-benchmark of the attention kernel alone: `cargo run --release --example attn_bench`.
use igpt::backend::attention::{AttnDims, SeqView, attention_forward};
use std::time::Instant;

fn main() {
    let (b, t, nh, hs) = (4, 1024, 8, 32);
    let c = nh * hs;
    let mut rng = igpt::rng::Rng::new(0);
    let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0f32; b * t * c];
    let mut lse = vec![0f32; b * nh * t];
    let d = AttnDims { b, t, tk: t, nh, hs, causal: true, scale: 0.17 };
    let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(std::env::args().nth(1).map_or(2, |s| s.parse().unwrap()))
        .build()
        .unwrap();
    pool.install(|| {
        for _ in 0..3 {
            let t0 = Instant::now();
            for _ in 0..10 {
                attention_forward(&mut out, &mut lse, view(0), view(1), view(2), d);
            }
            let dt = t0.elapsed().as_secs_f64() / 10.0;
            let flops = 4.0 * (b * nh) as f64 * (t * t) as f64 / 2.0 * hs as f64;
            println!("attention: {:.2} ms/call, {:.1} GFLOP/s (causal useful flops)", dt * 1e3, flops / dt / 1e9);
        }
    });
}
