//! Linear probes (paper, section 3.3): for every layer, the residual stream after that block
//! is normalised with ImageGPT's norm *without* its gain (x / sqrt(mean(x^2) + eps), the
//! parameter-free version of `ln_f`), average-pooled over all positions, and a multinomial
//! logistic regression is fitted on the pooled features. Layer 0 is the embedding output.
//! The model sees the image tokens as HF's classifier does: the H*W pixel ids, no SOS (a BERT
//! model attends both ways).
//!
//! `features` computes and saves what is fitted, `path` fits the regularisation path and
//! chooses its strength on validation accuracy; the model fitted on the training split with
//! that strength is reported on train, val and test.

pub mod features;
pub mod path;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::logreg::Stop;
use crate::model::ImageGpt;
use crate::tokenizer::ImageProcessorConfig;

pub use features::{Split, layer_features, pixel_features, save_features};
pub use path::{LAMBDAS, PathPoint, ProbeResult, fit_probe};

/// What to probe and how (the default: every layer, no concatenation).
#[derive(Clone, Debug, Default)]
pub struct ProbeOptions {
    /// Layers (0 = embeddings, n_layer = last block); None = all.
    pub layers: Option<Vec<usize>>,
    /// When each fit stops (L-BFGS iterations, gradient tolerance).
    pub stop: Stop,
    /// With > 1: also the concatenated features of that many consecutive probed layers
    /// centred on the best one.
    pub concat: usize,
    /// Writes each probed feature set there (`layer_N.safetensors`, `pixels.safetensors`).
    pub save_features: Option<PathBuf>,
    /// Only the first N images of each split (stratified by label).
    pub limit: Option<usize>,
}

/// The probe of several layers' features side by side (the paper's ImageNet result, 72.0%,
/// concatenates 5 layers around the best one).
#[derive(Clone, Debug, Serialize)]
pub struct ConcatResult {
    pub layers: Vec<usize>,
    pub result: ProbeResult,
}

/// `width` consecutive indices of `0..n` centred on `best` (shifted to fit inside).
pub fn concat_window(best: usize, n: usize, width: usize) -> std::ops::Range<usize> {
    let width = width.min(n);
    let lo = best.saturating_sub(width / 2).min(n - width);
    lo..lo + width
}

/// Everything `igpt probe` reports (probe.json).
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub layers: Vec<ProbeResult>,
    pub baseline: ProbeResult,
    /// With `concat` > 1: the probe of that many consecutive probed layers around the best.
    pub concat: Option<ConcatResult>,
    pub best_layer: usize,
    pub best_val_acc: f64,
    pub best_test_acc: Option<f64>,
    pub n_layer: usize,
    pub classes: usize,
    pub counts: (usize, usize, usize),
    pub feature_s: f64,
    pub fit_s: f64,
    pub norm: String,
    /// Problems a reader should know of (a strength chosen on the edge of its path).
    pub warnings: Vec<String>,
}

/// Progress of a probe run, drawn by the caller.
pub trait ProbeProgress {
    fn stage(&mut self, _name: &str, _total: u64) {}
    fn inc(&mut self, _n: u64) {}
}
pub struct NoProgress;
impl ProbeProgress for NoProgress {}

fn labels_of(f: &TokenFile) -> Result<Vec<u16>> {
    f.labels().ok_or_else(|| {
        Error::Invalid(format!("{}: the images have no labels; a probe needs a labelled data set", f.path.display()))
    })
}

/// One feature set of every split (train, val, test) with the labels: (N, D) each.
struct Sets<'a> {
    x: [Option<&'a [f32]>; 3],
    y: [Option<&'a [u16]>; 3],
}

const SPLITS: [&str; 3] = ["train", "val", "test"];

impl Sets<'_> {
    /// Saves the set as `dir/name.safetensors` when asked, then fits its probe.
    fn probe(&self, name: &str, layer: Option<usize>, (d, k): (usize, usize), o: &ProbeOptions) -> Result<ProbeResult> {
        let split = |i: usize| Some(Split { x: self.x[i]?, y: self.y[i]? });
        if let Some(dir) = &o.save_features {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let splits: Vec<(&str, Split)> = (0..3).filter_map(|i| Some((SPLITS[i], split(i)?))).collect();
            save_features(&dir.join(format!("{name}.safetensors")), d, &splits)?;
        }
        let (train, val) = (split(0).expect("a train split"), split(1).expect("a val split"));
        Ok(fit_probe(layer, (d, k), (train, val, split(2)), o.stop))
    }
}

/// Rows of the `idx` feature sets (N, c each) side by side: (N, c * idx.len()).
fn side_by_side(f: &[Vec<f32>], idx: &[usize], n: usize, c: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * c * idx.len());
    for r in 0..n {
        for &i in idx {
            out.extend_from_slice(&f[i][r * c..(r + 1) * c]);
        }
    }
    out
}

/// Probes the layers of `model` on the prepared data in `data_dir` (and the raw-pixel
/// baseline, and with `concat` > 1 the concatenation around the best layer), writing
/// probe.json, probe.png and probe.svg into `out`.
pub fn run_probe<B: crate::backend::Backend>(
    model: &ImageGpt<B>,
    data_dir: &Path,
    o: &ProbeOptions,
    out: &Path,
    progress: &mut dyn ProbeProgress,
) -> Result<ProbeReport> {
    let open = |f: &str| TokenFile::open(&data_dir.join(f)).map(|t| t.limit(o.limit.unwrap_or(usize::MAX)));
    let (train, val) = (open("train.tokens")?, open("val.tokens")?);
    let test = data_dir.join("test.tokens").exists().then(|| open("test.tokens")).transpose()?;
    let proc = ImageProcessorConfig::from_file(&data_dir.join("preprocessor_config.json"))?;
    let nl = model.config.n_layer;
    let layers = o.layers.clone().unwrap_or_else(|| (0..=nl).collect());
    if let Some(bad) = layers.iter().find(|&&l| l > nl) {
        return Err(Error::Invalid(format!("layer {bad} does not exist: the model has layers 0..={nl}")));
    }
    let (ytr, yva) = (labels_of(&train)?, labels_of(&val)?);
    let yte = test.as_ref().map(labels_of).transpose()?;
    let splits: Vec<&TokenFile> = [Some(&train), Some(&val), test.as_ref()].into_iter().flatten().collect();
    let k = crate::data::tokens::class_count(data_dir, &splits)?;
    let y = [Some(&ytr[..]), Some(&yva[..]), yte.as_deref()];
    let t0 = std::time::Instant::now();
    let total = train.count + val.count + test.as_ref().map_or(0, |t| t.count);
    progress.stage("features", total as u64);
    let mut inc = |n: usize| progress.inc(n as u64);
    let ftr = layer_features(model, &train, &layers, 16, &mut inc)?;
    let fva = layer_features(model, &val, &layers, 16, &mut inc)?;
    let fte = test.as_ref().map(|t| layer_features(model, t, &layers, 16, &mut inc)).transpose()?;
    let feature_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let c = model.config.n_embd;
    let concat = o.concat.min(layers.len());
    progress.stage("probes", layers.len() as u64 + 1 + u64::from(concat > 1));
    let mut results = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        let sets = Sets { x: [Some(&ftr[i][..]), Some(&fva[i][..]), fte.as_ref().map(|f| &f[i][..])], y };
        results.push(sets.probe(&format!("layer_{l}"), Some(l), (c, k), o)?);
        progress.inc(1);
    }
    let px: Vec<Vec<f32>> =
        [Some(&train), Some(&val), test.as_ref()].iter().flatten().map(|f| pixel_features(f, &proc)).collect();
    let sets = Sets { x: [Some(&px[0][..]), Some(&px[1][..]), px.get(2).map(|v| &v[..])], y };
    let baseline = sets.probe("pixels", None, (train.seq_len() * 3, k), o)?;
    progress.inc(1);
    let best_i =
        (0..results.len()).max_by(|&a, &b| results[a].val_acc.total_cmp(&results[b].val_acc)).expect("a layer");
    let concat = if concat > 1 {
        let idx: Vec<usize> = concat_window(best_i, layers.len(), concat).collect();
        let xtr = side_by_side(&ftr, &idx, train.count, c);
        let xva = side_by_side(&fva, &idx, val.count, c);
        let xte = fte.as_ref().zip(test.as_ref()).map(|(f, t)| side_by_side(f, &idx, t.count, c));
        let sets = Sets { x: [Some(&xtr[..]), Some(&xva[..]), xte.as_deref()], y };
        let result = sets.probe("concat", None, (c * idx.len(), k), o)?;
        progress.inc(1);
        Some(ConcatResult { layers: idx.iter().map(|&i| layers[i]).collect(), result })
    } else {
        None
    };
    let fit_s = t1.elapsed().as_secs_f64();
    let best = &results[best_i];
    let all = results.iter().chain([&baseline]).chain(concat.as_ref().map(|c| &c.result));
    let warnings = all.flat_map(|r| warnings_of(r, o.stop)).collect();
    let report = ProbeReport {
        best_layer: best.layer.expect("a layer"),
        best_val_acc: best.val_acc,
        best_test_acc: best.test_acc,
        layers: results.clone(),
        baseline,
        concat,
        n_layer: nl,
        classes: k,
        counts: (train.count, val.count, test.as_ref().map_or(0, |t| t.count)),
        feature_s,
        fit_s,
        norm: "x / sqrt(mean(x^2) + eps) of the residual stream after each block (ImageGPT's norm without gain), mean over all positions".into(),
        warnings,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::formats::write_atomic(&out.join("probe.json"), json.as_bytes())?;
    probe_chart(&report).save(&out.join("probe"), 760, 440)?;
    Ok(report)
}

/// What a user should know of a chosen fit: that it stopped unconverged, or that its
/// lambda is at the end of the path.
fn warnings_of(r: &ProbeResult, stop: Stop) -> Vec<String> {
    let name = r.layer.map_or("the raw-pixel baseline".to_string(), |l| format!("layer {l}"));
    let mut w = Vec::new();
    if !r.converged {
        w.push(format!(
            "{name}: the chosen fit stopped at {} iterations before its gradient fell below {:e}; raise --max-iter",
            stop.max_iter, stop.tol
        ));
    }
    if r.lambda_on_edge {
        let lo = r.path.last().map_or(0.0, |p| p.lambda);
        let hi = r.path.first().map_or(0.0, |p| p.lambda);
        w.push(format!(
            "{name}: the chosen lambda {:e} is at the edge of the path [{lo:e}, {hi:e}]; the probe may do better beyond it",
            r.lambda
        ));
    }
    w
}

/// Accuracy (%) per layer: val (blue, where the layer is chosen), test (green), and the
/// raw-pixel baseline's val and test accuracy as dashed lines.
pub fn probe_chart(r: &ProbeReport) -> crate::plot::Chart {
    use crate::plot::{Chart, HLine, Series, Style};
    let pts = |f: &dyn Fn(&ProbeResult) -> Option<f64>| {
        r.layers.iter().filter_map(|p| Some((p.layer? as f64, 100.0 * f(p)?))).collect::<Vec<_>>()
    };
    let mut series = vec![Series::new("validation", pts(&|p| Some(p.val_acc)), [40, 90, 200], Style::Markers)];
    let test = pts(&|p| p.test_acc);
    if !test.is_empty() {
        series.push(Series::new("test", test, [30, 160, 60], Style::Markers));
    }
    let b = &r.baseline;
    let mut hlines = vec![HLine {
        label: format!("raw pixels, validation ({:.1}%)", 100.0 * b.val_acc),
        y: 100.0 * b.val_acc,
        color: [120, 150, 200],
    }];
    if let Some(t) = b.test_acc {
        hlines.push(HLine {
            label: format!("raw pixels, test ({:.1}%)", 100.0 * t),
            y: 100.0 * t,
            color: [130, 180, 130],
        });
    }
    Chart {
        title: format!("Linear probe accuracy per layer (best: layer {}, chosen on validation)", r.best_layer),
        x_label: "layer (0 = embeddings)".into(),
        y_label: "accuracy (%)".into(),
        series,
        hlines,
        integer_x: true,
        top_axis: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn concat_window_is_centred_and_fits() {
        use super::concat_window as w;
        assert_eq!(w(3, 7, 5), 1..6);
        assert_eq!(w(0, 7, 5), 0..5);
        assert_eq!(w(6, 7, 5), 2..7);
        assert_eq!(w(1, 3, 5), 0..3);
        assert_eq!(w(4, 9, 2), 3..5);
    }
}
