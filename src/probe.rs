//! Linear probes (paper, section 3.3): for every layer, the residual stream after that block
//! is normalised with ImageGPT's norm *without* its gain (x / sqrt(mean(x^2) + eps), the
//! parameter-free version of `ln_f`), average-pooled over all positions, and a multinomial
//! logistic regression is fitted on the pooled features. Layer 0 is the embedding output.
//! The model sees the image tokens as HF's classifier does: the H*W pixel ids, no SOS.
//!
//! The regularisation strength is chosen by validation accuracy; the model fitted on the
//! training split with that strength is reported on train, val and test.

use serde::Serialize;

use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::logreg::{self, Standardizer};
use crate::model::{ImageGpt, Logits, Workspace};
use crate::tokenizer::ImageProcessorConfig;

/// Pooled features of every layer for every image of a split: feats[l] is (N, C).
pub fn layer_features(
    model: &ImageGpt,
    data: &TokenFile,
    layers: &[usize],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let (c, t, eps) = (model.config.n_embd, data.seq_len(), model.config.layer_norm_epsilon);
    if t != model.config.n_positions {
        return Err(Error::Invalid(format!(
            "{}: images of {t} pixels, the model takes {}",
            data.path.display(),
            model.config.n_positions
        )));
    }
    let mut feats: Vec<Vec<f32>> = layers.iter().map(|_| Vec::with_capacity(data.count * c)).collect();
    let mut ws = Workspace::new();
    let mut tokens = vec![0u32; batch * t];
    for start in (0..data.count).step_by(batch.max(1)) {
        let b = batch.min(data.count - start);
        for i in 0..b {
            data.image_into(start + i, &mut tokens[i * t..(i + 1) * t]);
        }
        model.forward(&mut ws, &tokens[..b * t], b, t, Logits::None, true)?;
        for (f, &l) in feats.iter_mut().zip(layers) {
            // residual stream after block l (hidden_states[l], except the last which HF stores after ln_f)
            let h = if l == model.config.n_layer { &ws.last_block_output } else { &ws.hidden_states[l] };
            for i in 0..b {
                let mut pooled = vec![0f64; c];
                for row in h[i * t * c..(i + 1) * t * c].chunks_exact(c) {
                    let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
                    let r = 1.0 / (ms + eps).sqrt();
                    pooled.iter_mut().zip(row).for_each(|(p, &v)| *p += v as f64 * r);
                }
                f.extend(pooled.iter().map(|&v| (v / t as f64) as f32));
            }
        }
        progress(b);
    }
    Ok(feats)
}

/// Raw-pixel features: the palette colours of every pixel, (N, H*W*3), in [0, 255].
pub fn pixel_features(data: &TokenFile, proc: &ImageProcessorConfig) -> Vec<f32> {
    let t = data.seq_len();
    let mut tokens = vec![0u32; t];
    let mut out = Vec::with_capacity(data.count * t * 3);
    for i in 0..data.count {
        data.image_into(i, &mut tokens);
        out.extend(proc.decode(&tokens).iter().map(|&v| v as f32));
    }
    out
}

/// One probe's result.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// Layer index (0 = embeddings), or None for the raw-pixel baseline.
    pub layer: Option<usize>,
    pub lambda: f64,
    pub train_acc: f64,
    pub val_acc: f64,
    pub test_acc: Option<f64>,
}

/// Regularisation strengths tried (lambda of mean CE + lambda/2 ||W||^2).
pub const LAMBDAS: [f64; 6] = [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0];

/// Fits the probe on (train) features, picks lambda on val, reports all splits.
pub fn fit_probe(
    layer: Option<usize>,
    d: usize,
    k: usize,
    train: (&[f32], &[u16]),
    val: (&[f32], &[u16]),
    test: Option<(&[f32], &[u16])>,
    max_iter: usize,
) -> ProbeResult {
    let st = Standardizer::fit(train.0, d);
    let std = |x: &[f32]| {
        let mut v = x.to_vec();
        st.apply(&mut v);
        v
    };
    let (xtr, xva) = (std(train.0), std(val.0));
    let xte = test.map(|t| std(t.0));
    let mut best: Option<(f64, f64, logreg::LogReg)> = None;
    let mut prev: Option<logreg::LogReg> = None;
    // The regularisation path from strong to weak: each fit starts at the previous optimum.
    for &lambda in LAMBDAS.iter().rev() {
        let m = logreg::fit_from(&xtr, train.1, d, k, lambda, max_iter, prev.as_ref());
        prev = Some(m.clone());
        let va = m.accuracy(&xva, val.1);
        if best.as_ref().is_none_or(|b| va >= b.0) {
            best = Some((va, lambda, m));
        }
    }
    let (val_acc, lambda, m) = best.expect("at least one lambda");
    ProbeResult {
        layer,
        lambda,
        train_acc: m.accuracy(&xtr, train.1),
        val_acc,
        test_acc: xte.as_ref().zip(test).map(|(x, t)| m.accuracy(x, t.1)),
    }
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

/// Probes `layers` (None = all, 0..=n_layer) of `model` on the prepared data in `data_dir`,
/// writing probe.json and probe.png into `out`. With `concat` > 1, also probes the
/// concatenated features of `concat` consecutive probed layers centred on the best one.
#[allow(clippy::too_many_arguments)]
pub fn run_probe(
    model: &ImageGpt,
    data_dir: &std::path::Path,
    layers: Option<Vec<usize>>,
    out: &std::path::Path,
    max_iter: usize,
    concat: usize,
    progress: &mut dyn ProbeProgress,
) -> Result<ProbeReport> {
    let open = |f: &str| TokenFile::open(&data_dir.join(f));
    let (train, val) = (open("train.tokens")?, open("val.tokens")?);
    let test = data_dir.join("test.tokens").exists().then(|| open("test.tokens")).transpose()?;
    let proc = ImageProcessorConfig::from_file(&data_dir.join("preprocessor_config.json"))?;
    let nl = model.config.n_layer;
    let layers = layers.unwrap_or_else(|| (0..=nl).collect());
    if let Some(bad) = layers.iter().find(|&&l| l > nl) {
        return Err(Error::Invalid(format!("layer {bad} does not exist: the model has layers 0..={nl}")));
    }
    let (ytr, yva) = (labels_of(&train)?, labels_of(&val)?);
    let yte = test.as_ref().map(labels_of).transpose()?;
    let k = 1 + ytr.iter().chain(&yva).chain(yte.iter().flatten()).copied().max().unwrap_or(0) as usize;
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
    let concat = concat.min(layers.len());
    progress.stage("probes", layers.len() as u64 + 1 + u64::from(concat > 1));
    let mut results = Vec::new();
    for (i, &l) in layers.iter().enumerate() {
        let te = fte.as_ref().zip(yte.as_ref()).map(|(f, y)| (&f[i][..], &y[..]));
        results.push(fit_probe(Some(l), c, k, (&ftr[i], &ytr), (&fva[i], &yva), te, max_iter));
        progress.inc(1);
    }
    let d_px = train.seq_len() * 3;
    let (ptr, pva) = (pixel_features(&train, &proc), pixel_features(&val, &proc));
    let pte = test.as_ref().map(|t| pixel_features(t, &proc));
    let baseline = fit_probe(None, d_px, k, (&ptr, &ytr), (&pva, &yva), pte.as_deref().zip(yte.as_deref()), max_iter);
    progress.inc(1);
    let best_i =
        (0..results.len()).max_by(|&a, &b| results[a].val_acc.total_cmp(&results[b].val_acc)).expect("a layer");
    let concat = (concat > 1).then(|| {
        let idx: Vec<usize> = concat_window(best_i, layers.len(), concat).collect();
        let join = |f: &[Vec<f32>], n: usize| {
            let mut out = Vec::with_capacity(n * c * idx.len());
            for r in 0..n {
                for &i in &idx {
                    out.extend_from_slice(&f[i][r * c..(r + 1) * c]);
                }
            }
            out
        };
        let (xtr, xva) = (join(&ftr, train.count), join(&fva, val.count));
        let xte = fte.as_ref().zip(test.as_ref()).map(|(f, t)| join(f, t.count));
        let te = xte.as_deref().zip(yte.as_deref());
        let result = fit_probe(None, c * idx.len(), k, (&xtr, &ytr), (&xva, &yva), te, max_iter);
        progress.inc(1);
        ConcatResult { layers: idx.iter().map(|&i| layers[i]).collect(), result }
    });
    let fit_s = t1.elapsed().as_secs_f64();
    let best = &results[best_i];
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
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::model::tensors::write_atomic(&out.join("probe.json"), json.as_bytes())?;
    probe_chart(&report).save(&out.join("probe"), 760, 440)?;
    Ok(report)
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
