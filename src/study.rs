//! The architecture study's report (`igpt study`, issue #15): reads the runs that
//! `tools/architecture_study.sh` made under RUNS/<dataset>/<variant>/ and writes
//! architectures.json (`{"runs": [...]}`), architectures.md (a table per data set, every
//! variant against the paper's dense+learned_1d, and the resolution table) and the pictures:
//! validation bits/token against training tokens and against training time for every variant
//! of a data set, probe accuracy per layer per variant, and one sheet of every variant's
//! samples. A run still missing a stage has those cells empty.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::config::ImageGptConfig;
use crate::error::{Error, Result};
use crate::model::{ModelKind, ParamLayout};
use crate::plot::{Chart, HLine, Series, Style};
use crate::tokenizer::RgbImage;

/// One variant on one data set, as far as it has run.
#[derive(Clone, Debug, Serialize)]
pub struct StudyRun {
    pub dataset: String,
    pub variant: String,
    pub side: Option<usize>,
    pub attention: Option<String>,
    pub position_embedding: Option<String>,
    pub parameters: Option<usize>,
    pub train_steps: Option<u64>,
    pub train_tokens: Option<u64>,
    /// Seconds of training summed over its chunks (each `--resume` restarts the clock), to
    /// the last logged step of each.
    pub train_wall_clock_s: Option<f64>,
    /// The median of the logged training rates (robust to a chunk slowed by other work).
    pub train_median_tokens_per_s: Option<f64>,
    pub best_val_bits_per_token: Option<f64>,
    pub test_bits_per_token: Option<f64>,
    pub bench_train_tokens_per_s: Option<f64>,
    pub bench_sample_tokens_per_s: Option<f64>,
    pub bench_sample_peak_rss_mb: Option<f64>,
    pub bench_train_peak_rss_mb: Option<f64>,
    pub probe_best_layer: Option<u64>,
    pub probe_best_val_acc: Option<f64>,
    pub probe_best_test_acc: Option<f64>,
    pub probe_concat_val_acc: Option<f64>,
    pub probe_concat_test_acc: Option<f64>,
    pub pixels_val_acc: Option<f64>,
    pub pixels_test_acc: Option<f64>,
    /// The probe's (train, val, test) images.
    pub probe_images: Option<(u64, u64, u64)>,
    /// (training tokens, validation bits/token) at every evaluation.
    pub val_curve: Vec<(f64, f64)>,
    /// (training seconds, validation bits/token): the same evaluations against the clock.
    pub val_curve_seconds: Vec<(f64, f64)>,
    /// (layer, validation accuracy) of every probed layer.
    pub probe_layers: Vec<(f64, f64)>,
    pub samples_png: Option<PathBuf>,
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

/// What exists of one run folder.
pub fn read_run(dir: &Path, dataset: &str, variant: &str) -> StudyRun {
    let train = read_json(&dir.join("train.json"));
    let cfg = read_json(&dir.join("train/train.json"))
        .and_then(|v| serde_json::from_value::<ImageGptConfig>(v["model"].clone()).ok());
    let (test, probe) = (read_json(&dir.join("test.json")), read_json(&dir.join("probe/probe.json")));
    let (bt, bs) = (read_json(&dir.join("bench_train.json")), read_json(&dir.join("bench_sample.json")));
    let f = |v: &Option<Value>, path: &[&str]| {
        let mut x = v.as_ref()?;
        for k in path {
            x = x.get(*k)?;
        }
        x.as_f64()
    };
    let bits = |nats: Option<f64>| nats.map(|n| n / std::f64::consts::LN_2);
    let metrics: Vec<Value> = std::fs::read_to_string(dir.join("train/metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let (mut curve, mut last_tokens) = (Vec::new(), None);
    for v in &metrics {
        last_tokens = v["tokens"].as_u64().or(last_tokens);
        if v["kind"] == "eval" {
            curve.push((v["tokens"].as_f64().unwrap_or(0.0), v["val_bits"].as_f64().unwrap_or(f64::NAN)));
        }
    }
    let mut time = TrainTime::of(&metrics);
    let probe_layers = probe
        .as_ref()
        .and_then(|p| p["layers"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| Some((l["layer"].as_f64()?, l["val_acc"].as_f64()?)))
        .collect();
    StudyRun {
        dataset: dataset.into(),
        variant: variant.into(),
        side: cfg.as_ref().map(|c| c.width()),
        attention: cfg.as_ref().map(|c| c.attention.name().to_string()),
        position_embedding: cfg.as_ref().map(|c| c.position_embedding.name().to_string()),
        parameters: cfg.as_ref().map(|c| ParamLayout::new(c, ModelKind::CausalLm).total),
        train_steps: train.as_ref().and_then(|t| t["steps"].as_u64()),
        train_tokens: train.as_ref().and(last_tokens),
        train_wall_clock_s: train.as_ref().and(time.wall_clock_s),
        train_median_tokens_per_s: train.as_ref().and(time.median_tok_s),
        best_val_bits_per_token: bits(f(&train, &["best_val_loss"])),
        test_bits_per_token: f(&test, &["bits_per_token"]),
        bench_train_tokens_per_s: f(&bt, &["tok_s"]),
        bench_sample_tokens_per_s: f(&bs, &["tok_s"]),
        bench_sample_peak_rss_mb: f(&bs, &["peak_rss_mb"]),
        bench_train_peak_rss_mb: f(&bt, &["peak_rss_mb"]),
        probe_best_layer: probe.as_ref().and_then(|p| p["best_layer"].as_u64()),
        probe_best_val_acc: f(&probe, &["best_val_acc"]),
        probe_best_test_acc: f(&probe, &["best_test_acc"]),
        probe_concat_val_acc: f(&probe, &["concat", "result", "val_acc"]),
        probe_concat_test_acc: f(&probe, &["concat", "result", "test_acc"]),
        pixels_val_acc: f(&probe, &["baseline", "val_acc"]),
        pixels_test_acc: f(&probe, &["baseline", "test_acc"]),
        probe_images: probe.as_ref().and_then(|p| {
            let c = p["counts"].as_array()?;
            Some((c.first()?.as_u64()?, c.get(1)?.as_u64()?, c.get(2)?.as_u64()?))
        }),
        val_curve: curve,
        val_curve_seconds: std::mem::take(&mut time.val_curve),
        probe_layers,
        samples_png: Some(dir.join("samples.png")).filter(|p| p.exists()),
    }
}

/// A run's training time from its metrics log (train records carry `elapsed_s` since their
/// process started and `tok_s` since the record before).
#[derive(Debug, Default, PartialEq)]
struct TrainTime {
    wall_clock_s: Option<f64>,
    median_tok_s: Option<f64>,
    /// (training seconds, validation bits/token) at every evaluation after a logged step.
    val_curve: Vec<(f64, f64)>,
}

impl TrainTime {
    fn of(metrics: &[Value]) -> Self {
        let train = || metrics.iter().filter(|v| v["kind"] == "train");
        let (mut total, mut last) = (0.0, None::<f64>);
        let mut val_curve = Vec::new();
        for v in metrics {
            if let Some(e) = v["elapsed_s"].as_f64().filter(|_| v["kind"] == "train") {
                // a clock that went back: the previous chunk ended at `last`
                if let Some(l) = last.filter(|&l| e < l) {
                    total += l;
                }
                last = Some(e);
            } else if let (Some(l), Some(bits)) = (last, v["val_bits"].as_f64().filter(|_| v["kind"] == "eval")) {
                val_curve.push((total + l, bits));
            }
        }
        let mut rates: Vec<f64> = train().filter_map(|v| v["tok_s"].as_f64()).collect();
        rates.sort_by(f64::total_cmp);
        let median = (!rates.is_empty()).then(|| {
            let h = rates.len() / 2;
            if rates.len() % 2 == 1 { rates[h] } else { 0.5 * (rates[h - 1] + rates[h]) }
        });
        Self { wall_clock_s: last.map(|l| total + l), median_tok_s: median, val_curve }
    }
}

/// Every run under `runs` (RUNS/<dataset>/<variant>/, `data/` excluded), sorted.
pub fn collect(runs: &Path) -> Result<Vec<StudyRun>> {
    let dirs = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    };
    if !runs.is_dir() {
        return Err(Error::Invalid(format!(
            "--runs {}: no such folder; run tools/architecture_study.sh first",
            runs.display()
        )));
    }
    let mut out = Vec::new();
    for ds in dirs(runs).into_iter().filter(|d| d.file_name().is_some_and(|n| n != "data")) {
        let name = ds.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for v in dirs(&ds) {
            let variant = v.file_name().unwrap_or_default().to_string_lossy().into_owned();
            out.push(read_run(&v, &name, &variant));
        }
    }
    Ok(out)
}

const COLORS: [[u8; 3]; 8] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
];

/// Writes architectures.json, architectures.md and the charts into `out`.
pub fn write_report(runs: &[StudyRun], out: &Path, budget: &str) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = serde_json::to_string_pretty(&serde_json::json!({"budget": budget, "runs": runs}))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&out.join("architectures.json"), json.as_bytes())?;
    let mut md = format!("# Architecture study\n\n{budget}\n\n{COLUMNS}\n");
    let mut datasets: Vec<&str> = runs.iter().map(|r| r.dataset.as_str()).collect();
    datasets.dedup();
    for ds in datasets {
        let rs: Vec<&StudyRun> = runs.iter().filter(|r| r.dataset == ds).collect();
        md += &table(ds, &rs);
        md += &probe_noise(&rs);
        md += &against_baseline(&rs);
        md += &charts(ds, &rs, out)?;
        md += &samples(ds, &rs, out)?;
    }
    md += &resolution(runs);
    crate::formats::write_atomic(&out.join("architectures.md"), md.as_bytes())
}

/// The resolution question: the runs on emoji64's images at 64x64 and those at 32x32, in
/// one table (markdown; empty until both sides have a run).
fn resolution(runs: &[StudyRun]) -> String {
    let side = |ds: &str| runs.iter().filter(|r| r.dataset == ds).collect::<Vec<_>>();
    let (hi, lo) = (side("emoji64"), side("emoji64-at-32"));
    if hi.is_empty() || lo.is_empty() {
        return String::new();
    }
    let mut s = "\n## Resolution: the same images at 64x64 and at 32x32\n\n\
        The same images and the same training tokens (at 64x64: a quarter of the steps); bits/token \
        are per pixel at each resolution and do not compare across them.\n\n\
        | variant | side | probe val / test % | concat val / test % | pixels val / test % | wall-clock (s) | sample tok/s |\n\
        |---|---|---|---|---|---|---|\n"
        .to_string();
    for r in hi.into_iter().chain(lo) {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.variant,
            r.side.map_or("-".into(), |x| x.to_string()),
            probe_cells(r),
            num(r.train_wall_clock_s, 0),
            num(r.bench_sample_tokens_per_s, 0),
        );
    }
    s
}

/// A data set's charts: validation bits/token against tokens and against time, probe
/// accuracy per layer (the raw-pixel baseline as a line); returns their markdown.
fn charts(ds: &str, rs: &[&StudyRun], out: &Path) -> Result<String> {
    type Points = fn(&StudyRun) -> Vec<(f64, f64)>;
    let val_bits = "validation loss (bits/token)";
    let specs: [(&str, String, &str, &str, Points); 3] = [
        (
            "val_bits",
            format!("{ds}: validation loss against training tokens"),
            "training tokens (millions)",
            val_bits,
            |r| r.val_curve.iter().map(|&(t, b)| (t / 1e6, b)).collect(),
        ),
        (
            "val_bits_time",
            format!("{ds}: validation loss against training time"),
            "training time (minutes, 2 CPU cores)",
            val_bits,
            |r| r.val_curve_seconds.iter().map(|&(s, b)| (s / 60.0, b)).collect(),
        ),
        (
            "probe",
            format!("{ds}: linear probe accuracy per layer"),
            "layer (0 = embeddings)",
            "validation accuracy (%)",
            |r| r.probe_layers.iter().map(|&(l, a)| (l, 100.0 * a)).collect(),
        ),
    ];
    let mut md = String::new();
    for (stem, title, x_label, y_label, points) in specs {
        let series: Vec<Series> = rs
            .iter()
            .enumerate()
            .filter(|(_, r)| !points(r).is_empty())
            .map(|(i, r)| Series::new(r.variant.clone(), points(r), COLORS[i % COLORS.len()], Style::Markers))
            .collect();
        if series.is_empty() {
            continue;
        }
        let probe = stem == "probe";
        let pixels = rs.iter().find_map(|r| r.pixels_val_acc).filter(|_| probe);
        let c = Chart {
            title: title.clone(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series,
            hlines: pixels
                .map(|a| HLine { label: "raw pixels".into(), y: 100.0 * a, color: [0, 0, 0] })
                .into_iter()
                .collect(),
            integer_x: probe,
            ..Default::default()
        };
        c.save(&out.join(format!("{stem}_{ds}")), 820, 480)?;
        md += &format!("\n![{title}]({stem}_{ds}.png)\n");
    }
    Ok(md)
}

/// Every variant's sample grid, copied as samples_DS_VARIANT.png, and side by side under
/// their names in samples_DS.png (grids wider than 300 pixels at half size); returns their
/// markdown.
fn samples(ds: &str, rs: &[&StudyRun], out: &Path) -> Result<String> {
    let (mut cells, mut links) = (Vec::new(), Vec::new());
    for r in rs {
        let Some(src) = &r.samples_png else { continue };
        let name = format!("samples_{ds}_{}.png", r.variant.replace('+', "_"));
        std::fs::copy(src, out.join(&name)).map_err(|e| Error::io(src, e))?;
        let img = RgbImage::open(src)?;
        let img = if img.width > 300 { crate::viz::shrink(&img, 2) } else { img };
        cells.push((r.variant.clone(), img));
        links.push(format!("[{}]({name})", r.variant));
    }
    if cells.is_empty() {
        return Ok(String::new());
    }
    let sheet = format!("samples_{ds}.png");
    crate::plot::captioned_sheet(&format!("{ds}: samples of every variant (temperature 1)"), &cells, 4)?
        .save_png(&out.join(&sheet))?;
    Ok(format!("\n![samples, {ds}]({sheet})\n\nEach grid at full size: {}.\n", links.join(", ")))
}

/// How far apart two probe accuracies must be to mean something: the binomial standard
/// error sqrt(p (1 - p) / n) of the val and test splits at the runs' median test accuracy.
fn probe_noise(rs: &[&StudyRun]) -> String {
    let Some((_, nv, nt)) = rs.iter().find_map(|r| r.probe_images) else { return String::new() };
    let mut acc: Vec<f64> = rs.iter().filter_map(|r| r.probe_best_test_acc).collect();
    acc.sort_by(f64::total_cmp);
    let p = acc.get(acc.len() / 2).copied().unwrap_or(0.5);
    let se = |n: u64| 100.0 * (p * (1.0 - p) / n.max(1) as f64).sqrt();
    format!(
        "\nProbe accuracies are on {nv} val and {nt} test images: at {:.0}% their standard errors are \
         {:.1} and {:.1} points, so differences of a few points between variants are within the noise.\n",
        100.0 * p,
        se(nv),
        se(nt)
    )
}

/// The paper's variant, the one every other is compared with.
const BASELINE: &str = "dense+learned_1d";

/// Each variant against the data set's dense+learned_1d run (markdown; empty without
/// one): test bits/token and probe accuracy as differences, speeds and memory as ratios.
fn against_baseline(rs: &[&StudyRun]) -> String {
    let Some(base) = rs.iter().find(|r| r.variant == BASELINE) else { return String::new() };
    let diff = |a: Option<f64>, b: Option<f64>, scale: f64, d: usize| {
        a.zip(b).map_or("-".to_string(), |(a, b)| format!("{:+.d$}", scale * (a - b)))
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("-".to_string(), |(a, b)| format!("{:.2}x", a / b));
    let mut s = format!(
        "\nAgainst {BASELINE} (the paper's): test bits/token and probe accuracy (points) as differences \
         (negative bits are better), speeds and memory as ratios (above 1: faster, or more memory).\n\n\
         | variant | test bits | probe test | concat test | train tok/s | sample tok/s | train peak MB |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rs.iter().filter(|r| r.variant != BASELINE) {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.variant,
            diff(r.test_bits_per_token, base.test_bits_per_token, 1.0, 3),
            diff(r.probe_best_test_acc, base.probe_best_test_acc, 100.0, 1),
            diff(r.probe_concat_test_acc, base.probe_concat_test_acc, 100.0, 1),
            ratio(r.bench_train_tokens_per_s, base.bench_train_tokens_per_s),
            ratio(r.bench_sample_tokens_per_s, base.bench_sample_tokens_per_s),
            ratio(r.bench_train_peak_rss_mb, base.bench_train_peak_rss_mb),
        );
    }
    s
}

/// What the table's columns are.
const COLUMNS: &str = "Columns: parameters; training steps and tokens; wall-clock of the training run \
(summed over its resumed chunks, on a shared machine); train tok/s: the median of the run's logged rates and \
`igpt bench train` (batch 8, random weights of the same shape, timed back to back), with its peak memory; the best validation and the test \
bits/token of the best checkpoint; sampling tok/s and peak memory from `igpt bench sample` (batch 8, \
a whole image); the linear probe's best layer, its val / test accuracy, the concatenation around it, \
and the raw-pixel baseline. Missing cells (-) are stages not run yet.";

/// A number with `d` decimals, or "-" for a stage not run yet.
fn num(v: Option<f64>, d: usize) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.d$}"))
}

/// The probe's three cells: best layer, concatenation and raw pixels, val / test in %.
fn probe_cells(r: &StudyRun) -> String {
    let pct =
        |a: Option<f64>, b: Option<f64>| format!("{} / {}", num(a.map(|x| 100.0 * x), 1), num(b.map(|x| 100.0 * x), 1));
    [
        pct(r.probe_best_val_acc, r.probe_best_test_acc),
        pct(r.probe_concat_val_acc, r.probe_concat_test_acc),
        pct(r.pixels_val_acc, r.pixels_test_acc),
    ]
    .join(" | ")
}

/// One data set's table (markdown).
fn table(ds: &str, rs: &[&StudyRun]) -> String {
    let mut s = format!(
        "\n## {ds}\n\n| variant | params | steps | tokens | wall-clock (s) | train tok/s run / bench | train peak MB | val bits | test bits | sample tok/s | sample peak MB | best layer | probe val / test % | concat val / test % | pixels val / test % |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rs {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.variant,
            r.parameters.map_or("-".into(), |p| p.to_string()),
            r.train_steps.map_or("-".into(), |p| p.to_string()),
            r.train_tokens.map_or("-".into(), |p| p.to_string()),
            num(r.train_wall_clock_s, 0),
            num(r.train_median_tokens_per_s, 0),
            num(r.bench_train_tokens_per_s, 0),
            num(r.bench_train_peak_rss_mb, 0),
            num(r.best_val_bits_per_token, 3),
            num(r.test_bits_per_token, 3),
            num(r.bench_sample_tokens_per_s, 0),
            num(r.bench_sample_peak_rss_mb, 0),
            r.probe_best_layer.map_or("-".into(), |p| p.to_string()),
            probe_cells(r),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dataset: &str, variant: &str, side: usize, probe: f64) -> StudyRun {
        StudyRun {
            dataset: dataset.into(),
            variant: variant.into(),
            side: Some(side),
            attention: None,
            position_embedding: None,
            parameters: None,
            train_steps: None,
            train_tokens: None,
            train_wall_clock_s: None,
            train_median_tokens_per_s: None,
            best_val_bits_per_token: None,
            test_bits_per_token: None,
            bench_train_tokens_per_s: None,
            bench_sample_tokens_per_s: None,
            bench_sample_peak_rss_mb: None,
            bench_train_peak_rss_mb: None,
            probe_best_layer: None,
            probe_best_val_acc: None,
            probe_best_test_acc: Some(probe),
            probe_concat_val_acc: None,
            probe_concat_test_acc: None,
            pixels_val_acc: None,
            pixels_test_acc: None,
            probe_images: None,
            val_curve: vec![],
            val_curve_seconds: vec![],
            probe_layers: vec![],
            samples_png: None,
        }
    }

    /// At 60% on 400 test images the standard error is sqrt(0.24 / 400) = 2.45 points.
    #[test]
    fn probe_noise_is_the_binomial_standard_error() {
        let mut a = run("emoji32", "dense+learned_1d", 32, 0.6);
        a.probe_images = Some((1000, 100, 400));
        let (b, c) = (run("emoji32", "x", 32, 0.5), run("emoji32", "y", 32, 0.7));
        let s = probe_noise(&[&b, &a, &c]);
        assert!(s.contains("100 val and 400 test images: at 60% their standard errors are 4.9 and 2.4 points"), "{s}");
        assert_eq!(probe_noise(&[&b]), "");
    }

    /// The resolution table lists the emoji64 runs, then the emoji64-at-32 ones, once both
    /// sides have a run.
    #[test]
    fn the_resolution_table_lists_both_sides() {
        let a = run("emoji64", "local_2d+learned_2d", 64, 0.61);
        let b = run("emoji64-at-32", "local_2d+learned_2d", 32, 0.57);
        let c = run("emoji64", "dense+learned_1d", 64, 0.5);
        let d = run("emoji32", "dense+learned_1d", 32, 0.4);
        assert_eq!(resolution(&[a.clone(), c.clone(), d.clone()]), "");
        let t = resolution(&[b, d, a, c]);
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| variant")).collect();
        assert_eq!(
            rows,
            [
                "| local_2d+learned_2d | 64 | - / 61.0 | - / - | - / - | - | - |",
                "| dense+learned_1d | 64 | - / 50.0 | - / - | - / - | - | - |",
                "| local_2d+learned_2d | 32 | - / 57.0 | - / - | - / - | - | - |"
            ]
        );
    }

    #[test]
    fn training_time_sums_the_chunks_of_a_resumed_run() {
        let rec = |kind: &str, e: f64, r: f64| serde_json::json!({"kind": kind, "elapsed_s": e, "tok_s": r});
        // chunk 1 ends at 30 s, chunk 2 at 25 s, chunk 3 (still running) at 12 s
        let m = [
            rec("train", 10.0, 100.0),
            rec("train", 30.0, 300.0),
            serde_json::json!({"kind": "eval", "val_bits": 2.0}),
            rec("train", 5.0, 200.0),
            rec("train", 25.0, 400.0),
            serde_json::json!({"kind": "eval", "val_bits": 1.5}),
            rec("train", 12.0, 50.0),
        ];
        let t = TrainTime::of(&m);
        let val_curve = vec![(30.0, 2.0), (55.0, 1.5)];
        assert_eq!(t, TrainTime { wall_clock_s: Some(67.0), median_tok_s: Some(200.0), val_curve });
        assert_eq!(TrainTime::of(&m[..2]).median_tok_s, Some(200.0));
        assert_eq!(TrainTime::of(&[]), TrainTime::default());
    }
}
