use igpt::backend::WeightLayout;
use igpt::backend::matmul::matmul_forward;
use std::time::Instant;
fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let m = 8;
        for &(k, n) in &[(256usize, 768usize), (256, 256), (256, 1024), (1024, 256)] {
            let copies: usize = std::env::var("COPIES").map_or(16, |v| v.parse().unwrap());
            let ws: Vec<Vec<f32>> = (0..copies).map(|_| vec![0.01f32; k * n]).collect();
            let x = vec![0.5f32; m * k];
            let mut y = vec![0f32; m * n];
            let reps = 200;
            let t = Instant::now();
            for r in 0..reps {
                matmul_forward(&mut y, &x, &ws[r % copies], None, (m, k, n), WeightLayout::InOut, false);
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            println!("k={k} n={n}: {:.1} us, {:.1} GB/s", dt * 1e6, (k * n * 4) as f64 / dt / 1e9);
        }
    });
}
