//! igpt's side of `../shared/bench/sklearn_probe.py`: the probe's regularisation path on a
//! feature file that `igpt probe --save-features DIR` wrote (float32 `train`, `val`, `test`,
//! int64 `*_labels`), timed the same way:
//!   cargo run --release --example probe_bench -- DIR/layer_N.safetensors [THREADS]
//! Prints: RESULT igpt_probe D=.. N=.. fit_s=.. fits=.. best_lambda=.. best_C=.. val_acc=.. test_acc=..
use safetensors::{Dtype, SafeTensors};

fn main() {
    let path = std::env::args().nth(1).expect("usage: probe_bench FEATURES.safetensors [THREADS]");
    let threads = std::env::args().nth(2).map_or(2, |s| s.parse().expect("THREADS is a number"));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("a thread pool");
    let bytes = std::fs::read(&path).expect("readable features");
    let st = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let f32s = |k: &str| -> (Vec<f32>, usize) {
        let t = st.tensor(k).unwrap_or_else(|_| panic!("{path} has no `{k}`"));
        assert_eq!(t.dtype(), Dtype::F32);
        (t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), t.shape()[1])
    };
    let labels = |k: &str| -> Vec<u16> {
        let t = st.tensor(k).unwrap_or_else(|_| panic!("{path} has no `{k}`"));
        t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u16).collect()
    };
    let ((xtr, d), (xva, _)) = (f32s("train"), f32s("val"));
    let (ytr, yva) = (labels("train_labels"), labels("val_labels"));
    let test = st.tensor("test").is_ok().then(|| (f32s("test").0, labels("test_labels")));
    let k = 1 + ytr.iter().chain(&yva).copied().max().unwrap_or(0) as usize;
    use igpt::probe::{Split, fit_probe};
    let t0 = std::time::Instant::now();
    let r = fit_probe(
        None,
        (d, k),
        (Split { x: &xtr, y: &ytr }, Split { x: &xva, y: &yva }, test.as_ref().map(|(x, y)| Split { x, y })),
        igpt::logreg::Stop::default(),
    );
    let fit_s = t0.elapsed().as_secs_f64();
    for q in &r.path {
        eprintln!("PATH {:e} {:.4} it={} conv={}", q.lambda, q.val_acc, q.iterations, q.converged);
    }
    println!(
        "RESULT igpt_probe D={d} N={} fit_s={fit_s:.2} fits={} best_lambda={:e} best_C={:.3e} val_acc={:.4} test_acc={:.4} on_edge={}",
        ytr.len(),
        r.path.len(),
        r.lambda,
        1.0 / (r.lambda * ytr.len() as f64),
        r.val_acc,
        r.test_acc.unwrap_or(f64::NAN),
        r.lambda_on_edge
    );
}
