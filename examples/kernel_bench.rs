//! The attention micro-kernels against their plain-loop versions on 64 x 64 x 32 blocks,
//! one thread: same bits, and GFLOP/s of each. `cargo run --release --example kernel_bench`.
use igpt::backend::attention::kernels::{accumulate_pv, accumulate_pv_rows, scores, scores_plain};
use std::time::Instant;

const REPS: usize = 20000;

fn time(f: &mut dyn FnMut()) -> f64 {
    let t0 = Instant::now();
    for _ in 0..REPS {
        f();
    }
    2.0 * 64.0 * 64.0 * 32.0 * REPS as f64 / t0.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let p: Vec<f32> = (0..64 * 64).map(|i| (i % 13) as f32 * 0.01).collect();
    let v: Vec<f32> = (0..64 * 32).map(|i| (i % 7) as f32 * 0.1).collect();
    let kt: Vec<f32> = (0..32 * 64).map(|i| (i % 11) as f32 * 0.1).collect();
    let (mut o_plain, mut o_fast) = (vec![0f32; 64 * 32], vec![0f32; 64 * 32]);
    let (mut s_plain, mut s_fast) = (vec![0f32; 64 * 64], vec![0f32; 64 * 64]);
    for _ in 0..5 {
        let a = time(&mut || accumulate_pv_rows::<32, 4>(&mut o_plain, &p, 64, &v, 64, 64));
        let b = time(&mut || accumulate_pv::<32>(&mut o_fast, &p, 64, &v, 64, 64));
        let c = time(&mut || scores_plain(&mut s_plain, 64, &v, &kt, 64, 64, 32));
        let d = time(&mut || scores(&mut s_fast, 64, &v, &kt, 64, 64, 32));
        println!("P.V plain {a:.1} / kernel {b:.1} GFLOP/s    Q.K plain {c:.1} / kernel {d:.1} GFLOP/s");
    }
    assert_eq!(o_plain, o_fast, "P.V: the kernel must give the plain loop's bits");
    assert_eq!(s_plain, s_fast, "Q.K: the kernel must give the plain loop's bits");
}
