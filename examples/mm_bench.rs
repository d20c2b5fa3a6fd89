//! Micro-benchmark of the training matmul shapes: `cargo run --release --example mm_bench`.
use igpt::backend::WeightLayout;
use igpt::backend::matmul::{matmul_backward_weight, matmul_forward};
use std::time::Instant;

fn main() {
    let (m, k, n) = (4096, 256, 1024);
    let x = vec![0.01f32; m * k];
    let w = vec![0.02f32; k * n];
    let dy = vec![0.03f32; m * n];
    let mut y = vec![0f32; m * n];
    let mut dx = vec![0f32; m * k];
    let mut dw = vec![0f32; k * n];
    let gf = 2.0 * (m * k * n) as f64 / 1e9;
    for _ in 0..2 {
        let t = Instant::now();
        for _ in 0..5 {
            matmul_forward(&mut y, &x, &w, None, (m, k, n), WeightLayout::InOut, false);
        }
        println!("forward  y = x W     {:.0} GFLOP/s", 5.0 * gf / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..5 {
            matmul_forward(&mut dx, &dy, &w, None, (m, n, k), WeightLayout::OutIn, false);
        }
        println!("backward dx = dy W^T {:.0} GFLOP/s", 5.0 * gf / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..5 {
            matmul_backward_weight(&mut dw, &x, &dy, (m, k, n));
        }
        println!("backward dW = x^T dy {:.0} GFLOP/s", 5.0 * gf / t.elapsed().as_secs_f64());
    }
}
