//! Every kernel set this CPU has, end to end: the same computations run in a child process
//! per `IGPT_KERNELS` value give the portable set's bits — forward logits (causal), a
//! training step's loss and gradients (GPT and BERT), two AdamW updates, and cached decoding
//! with f32, f16 and int8 caches and f16 weights. Runs the fallback code on every machine.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use igpt::backend::isa::{self, KernelSet};
use igpt::model::train_graph::{Objective, TrainActs};
use igpt::model::{KvCache, KvPrecision, Logits, WeightPrecision, Workspace, load_model};
use igpt::train::optim::{AdamW, AdamWConfig};

/// Set in the child processes, which print their fingerprints instead of comparing.
const CHILD: &str = "IGPT_KERNEL_SETS_CHILD";

/// FNV-1a over the bits of a slice of floats.
fn hash(xs: &[f32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in xs {
        for b in x.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}/{}", xs.len())
}

/// name -> hash of every output the kernel sets must agree on.
fn fingerprints() -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let model = load_model(&common::fixture("small")).unwrap();
    let (b, t) = (2, 300);
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7919 + 13) % 512) as u32).collect();
    let mut ws = Workspace::new();
    model.forward(&mut ws, &tokens, b, t, Logits::All, true).unwrap();
    out.insert("forward_logits", hash(&ws.logits));

    for (obj, name) in [(Objective::Gpt, "gpt"), (Objective::Bert, "bert")] {
        let mask: Vec<bool> = (0..b * t).map(|i| i % 7 == 3).collect();
        let mask = (obj == Objective::Bert).then_some(&mask[..]);
        let mut grads = vec![0f32; model.params.len()];
        let mut acts = TrainActs::new();
        let loss = model.forward_backward(&mut acts, &mut grads, &tokens, b, t, obj, mask).unwrap();
        out.insert(if obj == Objective::Gpt { "gpt_loss" } else { "bert_loss" }, format!("{:016x}", loss.to_bits()));
        out.insert(if name == "gpt" { "gpt_grads" } else { "bert_grads" }, hash(&grads));
        if obj == Objective::Gpt {
            let mut params = model.params.clone();
            let mut opt = AdamW::new(AdamWConfig::default(), &model.layout);
            opt.update(&mut params, &grads, 1e-3);
            opt.update(&mut params, &grads, 5e-4);
            out.insert("adamw_params", hash(&params));
        }
    }

    for (key, kv, w) in [
        ("decode_f32", KvPrecision::F32, WeightPrecision::F32),
        ("decode_f16_cache_f16_weights", KvPrecision::F16, WeightPrecision::F16),
        ("decode_int8_cache", KvPrecision::Int8, WeightPrecision::F32),
    ] {
        let mut m = load_model(&common::fixture("small")).unwrap();
        m.set_decode_weights(w).unwrap();
        let mut cache = KvCache::with_precision(&m.config, b, kv);
        let mut all = Vec::new();
        // a 70-token prompt through the block-wise kernel, then 90 decoding steps
        m.forward_cached(&mut ws, &mut cache, &tokens[..b * 70], 70, Logits::Last).unwrap();
        all.extend_from_slice(&ws.logits);
        for s in 0..90 {
            let tok: Vec<u32> = (0..b).map(|r| tokens[r * t + 70 + s]).collect();
            m.forward_cached(&mut ws, &mut cache, &tok, 1, Logits::Last).unwrap();
            all.extend_from_slice(&ws.logits);
        }
        out.insert(key, hash(&all));
    }
    out
}

#[test]
fn every_kernel_set_gives_the_portable_bits() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let run = |set: KernelSet| -> BTreeMap<String, String> {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kernel_set_child", "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .env(isa::ENV, set.name())
            .output()
            .expect("run the test binary as a child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{set} child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let map: BTreeMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("FINGERPRINT "))
            .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        assert_eq!(map.get("kernels").map(String::as_str), Some(set.name()), "{set}: the child ran other kernels");
        assert!(map.len() > 8, "{set}: too few fingerprints:\n{stdout}");
        map
    };
    let want = run(KernelSet::Portable);
    for set in KernelSet::available() {
        if set != KernelSet::Portable {
            let got = run(set);
            for (k, v) in want.iter().filter(|(k, _)| k.as_str() != "kernels") {
                assert_eq!(got.get(k), Some(v), "{set} differs from portable in {k}");
            }
        }
    }
}

#[test]
fn kernel_set_child() {
    if std::env::var(CHILD).is_err() {
        return; // only runs as the child of the test above
    }
    println!("\nFINGERPRINT kernels {}", isa::active().name()); // after libtest's "test ... "
    for (k, v) in fingerprints() {
        println!("FINGERPRINT {k} {v}");
    }
}
