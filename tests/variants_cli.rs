//! Every command with every architecture option, end to end through the `igpt` binary on a
//! tiny prepared folder: train (GPT and BERT) and resume, eval, sample, complete, probe,
//! finetune, eval-cls, convert, info and bench; bad flag values are refused naming the field.

mod common;

use std::path::Path;
use std::process::Command;

use igpt::data::tokens;
use igpt::rng::Rng;

fn igpt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_igpt")).args(args).output().expect("run igpt");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = igpt(args);
    assert!(ok, "igpt {}: {err}", args.join(" "));
    out
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// 8x8 images in 2 classes whose colour statistics differ, with the tiny fixture's palette.
fn tiny_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(common::fixture("tiny").join("preprocessor_config.json"), dir.join("preprocessor_config.json"))
        .unwrap();
    let mut rng = Rng::new(3);
    for (name, n) in [("train", 32), ("val", 8), ("test", 8)] {
        let labels: Vec<u16> = (0..n).map(|i| (i % 2) as u16).collect();
        let toks: Vec<u16> = labels
            .iter()
            .flat_map(|&l| (0..64).map(|_| (rng.below(8) + 8 * l as u64) as u16).collect::<Vec<_>>())
            .collect();
        tokens::write(&dir.join(format!("{name}.tokens")), &toks, Some(&labels), (8, 8), 16).unwrap();
    }
    std::fs::write(dir.join("labels.txt"), "low\nhigh\n").unwrap();
}

#[test]
fn every_command_runs_with_every_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    let d = data.to_str().unwrap();
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/variants/local/test_image_0.png");
    let variants: [&[&str]; 4] = [
        &["--attention", "linear", "--position-embedding", "learned_2d"],
        &["--attention", "local_2d", "--local-rows", "2", "--local-cols", "1", "--position-embedding", "learned_2d"],
        &["--position-embedding", "rope_2d", "--rope-theta", "50"],
        &["--attention", "local_2d", "--local-rows", "1", "--local-cols", "2", "--position-embedding", "rope_2d"],
    ];
    for (i, flags) in variants.iter().enumerate() {
        let run = tmp.path().join(format!("run{i}"));
        let r = run.to_str().unwrap();
        let shape = ["--n-layer", "2", "--n-embd", "32", "--n-head", "4", "--batch", "4", "--eval-every", "4"];
        let mut args = vec!["train", "--data", d, "--out", r, "--steps", "8", "--json"];
        args.extend(shape);
        args.extend(*flags);
        let mut first = args.clone();
        first.extend(["--stop-after", "4"]);
        ok(&first);
        // resume to the end with the same flags
        let mut resume = args.clone();
        resume.push("--resume");
        let summary = json(&ok(&resume));
        assert!(summary["best_val_loss"].as_f64().unwrap().is_finite(), "{summary}");
        let best = run.join("best");
        let b = best.to_str().unwrap();
        let info = json(&ok(&["info", "--model", b, "--json"]));
        let want = |flag: &str| flags.iter().position(|f| *f == flag).map(|i| flags[i + 1]);
        assert_eq!(info["attention"], want("--attention").unwrap_or("dense"), "{info}");
        assert_eq!(info["position_embedding"], want("--position-embedding").unwrap(), "{info}");
        let saved = json(&std::fs::read_to_string(best.join("config.json")).unwrap());
        assert_eq!(saved["model_type"], "igpt");
        // BERT objective on the same options
        let bert = tmp.path().join(format!("bert{i}"));
        let mut bargs =
            vec!["train", "--data", d, "--out", bert.to_str().unwrap(), "--steps", "3", "--objective", "bert"];
        bargs.extend(shape);
        bargs.extend(*flags);
        ok(&bargs);
        let e = json(&ok(&["eval", "--model", b, "--json", img.to_str().unwrap()]));
        assert!(e["mean_nll"].as_f64().unwrap() > 0.0);
        let p = |f: &str| tmp.path().join(format!("{i}-{f}")).to_string_lossy().into_owned();
        ok(&["sample", "--model", b, "--num", "2", "--out", &p("s.png")]);
        ok(&["complete", "--model", b, "--data", d, "--count", "2", "--samples", "1", "--out", &p("c.png")]);
        let probe =
            json(&ok(&["probe", "--model", b, "--data", d, "--out", &p("probe"), "--max-iter", "20", "--json"]));
        assert_eq!(probe["layers"].as_array().unwrap().len(), 3, "{probe}");
        ok(&["finetune", "--model", b, "--data", d, "--out", &p("ft"), "--steps", "4", "--eval-every", "2"]);
        let acc = json(&ok(&["eval-cls", "--model", &p("ft/best"), "--data", d, "--json"]));
        assert!(acc["accuracy"].as_f64().is_some(), "{acc}");
        ok(&["convert", "--model", b, "--out", &p("conv")]);
        assert!(Path::new(&p("conv")).join("modeling_igpt.py").exists());
        let mut bench = vec!["bench", "sample", "--n-embd", "32", "--n-layer", "1", "--n-head", "4", "--side", "8"];
        bench.extend(["--colors", "16", "--batch", "2", "--json"]);
        bench.extend(flags.iter().filter(|f| **f != "--rope-theta" && **f != "50"));
        let v = json(&ok(&bench));
        assert_eq!(v["attention"], want("--attention").unwrap_or("dense"));
        bench[1] = "train";
        ok(&bench);
    }
}

#[test]
fn bad_variant_flags_are_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    tiny_data(&data);
    let d = data.to_str().unwrap();
    let r = tmp.path().join("run");
    let r = r.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--data", d, "--out", r, "--steps", "1", "--n-layer", "1", "--n-embd", "32"];
        a.extend(extra);
        igpt(&a)
    };
    let (okk, _, err) = train(&["--n-head", "16", "--position-embedding", "rope_2d"]);
    assert!(!okk && err.contains("rope_2d needs a head size divisible by 4"), "{err}");
    let (okk, _, err) = train(&["--attention", "local_2d", "--local-rows", "-2"]);
    assert!(!okk && err.contains("local_rows must be >= 0"), "{err}");
    let (okk, _, err) = train(&["--attention", "sparse"]);
    assert!(!okk && err.contains("unknown attention `sparse`"), "{err}");
    let (okk, _, err) = train(&["--position-embedding", "learned_3d"]);
    assert!(!okk && err.contains("learned_1d, learned_2d or rope_2d"), "{err}");
    let (okk, _, err) = train(&["--position-embedding", "rope_2d", "--rope-theta", "-1"]);
    assert!(!okk && err.contains("rope_theta must be a finite number > 0"), "{err}");
}

/// A local model trains, samples and completes at 64x64 (4,096 tokens per image).
#[test]
fn a_local_model_trains_samples_and_completes_at_64x64() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut proc = json(&std::fs::read_to_string(common::fixture("tiny").join("preprocessor_config.json")).unwrap());
    proc["size"] = serde_json::json!({"height": 64, "width": 64});
    std::fs::write(data.join("preprocessor_config.json"), proc.to_string()).unwrap();
    let mut rng = Rng::new(5);
    for (name, n) in [("train", 4), ("val", 2), ("test", 2)] {
        // smooth-ish images: runs of one colour along each row
        let toks: Vec<u16> = (0..n * 4096).map(|i| ((i / 8 + rng.below(2) as usize) % 16) as u16).collect();
        tokens::write(&data.join(format!("{name}.tokens")), &toks, None, (64, 64), 16).unwrap();
    }
    let (d, run) = (data.to_str().unwrap(), tmp.path().join("run"));
    let r = run.to_str().unwrap();
    let args = ["train", "--data", d, "--out", r, "--steps", "2", "--batch", "2", "--n-layer", "1", "--n-embd", "16"];
    let mut args = args.to_vec();
    args.extend(["--n-head", "2", "--attention", "local_2d", "--local-rows", "2", "--local-cols", "2", "--json"]);
    let s = json(&ok(&args));
    assert!(s["best_val_loss"].as_f64().unwrap().is_finite(), "{s}");
    let b = run.join("best");
    let info = json(&ok(&["info", "--model", b.to_str().unwrap(), "--json"]));
    assert_eq!((info["n_positions"].as_u64(), info["grid_width"].as_u64()), (Some(4096), Some(64)));
    let out = tmp.path().join("s.png");
    ok(&["sample", "--model", b.to_str().unwrap(), "--num", "1", "--scale", "1", "--out", out.to_str().unwrap()]);
    let grid = igpt::tokenizer::RgbImage::open(&out).unwrap();
    assert!(grid.width >= 64 && grid.height >= 64, "{}x{}", grid.width, grid.height);
    let c = tmp.path().join("c.png");
    let cargs = ["complete", "--model", b.to_str().unwrap(), "--data", d, "--count", "1", "--samples", "1"];
    let mut cargs = cargs.to_vec();
    cargs.extend(["--scale", "1", "--out", c.to_str().unwrap()]);
    ok(&cargs);
    assert!(c.exists());
}
