//! Micro-benchmark of the training matmul shapes, then of decoding's small-m products:
//! `cargo run --release --example mm_bench [THREADS]`.
use igpt::backend::WeightLayout;
use igpt::backend::matmul::{matmul_backward_weight, matmul_forward};
use igpt::backend::matmul_f16::{PackedF16, PackedF32, matmul_packed};
use std::time::Instant;

fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        decode();
        if std::env::var_os("DECODE_ONLY").is_none() {
            training();
        }
    });
}

/// The products of one decoding step of batch 8 at E=256, 8 layers (25 MB of weights),
/// with 64 MB of other reads between steps (the KV cache's share of the memory traffic).
fn decode() {
    let (m, c, layers) = (8, 256, 8);
    let shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
    let ws: Vec<Vec<f32>> = (0..layers).flat_map(|_| shapes.iter().map(|&(k, n)| vec![0.01f32; k * n])).collect();
    let ws16: Vec<PackedF16> =
        ws.iter().zip(shapes.iter().cycle()).map(|(w, &(k, n))| PackedF16::pack(w, k, n)).collect();
    let ws32: Vec<PackedF32> =
        ws.iter().zip(shapes.iter().cycle()).map(|(w, &(k, n))| PackedF32::pack(w, k, n)).collect();
    let x = vec![0.5f32; m * 4 * c];
    let mut yp = vec![0f32; m * 4 * c];
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..50 {
            for p in &ws32 {
                matmul_packed(&mut yp, &x, p, None, m, false);
            }
        }
        let dt = t.elapsed().as_secs_f64() / 50.0;
        println!("decode m=8 products (24 MB of f32 weights packed in 32-column panels): {:.2} ms per step", dt * 1e3);
    }
    let mut y = vec![0f32; m * 4 * c];
    let other = vec![1f32; 16 << 20];
    for (f16, evict) in [(false, false), (false, true), (true, false), (true, true)] {
        let bytes: usize = ws.iter().map(|w| w.len() * if f16 { 2 } else { 4 }).sum();
        let mut total = 0.0;
        let reps = 50;
        for _ in 0..reps {
            if evict {
                std::hint::black_box(other.iter().sum::<f32>());
            }
            let t = Instant::now();
            for (i, &(k, n)) in (0..ws.len()).zip(shapes.iter().cycle()) {
                if f16 {
                    matmul_packed(&mut y, &x, &ws16[i], None, m, false);
                } else {
                    matmul_forward(&mut y, &x, &ws[i], None, (m, k, n), WeightLayout::InOut, false);
                }
            }
            total += t.elapsed().as_secs_f64();
        }
        let dt = total / reps as f64;
        println!(
            "decode m=8 products ({} MB of {} weights{}): {:.2} ms per step, {:.1} GB/s",
            bytes >> 20,
            if f16 { "f16" } else { "f32" },
            if evict { ", caches flushed by 64 MB of other reads" } else { "" },
            dt * 1e3,
            bytes as f64 / dt / 1e9
        );
    }
}

fn training() {
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
