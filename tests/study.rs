//! The architecture study end to end at a tiny scale: `tools/architecture_study.sh` trains two
//! emoji32 variants (100 images at 16x16, 20 steps), evaluates, probes, samples and benchmarks them, and
//! `igpt study` writes the table, architectures.json and the charts; a second pass of the
//! script finds everything done and changes nothing.

use std::process::Command;

#[test]
fn the_study_script_runs_resumes_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (runs, report) = (tmp.path().join("runs"), tmp.path().join("report"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/architecture_study.sh");
    let study = || {
        let out = Command::new("bash")
            .arg(script)
            .args(["emoji32", "bench", "report"])
            .env("IGPT", env!("CARGO_BIN_EXE_igpt"))
            .env("OUT", &runs)
            .env("REPORT", &report)
            .env("LIMIT", "100")
            .env("SIDE32", "16")
            .env("STEPS32", "20")
            .env("LAYERS", "2")
            .env("EMBD", "32")
            .env("HEADS", "2")
            .env("LOG_EVERY", "2")
            .env("E32", "dense+learned_1d local_2d+learned_2d")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    study();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("architectures.json")).unwrap()).unwrap();
    let runs_json = json["runs"].as_array().unwrap();
    assert_eq!(runs_json.len(), 2);
    for r in runs_json {
        assert_eq!(r["dataset"], "emoji32");
        assert_eq!(r["side"], 16);
        for key in [
            "parameters",
            "train_tokens",
            "best_val_bits_per_token",
            "test_bits_per_token",
            "bench_train_tokens_per_s",
            "bench_sample_tokens_per_s",
            "bench_sample_peak_rss_mb",
            "bench_train_peak_rss_mb",
            "train_wall_clock_s",
            "train_median_tokens_per_s",
            "probe_best_val_acc",
            "probe_concat_val_acc",
            "pixels_val_acc",
        ] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{key}: {r}");
        }
        assert_eq!(r["train_tokens"], 20 * 8 * 256);
        assert_eq!(r["val_curve_seconds"].as_array().unwrap().len(), 10, "{r}");
    }
    assert_eq!(
        (runs_json[0]["attention"].as_str(), runs_json[1]["attention"].as_str()),
        (Some("dense"), Some("local_2d"))
    );
    assert_eq!(runs_json[1]["position_embedding"], "learned_2d");
    let md = std::fs::read_to_string(report.join("architectures.md")).unwrap();
    assert!(md.contains("| local_2d+learned_2d |") && md.contains("val_bits_emoji32.png"));
    // the comparison with the paper's variant: the second row of local_2d+learned_2d
    let row = md.lines().filter(|l| l.starts_with("| local_2d+learned_2d |")).nth(1).expect("a comparison row");
    let bits = |i: usize| runs_json[i]["test_bits_per_token"].as_f64().unwrap();
    let speed = |i: usize| runs_json[i]["bench_train_tokens_per_s"].as_f64().unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[2], format!("{:+.3}", bits(1) - bits(0)), "{row}");
    assert_eq!(cells[5], format!("{:.2}x", speed(1) / speed(0)), "{row}");
    for f in [
        "val_bits_emoji32.png",
        "val_bits_time_emoji32.png",
        "probe_emoji32.png",
        "samples_emoji32_dense_learned_1d.png",
        "samples_emoji32.png",
    ] {
        assert!(report.join(f).exists(), "{f}");
    }
    // resumable: a second pass trains nothing again
    let stamp = std::fs::metadata(runs.join("emoji32/dense+learned_1d/train.json")).unwrap().modified().unwrap();
    study();
    assert_eq!(std::fs::metadata(runs.join("emoji32/dense+learned_1d/train.json")).unwrap().modified().unwrap(), stamp);
}
