use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use igpt::model::train_graph::Objective;
use igpt::train::{EvalLog, RunInfo, StepLog, TrainConfig, TrainObserver, run};

#[derive(Clone, Copy, clap::ValueEnum)]
enum ObjectiveArg {
    Gpt,
    Bert,
}

/// Every flag is optional: unset flags keep the value of --config FILE, else the default.
#[derive(Args)]
pub struct TrainArgs {
    /// Prepared data folder (from `igpt prepare`); required unless --config gives it.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run folder (checkpoints, metrics.jsonl, loss.png, train.json); required unless --config
    /// gives it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// JSON file with TrainConfig fields (train.json's "train" object); flags override it;
    /// an unknown key is refused.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model shape: tiny (2 layers, 64 wide, 4 heads) | s | m | l (the paper's iGPT-S/M/L)
    /// [default: tiny]; --n-layer / --n-embd / --n-head override its numbers.
    #[arg(long)]
    preset: Option<String>,
    /// Transformer blocks [default: the preset's].
    #[arg(long)]
    n_layer: Option<usize>,
    /// Width of the residual stream [default: the preset's].
    #[arg(long)]
    n_embd: Option<usize>,
    /// Attention heads (n_embd must be a multiple) [default: the preset's].
    #[arg(long)]
    n_head: Option<usize>,
    /// Continue from a model directory (HF or igpt checkpoint).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Position code: learned_1d (HF wpe) | learned_2d (wpe_row + wpe_col) | rope_2d (axial
    /// rotary) [default: learned_1d].
    #[arg(long)]
    position_embedding: Option<igpt::config::PositionEmbedding>,
    /// Base of the rope_2d frequencies [default: 100].
    #[arg(long, allow_negative_numbers = true)]
    rope_theta: Option<f64>,
    /// Attention: dense (HF) | local_2d (a window of rows above and columns either side) |
    /// linear (phi(q) . phi(k), constant-size decoding state) [default: dense].
    #[arg(long)]
    attention: Option<igpt::config::AttentionKind>,
    /// local_2d: rows above the query's row that stay visible [default: 8].
    #[arg(long, allow_negative_numbers = true)]
    local_rows: Option<i64>,
    /// local_2d: columns either side of the query's column that stay visible [default: 8].
    #[arg(long, allow_negative_numbers = true)]
    local_cols: Option<i64>,
    /// Objective: gpt (next pixel, causal) | bert (masked pixels, bidirectional; recorded in
    /// the saved config) [default: gpt].
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    /// BERT: probability that a position is masked [default: 0.15].
    #[arg(long)]
    mask_prob: Option<f64>,
    #[command(flatten)]
    dropout: DropoutArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Images per micro-batch [default: 8].
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches accumulated per optimizer step [default: 1].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Epochs over the training split (used when --steps is not given).
    #[arg(long)]
    epochs: Option<f64>,
    /// A time budget instead of --steps / --epochs: the run's length (and its cosine
    /// schedule) is set from the speed of its first steps, and kept on --resume.
    #[arg(long)]
    minutes: Option<f64>,
    /// Peak learning rate [default: 3e-3].
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warm-up steps [default: 100].
    #[arg(long)]
    warmup: Option<u64>,
    /// Final learning rate of the cosine decay [default: 3e-4].
    #[arg(long)]
    min_lr: Option<f64>,
    /// AdamW weight decay on matrices [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip, 0 = off [default: 1].
    #[arg(long)]
    clip: Option<f64>,
    /// Steps between validation passes (each writes a checkpoint, and best/ when it improves)
    /// [default: 200].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Validation batches per pass [default: 8].
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Steps between lines of the log and metrics.jsonl [default: 10].
    #[arg(long)]
    log_every: Option<u64>,
    /// Random horizontal flips.
    #[arg(long)]
    hflip: bool,
    /// Seed of the initial weights, the batch order, flips and BERT masks [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Worker threads (0 = all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Step checkpoints kept besides best/ [default: 2].
    #[arg(long)]
    keep: Option<usize>,
    /// Stop after this step as if interrupted (the schedule still spans --steps).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn resolve(a: &TrainArgs) -> Result<TrainConfig> {
    if a.config.is_none() && (a.data.is_none() || a.out.is_none()) {
        anyhow::bail!(
            "give --data DIR (a folder written by `igpt prepare`) and --out RUN (the run folder), or --config FILE"
        );
    }
    let mut c = match &a.config {
        Some(p) => config_file(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    set!(
        data,
        out,
        preset,
        batch,
        grad_accum,
        lr,
        warmup,
        min_lr,
        clip,
        eval_every,
        eval_batches,
        log_every,
        seed,
        threads,
        keep,
        mask_prob,
        position_embedding,
        rope_theta,
        attention,
        local_rows,
        local_cols
    );
    for (dst, src) in [(&mut c.n_layer, a.n_layer), (&mut c.n_embd, a.n_embd), (&mut c.n_head, a.n_head)] {
        if src.is_some() {
            *dst = src;
        }
    }
    if a.init.is_some() {
        c.init = a.init.clone();
    }
    schedule_flags(a, &mut c);
    if let Some(wd) = a.weight_decay {
        c.adamw.weight_decay = wd;
    }
    let [e, at, r] = a.dropout.sites();
    for (dst, p) in [(&mut c.embd_pdrop, e), (&mut c.attn_pdrop, at), (&mut c.resid_pdrop, r)] {
        if p.is_some() {
            *dst = p;
        }
    }
    if let Some(o) = a.objective {
        c.objective = match o {
            ObjectiveArg::Gpt => Objective::Gpt,
            ObjectiveArg::Bert => Objective::Bert,
        };
    }
    c.hflip |= a.hflip;
    Ok(c)
}

/// A --config file: a train config, or a run's train.json (the config under "train").
fn config_file(p: &std::path::Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let mut v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
    if let Some(t) = v.get_mut("train").filter(|t| t.is_object()) {
        v = t.take();
    }
    serde_json::from_value(v).with_context(|| {
        format!("{}: not a valid train config (field names as in a run's train.json \"train\")", p.display())
    })
}

/// --steps, --epochs, --minutes (a length given on the command line replaces the file's,
/// whichever kind it is) and --stop-after.
fn schedule_flags(a: &TrainArgs, c: &mut TrainConfig) {
    if a.steps.is_some() {
        c.steps = a.steps;
    }
    if a.epochs.is_some() {
        c.epochs = a.epochs;
        if a.steps.is_none() {
            c.steps = None;
        }
    }
    if a.minutes.is_some() {
        c.minutes = a.minutes;
        if a.steps.is_none() && a.epochs.is_none() {
            (c.steps, c.epochs) = (None, None);
        }
    }
    if a.stop_after.is_some() {
        c.stop_after = a.stop_after;
    }
}

/// The dropout flags of `train` and `finetune`.
#[derive(Args, Clone)]
pub struct DropoutArgs {
    /// Dropout at all three of transformers' sites (embeddings, attention probabilities,
    /// residual branches) [default: the model config's: igpt presets 0, HF checkpoints 0.1].
    #[arg(long)]
    dropout: Option<f32>,
    /// Dropout on the embeddings (overrides --dropout).
    #[arg(long)]
    embd_pdrop: Option<f32>,
    /// Dropout on the attention probabilities (overrides --dropout; softmax attention only).
    #[arg(long)]
    attn_pdrop: Option<f32>,
    /// Dropout on the attention and MLP outputs (overrides --dropout).
    #[arg(long)]
    resid_pdrop: Option<f32>,
}

impl DropoutArgs {
    /// [embd, attn, resid]: each site's flag, else --dropout, else None (the config's).
    pub fn sites(&self) -> [Option<f32>; 3] {
        [self.embd_pdrop, self.attn_pdrop, self.resid_pdrop].map(|p| p.or(self.dropout))
    }
}

/// Progress bar (step, loss, lr, tokens/s, ETA) and one line per logged step, on stderr.
pub struct Console {
    pub bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    /// The bar's label (`train`, `finetune`).
    label: &'static str,
}

impl Console {
    pub fn new(quiet: bool) -> Self {
        Console { bar: None, quiet, label: "train" }
    }
    pub fn labelled(self, label: &'static str) -> Self {
        Console { label, ..self }
    }
    fn println(&self, s: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => eprintln!("{s}"),
        }
    }
}

impl TrainObserver for Console {
    fn start(&mut self, i: &RunInfo) {
        let m = &i.model;
        self.println(format!(
            "model: {} layers, n_embd {}, {} heads, {} positions ({} x {}), {} attention, {} positions code, {} colours: {} parameters ({} decayed, {} not)",
            m.n_layer,
            m.n_embd,
            m.n_head,
            m.n_positions,
            m.height(),
            m.width(),
            m.attention.name(),
            m.position_embedding.name(),
            m.n_colors(),
            i.n_params,
            i.decayed,
            i.not_decayed
        ));
        self.println(format!(
            "data: {} train / {} val images; steps {}..{}",
            i.train_images, i.val_images, i.start_step, i.total_steps
        ));
        let bar = indicatif::ProgressBar::new(i.total_steps).with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{} {{bar:30}} {{pos}}/{{len}} steps [{{elapsed_precise}}<{{eta_precise}}] {{msg}}",
                self.label
            ))
            .expect("valid template"),
        );
        bar.set_position(i.start_step);
        if self.quiet {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        self.bar = Some(bar);
    }
    fn step(&mut self, l: &StepLog, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(l.step);
            b.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", l.loss, l.lr, l.tok_s));
        }
    }
    fn log(&mut self, l: &StepLog) {
        self.println(format!(
            "step {}: loss {:.4} ({:.4} bits) lr {:.2e} |g| {:.3} {:.0} tok/s",
            l.step,
            l.loss,
            l.loss / std::f64::consts::LN_2,
            l.lr,
            l.grad_norm,
            l.tok_s
        ));
    }
    fn eval(&mut self, e: &EvalLog) {
        let value = match e.metric.as_str() {
            "val_loss" => format!("val loss {:.4} ({:.4} bits/token)", e.value, e.value / std::f64::consts::LN_2),
            "val_acc" => format!("val accuracy {:.2}%", 100.0 * e.value),
            m => format!("{m} {:.4}", e.value),
        };
        self.println(format!("step {}: {value}{}", e.step, if e.best { " (best)" } else { "" }));
    }
    fn note(&mut self, msg: &str) {
        self.println(format!("note: {msg}"));
    }
}

pub fn run_cmd(a: TrainArgs) -> Result<()> {
    a.device.check("train")?;
    let cfg = resolve(&a)?;
    super::init_threads(cfg.threads);
    let mut console = Console::new(false);
    let s = run(&cfg, a.resume, &mut console).with_context(|| format!("training into {}", cfg.out.display()))?;
    if let Some(b) = &console.bar {
        b.finish_and_clear();
    }
    if a.json {
        return super::print_json(&serde_json::to_value(&s)?);
    }
    println!(
        "{} steps in {:.1} s: train loss {:.4}, val loss {}, best {} -> {}",
        s.steps,
        s.seconds,
        s.final_train_loss,
        s.final_val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        s.best_val_loss.map_or("-".into(), |v| format!("{v:.4} ({:.4} bits/token)", v / std::f64::consts::LN_2)),
        s.best_dir.display()
    );
    Ok(())
}
