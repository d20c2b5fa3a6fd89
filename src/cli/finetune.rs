use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use igpt::finetune::{FinetuneConfig, accuracy, finetune};
use igpt::model::{ModelKind, load_model_as};
use serde_json::json;

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Pretrained (causal) model directory.
    #[arg(long)]
    model: PathBuf,
    /// Prepared, labelled data folder.
    #[arg(long)]
    data: PathBuf,
    /// Run folder: best/ and last/ (ImageGPTForImageClassification), checkpoints/step-N
    /// (resumable), metrics.jsonl, loss.png, accuracy.png, finetune.json.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps (at most; --patience may stop earlier).
    #[arg(long, default_value_t = 500)]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate (AdamW, the same for the transformer and the new head).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 1e-4)]
    min_lr: f64,
    /// Global gradient-norm clip over transformer and head (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Weight of the generative loss (paper: 1; 0 = classification only).
    #[arg(long, default_value_t = 1.0)]
    gen_weight: f64,
    /// Steps between validation passes.
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Evaluations without improvement before stopping.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Random horizontal flips of the training images.
    #[arg(long)]
    hflip: bool,
    /// Seed of the batch order, flips and BERT masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Step checkpoints kept besides best/ (checkpoints/step-N: resumable).
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// Stop (as if interrupted) after this step; --resume continues.
    #[arg(long)]
    stop_after: Option<u64>,
    #[command(flatten)]
    dropout: super::train::DropoutArgs,
    /// Only the first N images of each split, stratified by label (a quick experiment).
    #[arg(long)]
    limit: Option<usize>,
    /// Continue the run in --out from its latest checkpoint (the same flags).
    #[arg(long)]
    resume: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: FinetuneArgs) -> Result<()> {
    a.device.check("finetune")?;
    super::init_threads(a.threads);
    let [embd_pdrop, attn_pdrop, resid_pdrop] = a.dropout.sites();
    let cfg = FinetuneConfig {
        data: a.data.clone(),
        model: a.model.clone(),
        out: a.out.clone(),
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup,
        min_lr: a.min_lr,
        clip: a.clip,
        gen_weight: a.gen_weight,
        eval_every: a.eval_every,
        patience: a.patience,
        hflip: a.hflip,
        seed: a.seed,
        keep: a.keep,
        stop_after: a.stop_after,
        limit: a.limit,
        embd_pdrop,
        attn_pdrop,
        resid_pdrop,
    };
    let mut console = super::train::Console::new(a.json).labelled("finetune");
    let s = finetune(&cfg, a.resume, &mut console).with_context(|| format!("fine-tuning {}", a.model.display()))?;
    if let Some(b) = &console.bar {
        b.finish_and_clear();
    }
    if a.json {
        return super::print_json(&serde_json::to_value(&s)?);
    }
    println!(
        "{} steps in {:.1} s{}: best val accuracy {:.2}% at step {}, test accuracy {} -> {}",
        s.steps,
        s.seconds,
        if s.stopped_early { " (early stop)" } else { "" },
        100.0 * s.best_val_acc,
        s.best_step,
        s.test_acc.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v)),
        s.best_dir.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct EvalClsArgs {
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Classifier directory (ImageGPTForImageClassification).
    #[arg(long)]
    model: PathBuf,
    /// Prepared, labelled data folder.
    #[arg(long)]
    data: PathBuf,
    /// Which split: train | val | test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print {"accuracy","n","split"} on stdout.
    #[arg(long)]
    json: bool,
}

pub fn eval_cls(a: EvalClsArgs) -> Result<()> {
    a.device.check("eval-cls")?;
    super::init_threads(a.threads);
    let model = load_model_as(&a.model, Some(ModelKind::Classifier))
        .with_context(|| format!("loading classifier {}", a.model.display()))?;
    let file = igpt::data::tokens::TokenFile::open(&a.data.join(format!("{}.tokens", a.split)))?;
    let acc = accuracy(&model, &file, 32)?;
    if a.json {
        return super::print_json(&json!({"accuracy": acc, "n": file.count, "split": a.split, "model": a.model}));
    }
    println!("{}: accuracy {:.2}% on {} {} images", a.model.display(), 100.0 * acc, file.count, a.split);
    Ok(())
}
