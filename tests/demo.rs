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
    check_in_a_browser(&out.join("report.html"));
}

/// Renders the report in headless Chromium (Debian's `chromium`, which `.ci/run` installs):
/// every image has loaded (natural width > 0) and nothing was reported as an error.
fn check_in_a_browser(report: &std::path::Path) {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(browser) = browser else {
        assert!(
            std::env::var_os("IGPT_SKIP_BROWSER").is_some(),
            "headless Chromium checks the report: install it (`apt-get install chromium`) or set IGPT_SKIP_BROWSER=1"
        );
        return;
    };
    // a copy of the report that records, once loaded, its images and every error event
    let probe = r#"<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(e.message || ('failed to load ' + (e.target.src || e.target.href))), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, bad: bad, errors: window.__errors}));
});
</script>"#;
    let html = std::fs::read_to_string(report).unwrap();
    let at = html.find("<head>").map_or(0, |i| i + "<head>".len());
    let checked = report.with_file_name("report-check.html");
    std::fs::write(&checked, format!("{}{probe}{}", &html[..at], &html[at..])).unwrap();
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", checked.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("data-check=\"").unwrap_or_else(|| panic!("the report did not finish loading: {dom:.500}"));
    let raw = &dom[start + "data-check=\"".len()..];
    let raw = raw[..raw.find('"').unwrap()].replace("&quot;", "\"").replace("&amp;", "&");
    let check: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert!(check["images"].as_u64().unwrap() >= 6, "{check}");
    assert_eq!(check["bad"].as_array().unwrap().len(), 0, "images that did not load: {check}");
    assert_eq!(check["errors"].as_array().unwrap().len(), 0, "errors: {check}");
    let console_errors: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains("CONSOLE") && l.contains("ERROR"))
        .collect();
    assert!(console_errors.is_empty(), "{console_errors:?}");
}
