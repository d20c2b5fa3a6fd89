//! The KV cache: cached and uncached forwards agree, cached greedy decoding reproduces HF's
//! `generate`, and sampling is reproducible for a seed.

mod common;

use common::{Refs, fixture};
use igpt::model::{KvCache, KvPrecision, Logits, WeightPrecision, Workspace, load_model};
use igpt::sample::{Prompt, Sampler, Sampling, generate};

#[test]
fn cached_logits_equal_uncached() {
    let worst = cached_vs_uncached(KvPrecision::F32, WeightPrecision::F32);
    assert!(worst <= 1e-5, "cached vs uncached logits differ by {worst}");
}

/// The half-precision cache: half the bytes, logits near the exact ones (not equal: the
/// keys and values really are rounded to 11 significant bits).
#[test]
fn f16_cache_halves_memory_and_stays_close() {
    let model = load_model(&fixture("small")).unwrap();
    let (c32, c16) = (KvCache::new(&model.config, 3), KvCache::with_precision(&model.config, 3, KvPrecision::F16));
    assert_eq!(c16.precision(), KvPrecision::F16);
    assert_eq!(c32.bytes(), 2 * c16.bytes());
    // 3 (batch) x 3 layers x K and V x 4 heads x 1024 positions x 16 dims x 4 bytes
    assert_eq!(c32.bytes(), 3 * 3 * 2 * 1024 * 64 * 4);
    let worst = cached_vs_uncached(KvPrecision::F16, WeightPrecision::F32);
    assert!(worst > 1e-6 && worst <= 5e-3, "f16 cache: logits differ by {worst}");
    assert_eq!("f16".parse::<KvPrecision>(), Ok(KvPrecision::F16));
    assert!("int4".parse::<KvPrecision>().unwrap_err().contains("use f32, f16 or int8"));
}

/// The 8-bit cache: a byte per value and a scale per head vector, logits within a few 1e-2
/// (0.042 here, of logits up to 5; the prefill of 100 tokens reads it through the block-wise kernel, the 40 steps after it
/// through the decoding one).
#[test]
fn int8_cache_quarters_memory_and_stays_close() {
    let model = load_model(&fixture("small")).unwrap();
    let c8 = KvCache::with_precision(&model.config, 3, KvPrecision::Int8);
    assert_eq!(c8.precision(), KvPrecision::Int8);
    // 3 x 3 layers x K and V x 4 heads x 1024 positions x (16 values + one f32 scale)
    assert_eq!(c8.bytes(), 3 * 3 * 2 * 4 * 1024 * (16 + 4));
    let worst = cached_vs_uncached(KvPrecision::Int8, WeightPrecision::F32);
    assert!(worst > 1e-4 && worst <= 6e-2, "int8 cache: logits differ by {worst}");
    assert_eq!("int8".parse::<KvPrecision>(), Ok(KvPrecision::Int8));
}

/// Half-precision decoding weights: logits near the exact ones (not equal: the block
/// matrices really are rounded), alone and with the f16 cache; the prefill stays f32.
#[test]
fn f16_decode_weights_stay_close() {
    let worst = cached_vs_uncached(KvPrecision::F32, WeightPrecision::F16);
    assert!(worst > 1e-6 && worst <= 5e-3, "f16 weights: logits differ by {worst}");
    let worst = cached_vs_uncached(KvPrecision::F16, WeightPrecision::F16);
    assert!(worst > 1e-6 && worst <= 1e-2, "f16 weights and cache: logits differ by {worst}");
    let mut model = load_model(&fixture("small")).unwrap();
    model.set_decode_weights(WeightPrecision::F16).unwrap();
    assert_eq!(model.decode_weights(), WeightPrecision::F16);
    model.set_decode_weights(WeightPrecision::F32).unwrap();
    assert_eq!(model.decode_weights(), WeightPrecision::F32);
    assert!("bf16".parse::<WeightPrecision>().unwrap_err().contains("use f32, f32-unpacked or f16"));
}

/// Largest |cached - uncached| logit over a 100-token prefill and 40 single-token steps.
fn cached_vs_uncached(prec: KvPrecision, weights: WeightPrecision) -> f32 {
    let mut model = load_model(&fixture("small")).unwrap();
    model.set_decode_weights(weights).unwrap();
    let (_, ids) = Refs::load("small").i64("input_ids_full"); // (2, 1024)
    let (b, v, t_pre, steps) = (2, model.config.n_colors(), 100, 40);
    let rows = |upto: usize| -> Vec<u32> { (0..b).flat_map(|i| ids[i * 1024..i * 1024 + upto].to_vec()).collect() };
    // Uncached: one forward over the longest prefix gives every position's logits (in f32:
    // only decoding steps read the half weights).
    let mut full = Workspace::new();
    model.forward(&mut full, &rows(t_pre + steps), b, t_pre + steps, Logits::All, false).unwrap();
    let t_all = t_pre + steps;
    let mut cache = KvCache::with_precision(&model.config, b, prec);
    let mut ws = Workspace::new();
    model.forward_cached(&mut ws, &mut cache, &rows(t_pre), t_pre, Logits::Last).unwrap();
    let mut worst = 0f32;
    for step in 0..steps {
        let pos = t_pre - 1 + step; // position whose logits ws holds
        for r in 0..b {
            let want = &full.logits[(r * t_all + pos) * v..(r * t_all + pos + 1) * v];
            let got = &ws.logits[r * v..(r + 1) * v];
            worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        }
        let next: Vec<u32> = (0..b).map(|r| ids[r * 1024 + pos + 1]).collect();
        model.forward_cached(&mut ws, &mut cache, &next, 1, Logits::Last).unwrap();
    }
    assert_eq!(cache.len(), t_pre + steps);
    worst
}

#[test]
fn cached_greedy_reproduces_hf_generate() {
    for name in ["tiny", "small"] {
        let refs = Refs::load(name);
        let model = load_model(&fixture(name)).unwrap();
        let n = model.config.n_positions;
        for which in ["gen_short", "gen_tail"] {
            let (shape, prefix) = refs.i64(&format!("{which}_prefix"));
            let (oshape, want) = refs.i64(&format!("{which}_output"));
            let (b, t0, t1) = (shape[0], shape[1], oshape[1]);
            // Known pixels: the prompt without its SOS.
            let known: Vec<Vec<u32>> = (0..b)
                .map(|r| {
                    let mut row = prefix[r * t0 + 1..(r + 1) * t0].to_vec();
                    row.resize(n, 0);
                    row
                })
                .collect();
            let prompt = Prompt::prefix(&known, t0 - 1);
            let mut sampler = Sampler::new(0, Sampling { greedy: true, ..Default::default() });
            let got = generate(&model, &prompt, &mut sampler, |_, _| {}).unwrap();
            for r in 0..b {
                assert_eq!(got[r][..t1 - 1], want[r * t1 + 1..(r + 1) * t1], "{name}/{which} row {r}");
            }
        }
    }
}

#[test]
fn sampling_is_reproducible_and_batch_independent_when_greedy() {
    let model = load_model(&fixture("tiny")).unwrap();
    let n = model.config.n_positions;
    let run = |seed: u64, b: usize| {
        let mut s = Sampler::new(seed, Sampling { temperature: 1.0, top_k: 8, ..Default::default() });
        generate(&model, &Prompt::empty(b, n), &mut s, |_, _| {}).unwrap()
    };
    let a = run(5, 3);
    assert_eq!(a, run(5, 3));
    assert_ne!(a, run(6, 3));
    assert!(a.iter().all(|row| row.len() == n && row.iter().all(|&t| t < 16)));
    // Greedy decoding of a row does not depend on its batch mates.
    let greedy = |b: usize| {
        let mut s = Sampler::new(0, Sampling { greedy: true, ..Default::default() });
        generate(&model, &Prompt::empty(b, n), &mut s, |_, _| {}).unwrap()
    };
    assert_eq!(greedy(1)[0], greedy(4)[3]);
    // Progress reaches the end.
    let mut last = (0, 0);
    let mut s = Sampler::new(1, Sampling::default());
    generate(&model, &Prompt::empty(2, n), &mut s, |d, t| last = (d, t)).unwrap();
    assert_eq!(last, (n, n));
}
