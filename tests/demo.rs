//! `igpt demo` end to end with a tiny budget on a handful of emoji32 images: every artefact
//! of the report exists and the report links them.

#[test]
fn demo_writes_every_artefact_of_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_igpt"))
        .args([
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--minutes",
            "0.1",
            "--max-images",
            "48",
            "--colors",
            "16",
            "--n-layer",
            "2",
            "--n-embd",
            "32",
            "--n-head",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(stdout.contains("report:") && stdout.contains("report.html"), "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for f in ["palette.png", "data/preview.png", "train/loss.png", "samples.png", "completions.png", "probe/probe.png"]
    {
        assert!(out.join(f).exists(), "{f} missing");
        assert!(html.contains(&format!("src=\"{f}\"")), "report does not show {f}");
    }
    for f in [
        "data/prepare.json",
        "train/metrics.jsonl",
        "train/best/model.safetensors",
        "probe/probe.json",
        "finetune/best/model.safetensors",
        "demo.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    for cmd in ["igpt prepare", "igpt train", "igpt sample", "igpt complete", "igpt probe", "igpt finetune"] {
        assert!(html.contains(cmd), "report lacks the command {cmd}");
    }
    // honest and copy-pasteable: the claim is made on the split the layer was chosen on, one
    // unit, absolute paths, no placeholders
    let demo_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    let (best_val, base_val) = (
        demo_json["probe"]["best_val_acc"].as_f64().unwrap(),
        demo_json["probe"]["baseline"]["val_acc"].as_f64().unwrap(),
    );
    let verdict = if best_val > base_val { "beats" } else { "does not beat" };
    assert!(html.contains(&format!("chosen on validation) {verdict} the raw-pixel baseline on validation")), "{html}");
    assert!(!html.contains("nats/token") && html.contains("bits/token"));
    let abs = std::fs::canonicalize(&out).unwrap();
    assert!(html.contains(&format!("igpt train --data {}/data", abs.display())), "commands use absolute paths");
    assert!(!html.contains("IMG...") && !html.contains("--out samples.png"));
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    assert!(demo["test_nll_bits"].as_f64().unwrap().is_finite());
    assert_eq!(demo["probe"]["layers"].as_array().unwrap().len(), 3);
}
