use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use igpt::ImageGptConfig;
use igpt::backend::Backend;
use igpt::model::{ImageGpt, Logits, ModelKind, Workspace, cross_entropy};
use igpt::tokenizer::ImageProcessorConfig;
use serde_json::json;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Model directory (config.json, weights, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// PNG or JPEG images.
    #[arg(required_unless_present = "data", conflicts_with = "data")]
    images: Vec<PathBuf>,
    /// Or: a prepared data folder (from `igpt prepare` with the model's palette); scores
    /// every image of --split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data: which split (train, val or test).
    #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
    split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// BERT models: the fraction of each image's pixels masked and predicted (the paper's 0.15).
    #[arg(long, default_value_t = 0.15)]
    mask_prob: f64,
    /// BERT models: seed of the masks (the same seed masks the same pixels).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON on stdout: {"objective","metric","images":[{"path","nll","bits_per_token"}],"mean_nll","bits_per_token"}.
    #[arg(long)]
    json: bool,
}

/// What eval reports for a model: the NLL of every pixel given the ones before it (GPT), or
/// of the masked pixels given the others (BERT).
fn metric_of(bert: bool) -> (&'static str, &'static str) {
    if bert {
        ("masked_token_nll", "masked-token NLL (BERT: the masked pixels given all the others)")
    } else {
        ("nll", "NLL (GPT: each pixel given the pixels before it)")
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let engine = a.device.engine("eval")?;
    if a.batch == 0 || a.batch > 4096 {
        bail!("--batch {}: give 1 to 4096 images per pass", a.batch);
    }
    if !(a.mask_prob > 0.0 && a.mask_prob < 1.0) {
        bail!("--mask-prob {}: give a fraction in (0, 1) (the paper's 0.15)", a.mask_prob);
    }
    super::init_threads(a.threads);
    let model = super::open_model(&a.model)?;
    if model.kind != ModelKind::CausalLm {
        bail!(
            "{}: eval needs a causal model (ImageGPTForCausalImageModeling with lm_head), this is {}",
            a.model.display(),
            model.kind.hf_architecture()
        );
    }
    let proc = super::open_processor(&a.model)?;
    let (h, w) = proc.hw();
    if h * w != model.config.n_positions || proc.n_clusters() != model.config.n_colors() {
        bail!(
            "{}: palette ({} colours, {}x{} = {} pixels) does not match the model (vocab {} colours, n_positions {})",
            a.model.display(),
            proc.n_clusters(),
            h,
            w,
            h * w,
            model.config.n_colors(),
            model.config.n_positions
        );
    }
    let items = images(&a, &proc)?;
    let config = model.config.clone();
    let nlls = with_model!(engine, model, score(&items, &a))?;
    report(&a, &config, &items, &nlls)
}

/// (name, tokens) of every image to score: a prepared split or the images given.
fn images(a: &EvalArgs, proc: &ImageProcessorConfig) -> Result<Vec<(String, Vec<u32>)>> {
    Ok(match &a.data {
        Some(dir) => {
            let path = dir.join(format!("{}.tokens", a.split));
            let f = super::open_tokens_for(&path, proc)?;
            (0..f.count)
                .map(|i| (format!("{}#{i}", path.display()), f.image(i).into_iter().map(u32::from).collect()))
                .collect()
        }
        None => {
            let tokens = super::encode_images(&a.images, proc)?;
            a.images.iter().map(|p| p.display().to_string()).zip(tokens).collect()
        }
    })
}

/// Each image's mean NLL (nats/token): of every pixel given the ones before it (GPT), or
/// of its masked pixels given the others (BERT; NaN where none was masked).
fn score<B: Backend>(model: ImageGpt<B>, items: &[(String, Vec<u32>)], a: &EvalArgs) -> Result<Vec<f64>> {
    let (t, v, sos) = (model.config.n_positions, model.config.n_colors(), model.config.sos_token());
    let bert = !model.config.is_causal();
    let mut ws = Workspace::<B>::new();
    let mut nlls = Vec::with_capacity(items.len());
    let bar = indicatif::ProgressBar::new(items.len() as u64).with_style(indicatif::ProgressStyle::with_template(
        "eval {bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}, {per_sec}]",
    )?);
    let mut rng = igpt::rng::Rng::new(a.seed);
    for chunk in items.chunks(a.batch) {
        let b = chunk.len();
        // targets (B, T)
        let targets: Vec<u32> = chunk.iter().flat_map(|it| it.1.iter().copied()).collect();
        let masked = if bert {
            let m = igpt::train::batches::bert_mask(b * t, a.mask_prob, &mut rng);
            model.forward_masked(&mut ws, &targets, &m, b, t)?;
            Some(m)
        } else {
            // input = [SOS] + tokens[:-1]; logits[:, i] predicts tokens[i]
            let inputs: Vec<u32> =
                targets.chunks(t).flat_map(|tg| std::iter::once(sos).chain(tg[..t - 1].iter().copied())).collect();
            model.forward(&mut ws, &inputs, b, t, Logits::All, false)?;
            None
        };
        for (i, tg) in targets.chunks(t).enumerate() {
            // one image's logits on the host at a time (not the whole batch's)
            let logits = model.be.download(&ws.logits, i * t * v..(i + 1) * t * v)?;
            let (nll, rows) = cross_entropy(&logits, tg, v);
            nlls.push(match &masked {
                // the mean over this image's masked pixels
                Some(m) => {
                    let picked: Vec<f64> =
                        rows.iter().zip(&m[i * t..(i + 1) * t]).filter(|x| *x.1).map(|x| *x.0).collect();
                    if picked.is_empty() { f64::NAN } else { picked.iter().sum::<f64>() / picked.len() as f64 }
                }
                None => nll,
            });
        }
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    Ok(nlls)
}

/// Prints the per-image and mean scores (text or --json).
fn report(a: &EvalArgs, config: &ImageGptConfig, items: &[(String, Vec<u32>)], nlls: &[f64]) -> Result<()> {
    let bert = !config.is_causal();
    // images with no masked pixel (BERT, a small --mask-prob) have no score
    let scored: Vec<f64> = nlls.iter().copied().filter(|x| x.is_finite()).collect();
    let mean = scored.iter().sum::<f64>() / scored.len().max(1) as f64;
    let bits = mean / std::f64::consts::LN_2;
    let (metric, what) = metric_of(bert);
    let objective = config.objective.name();
    if a.json {
        let per_image: Vec<_> = items
            .iter()
            .map(|it| &it.0)
            .zip(nlls)
            .map(|(p, &n)| {
                let n = n.is_finite().then_some(n);
                json!({"path": p, "nll": n, "bits_per_token": n.map(|n| n / std::f64::consts::LN_2)})
            })
            .collect();
        let mut out = json!({"objective": objective, "metric": metric, "images": per_image, "mean_nll": mean, "bits_per_token": bits});
        if bert {
            out["mask_prob"] = json!(a.mask_prob);
            out["seed"] = json!(a.seed);
        }
        return super::print_json(&out);
    }
    if a.data.is_none() {
        for (it, n) in items.iter().zip(nlls) {
            println!("{:>9.5} nats/token  {:>8.5} bits/token  {}", n, n / std::f64::consts::LN_2, it.0);
        }
    }
    println!("{what}: mean {mean:.5} nats/token = {bits:.5} bits/token over {} images", scored.len());
    Ok(())
}
