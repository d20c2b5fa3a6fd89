//! The demo's report.html: one page with every stage's picture, numbers and the command
//! that reproduces it.

use std::path::Path;

use super::{DemoConfig, DemoSummary};
use crate::error::Result;
use crate::model::ImageGpt;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub(super) fn write_report(path: &Path, cfg: &DemoConfig, s: &DemoSummary, model: &ImageGpt) -> Result<()> {
    // absolute paths, so that every command runs from any folder
    let out = std::fs::canonicalize(&cfg.out).unwrap_or_else(|_| cfg.out.clone());
    let o = esc(&out.display().to_string());
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let p = &s.prepare;
    let mut probe_rows = String::new();
    for r in &s.probe.layers {
        let best = if r.layer == Some(s.probe.best_layer) { " class=\"best\"" } else { "" };
        probe_rows += &format!(
            "<tr{best}><td>{}</td><td>{:.0e}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            r.layer.unwrap_or(0),
            r.lambda,
            pct(Some(r.train_acc)),
            pct(Some(r.val_acc)),
            pct(r.test_acc)
        );
    }
    let b = &s.probe.baseline;
    probe_rows += &format!(
        "<tr class=\"base\"><td>raw pixels</td><td>{:.0e}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        b.lambda,
        pct(Some(b.train_acc)),
        pct(Some(b.val_acc)),
        pct(b.test_acc)
    );
    let timings: String = s.timings.iter().map(|(n, t)| format!("<tr><td>{n}</td><td>{t:.1} s</td></tr>")).collect();
    let m = &model.config;
    let t = &s.train;
    // the layer is chosen on val, so the claim is made on val; test is shown beside it
    let beats = s.probe.best_val_acc > b.val_acc;
    let headline = format!(
        "The best probe layer (layer {}, chosen on validation) {} the raw-pixel baseline on validation ({} vs {}); on test: {} vs {}.",
        s.probe.best_layer,
        if beats { "beats" } else { "does not beat" },
        pct(Some(s.probe.best_val_acc)),
        pct(Some(b.val_acc)),
        pct(s.probe.best_test_acc),
        pct(b.test_acc)
    );
    let bits = |nats: f64| nats / std::f64::consts::LN_2;
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>igpt demo report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}} img{{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}}
table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}} tr.best{{background:#e8f0ff;font-weight:bold}} tr.base{{color:#666}}
code,pre{{background:#f5f5f5;padding:2px 4px}} h2{{margin-top:1.6em}}</style></head><body>
<h1>igpt demo: ImageGPT on {data}</h1>
<p>A {nl}-layer, {ne}-wide, {nh}-head ImageGPT ({np} parameters) trained from scratch for {steps} steps on {ntr} images of {data}
({h}x{w} pixels, {k} colours), on this machine's CPU. Best validation loss {bv} bits/token; test NLL {tn:.3} bits/token.
{headline}</p>
<h2>1. Palette and tokens</h2>
<p>k-means in [-1, 1] RGB space: {k} colours fitted in {pfs:.1} s ({pit} iterations); inertia {pin:.6} per pixel; PSNR of quantised images {psnr:.2} dB.
Images: {ntr} train / {nva} val / {nte} test.</p>
<img src="palette.png" alt="palette"><p>Originals (left of each pair) and their quantised versions:</p><img src="data/preview.png" alt="preview">
<pre>igpt prepare --data {data} --out {o}/data --size {h} --colors {k} --seed {seed}</pre>
<h2>2. Training</h2>
<p>GPT objective, AdamW (0.9, 0.95), lr 3e-3 with warm-up and cosine decay, batch 8. Final train loss {ftl:.3} bits/token; best val {bv} bits/token (bits = nats / ln 2).
Train (blue, raw and smoothed) and validation (orange) loss in bits/token:</p><img src="train/loss.png" alt="loss curves">
<pre>igpt train --data {o}/data --out {o}/train --n-layer {nl} --n-embd {ne} --n-head {nh} --steps {steps} --batch 8 --lr 3e-3 --min-lr 3e-4 --warmup {wu} --eval-every {ee} --log-every {le} --eval-batches 8 --keep 1 --seed {seed}</pre>
<h2>3. Samples</h2><img src="samples.png" alt="samples">
<pre>igpt sample --model {o}/train/best --num 16 --seed {seed} --out {o}/samples.png</pre>
<h2>4. Completions of held-out test images</h2><p>Per row: the kept top half (rest greyed), three completions, the original.</p><img src="completions.png" alt="completions">
<pre>igpt complete --model {o}/train/best --data {o}/data --count 8 --samples 3 --seed {seed} --out {o}/completions.png</pre>
<h2>5. Linear probes</h2><p>Logistic regression on each layer's mean-pooled, normalised features ({norm}). Accuracy per layer: validation (blue; the layer and &lambda; are chosen on it), test (green), the raw-pixel baseline's validation and test accuracy (dashed).</p>
<table><tr><th>layer</th><th>&lambda;</th><th>train</th><th>val</th><th>test</th></tr>
{probe_rows}</table><img src="probe/probe.png" alt="probe accuracy per layer">
<pre>igpt probe --model {o}/train/best --data {o}/data --out {o}/probe</pre>
<h2>6. Fine-tuning</h2><p>Generative + classification loss, {fts} steps: best validation accuracy {fva}, test accuracy {fta}.</p>
<pre>igpt finetune --model {o}/train/best --data {o}/data --out {o}/finetune --steps {fts} --batch 8 --lr 1e-3 --min-lr 1e-4 --warmup {fwu} --eval-every {fee} --patience 4 --seed {seed}
igpt eval-cls --model {o}/finetune/best --data {o}/data</pre>
<h2>Timings</h2><table>{timings}</table>
<p>Everything above: <code>igpt demo --out {o} --minutes {min}</code> (the budget covers the whole run: {total:.0} s here)</p>
</body></html>"#,
        data = esc(&p.data),
        nl = m.n_layer,
        ne = m.n_embd,
        nh = m.n_head,
        np = model.params.len(),
        steps = t.steps,
        wu = (t.steps / 20).clamp(1, 200),
        ee = (t.steps / 10).max(1),
        le = (t.steps / 50).max(1),
        fwu = (s.finetune.steps / 10).max(1),
        fee = (s.finetune.steps / 4).max(1),
        ntr = p.counts.train,
        nva = p.counts.val,
        nte = p.counts.test,
        h = p.size,
        w = p.size,
        k = p.colors,
        bv = t.best_val_loss.map_or("-".into(), |v| format!("{:.3}", v / std::f64::consts::LN_2)),
        tn = s.test_nll_bits,
        headline = esc(&headline),
        pfs = p.palette_fit_s,
        pit = p.palette_iterations,
        pin = p.palette_inertia_per_pixel,
        psnr = p.psnr_db,
        seed = cfg.seed,
        ftl = bits(t.final_train_loss),
        norm = esc(&s.probe.norm),
        fts = s.finetune.steps,
        fva = pct(Some(s.finetune.best_val_acc)),
        fta = pct(s.finetune.test_acc),
        min = cfg.minutes,
        total = s.timings.iter().map(|t| t.1).sum::<f64>(),
    );
    crate::formats::write_atomic(path, html.as_bytes())
}
