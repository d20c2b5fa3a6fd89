//! Micro-benchmark of linear attention alone: `cargo run --release --example linear_bench [THREADS]`.
//! The chunked forward and backward of one layer (8 heads of 32) at side 32 (B=4, T=1,024)
//! and side 64 (B=1, T=4,096), in microseconds per token, then decoding steps of the
//! recurrent state (batch 8).
use igpt::backend::attention::linear::linear_forward;
use igpt::backend::attention::linear_backward::linear_backward;
use igpt::backend::attention::linear_state::LinearState;
use igpt::backend::attention::{AttnDims, Form, Mask, SeqView};
use std::time::Instant;

fn main() {
    let (nh, hs) = (8, 32);
    let c = nh * hs;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(std::env::args().nth(1).map_or(2, |s| s.parse().unwrap()))
        .start_handler(|_| igpt::backend::math::flush_denormals())
        .build()
        .unwrap();
    let mut rng = igpt::rng::Rng::new(0);
    pool.install(|| {
        for (b, t) in [(4, 1024), (1, 4096)] {
            let qkv: Vec<f32> = (0..b * t * 3 * c).map(|_| rng.normal() as f32).collect();
            let dout: Vec<f32> = (0..b * t * c).map(|_| rng.normal() as f32).collect();
            let (mut out, mut dqkv) = (vec![0f32; b * t * c], vec![0f32; b * t * 3 * c]);
            let d = AttnDims { b, t, tk: t, nh, hs, mask: Mask::Causal, form: Form::Linear, scale: 1.0, dropout: None };
            let view = |p: usize| SeqView { data: &qkv, offset: p * c, batch_stride: t * 3 * c, row_stride: 3 * c };
            for _ in 0..3 {
                let t0 = Instant::now();
                for _ in 0..5 {
                    linear_forward(&mut out, view(0), view(1), view(2), d);
                }
                let fwd = t0.elapsed().as_secs_f64() / 5.0;
                let t0 = Instant::now();
                for _ in 0..5 {
                    linear_backward(&mut dqkv, &dout, &out, view(0), view(1), view(2), d);
                }
                let bwd = t0.elapsed().as_secs_f64() / 5.0;
                let per = |s: f64| s * 1e6 / (b * t) as f64;
                println!(
                    "B={b} T={t}: forward {:.2} us/token, backward {:.2} us/token (one layer)",
                    per(fwd),
                    per(bwd)
                );
            }
        }
        let b = 8;
        let row: Vec<f32> = (0..b * 3 * c).map(|_| rng.normal() as f32).collect();
        let view = |p: usize| SeqView { data: &row, offset: p * c, batch_stride: 3 * c, row_stride: 3 * c };
        let mut st = LinearState::new(b, nh, hs);
        let mut o = vec![0f32; b * c];
        let n = 20_000;
        let t0 = Instant::now();
        for _ in 0..n {
            st.step(&mut o, view(0), view(1), view(2), 0);
        }
        println!("decode step (B=8, one layer): {:.2} us", t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    });
}
