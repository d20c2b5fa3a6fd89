//! The `igpt` binary end to end: JSON contracts, numbers against HF references, and clear
//! errors with a non-zero exit on bad input.

mod common;

use std::process::Command;

use common::{Refs, fixture};

fn igpt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_igpt")).args(args).output().expect("run igpt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn info_reports_config_and_palette() {
    let dir = fixture("small");
    let (ok, out, err) = igpt(&["info", "--model", dir.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["n_params"], 280_768);
    assert_eq!(v["n_layer"], 3);
    assert_eq!(v["palette_size"], 512);
    assert_eq!(v["class"], "ImageGPTForCausalImageModeling");
    let (ok, out, _) = igpt(&["info", "--model", dir.to_str().unwrap()]);
    assert!(ok && out.contains("280768"));
}

/// `info` without a model describes the engine; `IGPT_KERNELS` forces a set, and a name
/// that is unknown or a set this CPU lacks is refused before anything runs.
#[test]
fn info_reports_the_kernel_set_and_igpt_kernels_forces_it() {
    use igpt::backend::isa::KernelSet;
    let o =
        Command::new(env!("CARGO_BIN_EXE_igpt")).args(["info", "--json"]).env_remove("IGPT_KERNELS").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&String::from_utf8_lossy(&o.stdout));
    let best = KernelSet::best().name();
    assert_eq!(v["engine"]["kernels"], best);
    assert_eq!(v["engine"]["kernels_available"].as_array().unwrap().last().unwrap(), "portable");
    let run = |value: &str, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_igpt")).args(args).env("IGPT_KERNELS", value).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = run("portable", &["info", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["engine"]["kernels"], "portable");
    assert_eq!(json(&out)["engine"]["kernels_forced"], "portable");
    let shape = ["--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--side", "8", "--colors", "16", "--steps", "1"];
    let mut args = vec!["bench", "train", "--json"];
    args.extend(shape);
    let (code, out, err) = run("portable", &args);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["kernels"], "portable");
    let (code, _, err) = run("sse9", &["info"]);
    assert!(code == Some(2) && err.contains("IGPT_KERNELS=sse9") && err.contains("avx512, avx2 or portable"), "{err}");
    if let Some(missing) = KernelSet::ALL.into_iter().find(|s| !s.supported()) {
        let (code, _, err) = run(missing.name(), &["info"]);
        assert!(code == Some(2) && err.contains("this CPU cannot run") && err.contains("unset IGPT_KERNELS"), "{err}");
    }
}

/// `--device`: every command that computes takes it; `cpu` (the default) runs as before, a
/// GPU this build or machine cannot use is refused before any work with what to change,
/// and a bad name is refused by the parser; `info --device cuda` reports what it found.
#[test]
fn device_flags_run_on_the_cpu_and_refuse_an_unusable_gpu() {
    let small = fixture("small");
    let m = small.to_str().unwrap();
    let shape = ["--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--side", "8", "--colors", "16", "--steps", "1"];
    let mut bench = vec!["bench", "forward", "--json", "--device", "cpu"];
    bench.extend(shape);
    let (ok, out, err) = igpt(&bench);
    assert!(ok && json(&out)["tok_s"].as_f64().unwrap() > 0.0, "{err}");
    let commands: [&[&str]; 8] = [
        &["train", "--data", "d", "--out", "o"],
        &["sample", "--model", m],
        &["complete", "--model", m, "--images", "x.png"],
        &["eval", "--model", m, "x.png"],
        &["probe", "--model", m, "--data", "d", "--out", "o"],
        &["finetune", "--model", m, "--data", "d", "--out", "o"],
        &["eval-cls", "--model", m, "--data", "d"],
        &["bench", "train"],
    ];
    for cmd in commands {
        let o = Command::new(env!("CARGO_BIN_EXE_igpt")).args(cmd).args(["--device", "cuda:1"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains("cuda:1: ") && err.contains("--device cpu") && !err.contains("panicked"),
            "{cmd:?}: {err}"
        );
    }
    let (ok, _, err) = igpt(&["sample", "--model", m, "--device", "gpu0"]);
    assert!(!ok && err.contains("give cpu, cuda or cuda:N"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_igpt")).args(["info", "--device", "cuda", "--json"]).output().unwrap();
    let v = json(&String::from_utf8_lossy(&o.stdout));
    let g = &v["gpu"];
    assert_eq!(g["device"], "cuda:0");
    assert_eq!(g["libraries"].as_array().unwrap().len(), 4);
    assert_eq!(o.status.success(), g["error"].is_null(), "{g}");
    if g["cuda_backend_built"] == false {
        assert!(g["error"].as_str().unwrap().contains("--features cuda"), "{g}");
    }
}

#[test]
fn encode_json_equals_hf_processor_ids() {
    let dir = fixture("small");
    let imgs: Vec<String> =
        (0..3).map(|i| dir.join(format!("test_image_{i}.png")).to_string_lossy().into_owned()).collect();
    let mut args = vec!["encode", "--model", dir.to_str().unwrap(), "--json"];
    args.extend(imgs.iter().map(|s| s.as_str()));
    let (ok, out, err) = igpt(&args);
    assert!(ok, "{err}");
    let v = json(&out);
    let (_, want) = Refs::load("small").i64("proc_input_ids");
    for i in 0..3 {
        let got: Vec<u32> =
            v["images"][i]["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(got, want[i * 1024..(i + 1) * 1024]);
        assert_eq!(v["images"][i]["path"], imgs[i].as_str());
    }
}

#[test]
fn eval_nll_equals_cross_entropy_of_hf_logits() {
    // For `tiny` (8x8), refs' input_ids are exactly [SOS] + the image's 63 first tokens, so
    // HF's logits give the reference NLL of each whole image.
    let dir = fixture("tiny");
    let refs = Refs::load("tiny");
    let (_, logits) = refs.f32("logits"); // (2, 64, 16)
    let (_, ids) = refs.i64("proc_input_ids"); // (3, 64)
    let want: Vec<f64> = (0..2)
        .map(|i| {
            (0..64)
                .map(|t| {
                    let row = &logits[(i * 64 + t) * 16..(i * 64 + t + 1) * 16];
                    let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
                    z.ln() - row[ids[i * 64 + t] as usize] as f64
                })
                .sum::<f64>()
                / 64.0
        })
        .collect();
    let imgs: Vec<String> =
        (0..2).map(|i| dir.join(format!("test_image_{i}.png")).to_string_lossy().into_owned()).collect();
    let (ok, out, err) = igpt(&["eval", "--model", dir.to_str().unwrap(), "--json", &imgs[0], &imgs[1]]);
    assert!(ok, "{err}");
    let v = json(&out);
    for i in 0..2 {
        let got = v["images"][i]["nll"].as_f64().unwrap();
        assert!((got - want[i]).abs() < 1e-5, "image {i}: {got} vs HF {}", want[i]);
    }
    let mean = v["mean_nll"].as_f64().unwrap();
    assert!((mean - (want[0] + want[1]) / 2.0).abs() < 1e-5);
    assert!((v["bits_per_token"].as_f64().unwrap() - mean / std::f64::consts::LN_2).abs() < 1e-9);
}

#[test]
fn bench_forward_json_contract() {
    let (ok, out, err) = igpt(&[
        "bench",
        "forward",
        "--n-embd",
        "32",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--side",
        "8",
        "--colors",
        "16",
        "--batch",
        "2",
        "--steps",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["mode"], "forward");
    for k in ["tok_s", "step_s", "peak_rss_mb"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
    // sampling with the half-precision cache and decoding weights reports both
    let shape = ["--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--side", "8", "--colors", "16"];
    let mut args = vec!["bench", "sample", "--batch", "2", "--kv-cache", "f16", "--weights", "f16", "--json"];
    args.extend(shape);
    let (ok, out, err) = igpt(&args);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(
        (v["mode"].as_str(), v["kv_cache"].as_str(), v["weights"].as_str()),
        (Some("sample"), Some("f16"), Some("f16"))
    );
    assert!(v["tok_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_inputs_exit_nonzero_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("notes.png");
    std::fs::write(&fake, "hello").unwrap();
    let dir = fixture("tiny");
    let (ok, _, err) = igpt(&["encode", "--model", dir.to_str().unwrap(), fake.to_str().unwrap()]);
    assert!(!ok && err.contains("notes.png") && err.contains("not a readable image"), "{err}");
    let (ok, _, err) = igpt(&["info", "--model", tmp.path().join("missing").to_str().unwrap()]);
    assert!(!ok && err.contains("missing"), "{err}");
    // A classifier cannot be evaluated as a pixel model.
    let cls = fixture("tiny-cls");
    let img = cls.join("test_image_0.png");
    let (ok, _, err) = igpt(&["eval", "--model", cls.to_str().unwrap(), img.to_str().unwrap()]);
    assert!(!ok && err.contains("needs a causal model"), "{err}");
    assert!(!err.contains("panicked"));
    // train names what it needs instead of reading ./data into ./runs/train
    let (ok, _, err) = igpt(&["train", "--steps", "1"]);
    assert!(!ok && err.contains("--data DIR") && err.contains("--out RUN"), "{err}");
    // a misspelt key of --config is refused, naming it
    let cfg = tmp.path().join("train.json");
    std::fs::write(&cfg, r#"{"train": {"batch": 4, "learning_rate": 0.1}}"#).unwrap();
    let (ok, _, err) = igpt(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field `learning_rate`") && err.contains("train.json"), "{err}");
    // an OS error is printed once
    let (ok, _, err) = igpt(&["probe", "--model", dir.to_str().unwrap(), "--data", "/nonexistent", "--out", "/tmp/x"]);
    assert!(!ok && err.matches("No such file or directory").count() == 1, "{err}");
}

#[test]
fn convert_bin_to_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for f in ["config.json", "pytorch_model.bin", "preprocessor_config.json"] {
        std::fs::copy(fixture("tiny").join(f), src.join(f)).unwrap();
    }
    let out = tmp.path().join("out");
    let (ok, _, err) = igpt(&["convert", "--model", src.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let a = igpt::model::load_model(&out).unwrap();
    let b = igpt::model::load_model(&fixture("tiny")).unwrap();
    assert!(a.params == b.params);
    assert!(out.join("preprocessor_config.json").exists());
}

#[test]
fn sample_and_complete_write_grids_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("tiny");
    let d = dir.to_str().unwrap();
    let p = |name: &str| tmp.path().join(name).to_string_lossy().into_owned();
    let (ok, out, err) = igpt(&[
        "sample",
        "--model",
        d,
        "--num",
        "5",
        "--batch",
        "2",
        "--seed",
        "3",
        "--top-k",
        "4",
        "--out",
        &p("a.png"),
        "--tokens-out",
        &p("a.json"),
        "--save-each",
        &p("each"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("5 images"));
    let (ok, _, err) = igpt(&[
        "sample",
        "--model",
        d,
        "--num",
        "5",
        "--batch",
        "2",
        "--seed",
        "3",
        "--top-k",
        "4",
        "--out",
        &p("b.png"),
        "--tokens-out",
        &p("b.json"),
    ]);
    assert!(ok, "{err}");
    let a = json(&std::fs::read_to_string(p("a.json")).unwrap());
    let b = json(&std::fs::read_to_string(p("b.json")).unwrap());
    assert_eq!(a, b, "same seed, same images");
    assert_eq!(a["images"].as_array().unwrap().len(), 5);
    assert_eq!(std::fs::read(p("a.png")).unwrap(), std::fs::read(p("b.png")).unwrap());
    let grid = igpt::tokenizer::RgbImage::open(std::path::Path::new(&p("a.png"))).unwrap();
    assert_eq!((grid.width, grid.height), (3 * 8 * 4 + 4 * 2, 2 * 8 * 4 + 3 * 2)); // 3x2 tiles of 8px x4
    assert_eq!(std::fs::read_dir(p("each")).unwrap().count(), 5);
    // the half-precision KV cache and decoding weights, and precisions that do not exist
    for kv in ["f16", "int8"] {
        let args = ["sample", "--model", d, "--num", "3", "--kv-cache", kv, "--weights", "f16", "--out", &p("h.png")];
        let (ok, out, err) = igpt(&args);
        assert!(ok && out.contains("3 images"), "{kv}: {err}");
    }
    let (ok, _, err) = igpt(&["sample", "--model", d, "--kv-cache", "int4", "--out", &p("x.png")]);
    assert!(!ok && err.contains("use f32, f16 or int8"), "{err}");
    let (ok, _, err) = igpt(&["sample", "--model", d, "--weights", "int8", "--out", &p("x.png")]);
    assert!(!ok && err.contains("use f32, f32-unpacked or f16"), "{err}");

    let img = dir.join("test_image_2.png");
    let (ok, out, err) = igpt(&[
        "complete",
        "--model",
        d,
        "--images",
        img.to_str().unwrap(),
        "--samples",
        "3",
        "--keep-rows",
        "5",
        "--out",
        &p("c.png"),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("3 completions"));
    let grid = igpt::tokenizer::RgbImage::open(std::path::Path::new(&p("c.png"))).unwrap();
    assert_eq!(grid.width, 5 * 8 * 4 + 6 * 2); // kept | 3 samples | original
    // The kept rows of every completion equal the original's (tile 1 vs tile 4, top 5 rows).
    let tile = |k: usize, x: usize, y: usize| {
        let (x0, y0) = (2 + k * (32 + 2) + x, 2 + y);
        grid.data[(y0 * grid.width + x0) * 3..][..3].to_vec()
    };
    for y in 0..5 * 4 {
        for x in 0..32 {
            assert_eq!(tile(1, x, y), tile(4, x, y));
        }
    }
    let (ok, _, err) = igpt(&[
        "complete",
        "--model",
        d,
        "--images",
        img.to_str().unwrap(),
        "--keep-tokens",
        "999",
        "--out",
        &p("d.png"),
    ]);
    assert!(!ok && err.contains("only 64"), "{err}");
}

#[test]
fn complete_from_a_prepared_data_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let toks: Vec<u16> = (0..3 * 64).map(|i| (i % 16) as u16).collect();
    igpt::data::tokens::write(&data.join("test.tokens"), &toks, None, (8, 8), 16).unwrap();
    let out = tmp.path().join("c.png");
    let (ok, stdout, err) = igpt(&[
        "complete",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--count",
        "2",
        "--samples",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("2 images x 2 completions"), "{stdout}");
    let grid = igpt::tokenizer::RgbImage::open(&out).unwrap();
    assert_eq!((grid.width, grid.height), (4 * 32 + 5 * 2, 2 * 32 + 3 * 2));
}

/// A BERT model (objective "bert") end to end: `info` says so, `eval` scores its masked
/// pixels (seeded, stated as such), `sample` and `complete` are refused naming the reason,
/// and `convert` keeps the objective and writes the model card transformers users read.
#[test]
fn bert_models_are_evaluated_as_bert_and_refuse_sampling() {
    let tmp = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/variants/pos2d");
    let dir = tmp.path().join("bert");
    let d = dir.to_str().unwrap();
    let (ok, _, err) = igpt(&["convert", "--model", src.to_str().unwrap(), "--out", d]);
    assert!(ok, "{err}");
    let cfg_path = dir.join("config.json");
    let mut cfg = json(&std::fs::read_to_string(&cfg_path).unwrap());
    cfg["objective"] = "bert".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (ok, out, err) = igpt(&["info", "--model", d, "--json"]);
    assert!(ok, "{err}");
    assert_eq!((json(&out)["objective"].clone(), json(&out)["causal"].clone()), ("bert".into(), false.into()));
    let imgs: Vec<String> =
        (0..3).map(|i| src.join(format!("test_image_{i}.png")).to_string_lossy().into_owned()).collect();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", d, "--json"];
        args.extend_from_slice(extra);
        args.extend(imgs.iter().map(|s| s.as_str()));
        let (ok, out, err) = igpt(&args);
        assert!(ok, "{err}");
        json(&out)
    };
    let (a, b, c) = (eval(&[]), eval(&[]), eval(&["--seed", "3"]));
    assert_eq!((a["objective"].as_str(), a["metric"].as_str()), (Some("bert"), Some("masked_token_nll")));
    let mean = a["mean_nll"].as_f64().unwrap();
    assert!(mean.is_finite() && mean > 0.5 && mean < 5.0, "{a}");
    assert_eq!(a, b, "the same seed masks the same pixels");
    assert_ne!(a["mean_nll"], c["mean_nll"], "another seed masks other pixels");
    let gpt = {
        let mut args = vec!["eval", "--model", src.to_str().unwrap(), "--json"];
        args.extend(imgs.iter().map(|s| s.as_str()));
        json(&igpt(&args).1)
    };
    assert_eq!(gpt["metric"].as_str(), Some("nll"));
    assert_ne!(gpt["mean_nll"], a["mean_nll"]);
    let out = tmp.path().join("s.png");
    for cmd in ["sample", "complete"] {
        let mut args = vec![cmd, "--model", d, "--out", out.to_str().unwrap()];
        if cmd == "complete" {
            args.extend(["--images", &imgs[0]]);
        }
        let (ok, _, err) = igpt(&args);
        assert!(!ok && err.contains("BERT model") && err.contains("--objective gpt"), "{cmd}: {err}");
    }
    // re-saved, the objective stays and the model card explains it
    let again = tmp.path().join("again");
    let (ok, _, err) = igpt(&["convert", "--model", d, "--out", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    let saved = json(&std::fs::read_to_string(again.join("config.json")).unwrap());
    assert_eq!((saved["objective"].as_str(), saved["model_type"].as_str()), (Some("bert"), Some("igpt")));
    assert!(std::fs::read_to_string(again.join("README.md")).unwrap().contains("not a causal model"));
}

/// `eval --data DIR --split S` scores a prepared split: over the whole val split its mean NLL
/// is the validation loss training reported for the same model.
#[test]
fn eval_scores_a_prepared_split() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let (ok, _, err) = igpt(&["prepare", "--data", "emoji32", "--out", d, "--size", "8", "--colors", "16"]);
    assert!(ok, "{err}");
    let args = ["train", "--data", d, "--out", r, "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--steps", "2"];
    let (ok, _, err) = igpt(&[&args[..], &["--eval-every", "2", "--eval-batches", "1000", "--batch", "8"]].concat());
    assert!(ok, "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let val_loss = metrics.lines().map(json).rfind(|v| v["kind"] == "eval").unwrap()["val_loss"].as_f64().unwrap();
    let model = run.join("best");
    let (ok, out, err) = igpt(&["eval", "--model", model.to_str().unwrap(), "--data", d, "--split", "val", "--json"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert!((v["mean_nll"].as_f64().unwrap() - val_loss).abs() < 2e-5, "{} vs {val_loss}", v["mean_nll"]);
    assert!(v["images"].as_array().unwrap().len() > 100);
    let (ok, _, err) = igpt(&["eval", "--model", model.to_str().unwrap(), "--data", d, "--split", "nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
}

/// The quick-experiment flags: `--limit` on prepare (stratified, train and test), probe and
/// finetune; `train --minutes` (the schedule's length measured and recorded); `--json` on
/// sample and complete.
#[test]
fn limit_minutes_and_json_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, r) = (tmp.path().join("d"), tmp.path().join("r"));
    let (d, r) = (d.to_str().unwrap(), r.to_str().unwrap());
    let run = |args: &[&str]| {
        let (ok, out, err) = igpt(args);
        assert!(ok, "igpt {args:?}: {err}");
        out
    };
    let prep = json(&run(&[
        "prepare", "--data", "emoji32", "--out", d, "--size", "8", "--colors", "16", "--limit", "60", "--json",
    ]));
    let counts = &prep["counts"];
    assert_eq!(counts["train"].as_u64().unwrap() + counts["val"].as_u64().unwrap(), 60);
    assert_eq!(counts["test"], 60);
    // stratified: every class of the first 60 keeps its share
    let per_class: Vec<u64> =
        prep["class_counts_train"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(per_class.iter().filter(|&&n| n > 0).count() >= 2, "{per_class:?}");

    let s = json(&run(&[
        "train",
        "--data",
        d,
        "--out",
        r,
        "--minutes",
        "0.1",
        "--batch",
        "4",
        "--eval-every",
        "10",
        "--warmup",
        "5",
        "--json",
    ]));
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{r}/train.json")).unwrap()).unwrap();
    let total = tj["total_steps"].as_u64().expect("--minutes records the schedule's length");
    assert_eq!(s["steps"].as_u64().unwrap(), total);
    assert!(total > 3, "{total}");

    let best = format!("{r}/best");
    let v = json(&run(&["sample", "--model", &best, "--num", "3", "--out", &format!("{r}/s.png"), "--json"]));
    assert_eq!(v["images"], 3);
    assert_eq!(v["tokens"], 3 * 64);
    let v = json(&run(&[
        "complete",
        "--model",
        &best,
        "--data",
        d,
        "--count",
        "2",
        "--samples",
        "2",
        "--out",
        &format!("{r}/c.png"),
        "--json",
    ]));
    assert_eq!((v["images"].as_u64(), v["completions"].as_u64()), (Some(2), Some(2)));
    assert_eq!(v["tokens"][1][1].as_array().unwrap().len(), 64);
    let p = json(&run(&[
        "probe",
        "--model",
        &best,
        "--data",
        d,
        "--out",
        &format!("{r}/p"),
        "--limit",
        "20",
        "--max-iter",
        "20",
        "--json",
    ]));
    let c = p["counts"].as_array().unwrap();
    assert!(c.iter().all(|n| n.as_u64().unwrap() <= 20), "{c:?}");
    let f = json(&run(&[
        "finetune",
        "--model",
        &best,
        "--data",
        d,
        "--out",
        &format!("{r}/ft"),
        "--steps",
        "4",
        "--batch",
        "4",
        "--eval-every",
        "2",
        "--limit",
        "16",
        "--json",
    ]));
    assert_eq!(f["steps"], 4);
}
