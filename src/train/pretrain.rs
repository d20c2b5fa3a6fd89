//! Pretraining (paper, section 2.2): the GPT (next pixel) or BERT (masked pixels) loss on a
//! prepared folder, evaluated by the mean validation loss; best/ is a full checkpoint.

use std::path::{Path, PathBuf};

use serde_json::{Map, json};

use super::batches;
use super::checkpoint::TrainState;
use super::config::TrainConfig;
use super::task::{DataInfo, Evaluation, Losses, Task};
use crate::config::ImageGptConfig;
use crate::data::tokens::TokenFile;
use crate::error::{Error, Result};
use crate::model::train_graph::{Objective, TrainActs};
use crate::model::{ImageGpt, ModelKind, load_model_as};
use crate::rng::Rng;
use crate::tokenizer::ImageProcessorConfig;

/// The pretraining task over a prepared folder's train and val splits.
pub struct Pretrain {
    pub train: TokenFile,
    pub val: TokenFile,
    palette: PathBuf,
    model: ImageGptConfig,
    /// The current epoch's image order (recomputed from the cursor after a resume).
    order: std::cell::RefCell<Vec<usize>>,
}

impl Pretrain {
    /// Opens `cfg.data` and resolves the model config of the run (preset or shape, size and
    /// palette from the data).
    pub fn open(cfg: &TrainConfig) -> Result<Self> {
        let dir = &cfg.data;
        let hint = |f: &str| {
            Error::Invalid(format!(
                "{}: no {f}; make the data folder with `igpt prepare --data ... --out {}`",
                dir.display(),
                dir.display()
            ))
        };
        for f in ["train.tokens", "val.tokens", "preprocessor_config.json"] {
            if !dir.join(f).exists() {
                return Err(hint(f));
            }
        }
        let train = TokenFile::open(&dir.join("train.tokens"))?;
        let val = TokenFile::open(&dir.join("val.tokens"))?;
        let palette = dir.join("preprocessor_config.json");
        let proc = ImageProcessorConfig::from_file(&palette)?;
        let (h, w) = proc.hw();
        if (train.height, train.width) != (h, w)
            || train.colors != proc.n_clusters()
            || (val.height, val.width, val.colors) != (train.height, train.width, train.colors)
        {
            return Err(Error::Invalid(format!(
                "{}: token files and preprocessor_config.json disagree (sizes or palette); run `igpt prepare` again",
                dir.display()
            )));
        }
        let model = resolve_model(cfg, &train)?;
        Ok(Pretrain { train, val, palette, model, order: Default::default() })
    }
}

/// The model config of a run: preset or explicit shape, size and palette from the data.
pub fn resolve_model(cfg: &TrainConfig, data: &TokenFile) -> Result<ImageGptConfig> {
    let mut m = ImageGptConfig::preset(&cfg.preset)?;
    if let Some(v) = cfg.n_layer {
        m.n_layer = v;
    }
    if let Some(v) = cfg.n_embd {
        m.n_embd = v;
    }
    if let Some(v) = cfg.n_head {
        m.n_head = v;
    }
    m.n_positions = data.seq_len();
    m.vocab_size = data.colors + 1;
    // the image's width is written only when it is not the square root
    m.image_width = (data.width * data.width != data.seq_len()).then_some(data.width);
    (m.position_embedding, m.rope_theta, m.attention) = (cfg.position_embedding, cfg.rope_theta, cfg.attention);
    (m.local_rows, m.local_cols) = (cfg.local_rows, cfg.local_cols);
    m.validate("train config")?;
    Ok(m)
}

/// What a checkpoint must share with the run's configuration to resume it: the shape and
/// the architecture options.
fn shape_of(c: &ImageGptConfig) -> (usize, usize, usize, usize, usize, usize, String) {
    let variant = format!(
        "{} {} {} {}x{} theta {} window {}x{}",
        c.position_embedding.name(),
        c.attention.name(),
        c.width(),
        c.height(),
        c.width(),
        c.rope_theta,
        c.local_rows,
        c.local_cols
    );
    (c.n_layer, c.n_embd, c.n_head, c.n_inner(), c.n_positions, c.vocab_size, variant)
}

impl Task for Pretrain {
    fn metric(&self) -> &'static str {
        "val_loss"
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn data(&self) -> DataInfo {
        DataInfo::of(&self.train, &self.val, &self.palette)
    }

    fn initial_model(&self, cfg: &TrainConfig) -> Result<ImageGpt> {
        super::check_memory(&self.model)?;
        match &cfg.init {
            Some(init) => load_model_as(init, Some(ModelKind::CausalLm)),
            None => ImageGpt::init_random(self.model.clone(), ModelKind::CausalLm, cfg.seed),
        }
    }

    fn check_model(&self, model: &ImageGpt, cfg: &TrainConfig) -> Result<()> {
        if shape_of(&model.config) != shape_of(&self.model) && cfg.init.is_none() {
            return Err(Error::Invalid(format!(
                "{}: the checkpoint's shape {:?} differs from this configuration's {:?}; resume with the same flags",
                cfg.out.display(),
                shape_of(&model.config),
                shape_of(&self.model)
            )));
        }
        if model.config.n_colors() != self.train.colors || model.config.n_positions != self.train.seq_len() {
            return Err(Error::Invalid(format!(
                "model ({} colours, {} positions) does not match the data ({} colours, {}x{} images)",
                model.config.n_colors(),
                model.config.n_positions,
                self.train.colors,
                self.train.height,
                self.train.width
            )));
        }
        Ok(())
    }

    fn micro_batch(
        &self,
        model: &ImageGpt,
        _head: &[f32],
        acts: &mut TrainActs,
        grads: &mut Vec<f32>,
        _dhead: &mut [f32],
        state: &mut TrainState,
        cfg: &TrainConfig,
    ) -> Result<Losses> {
        let t = self.train.seq_len();
        let mut tokens = Vec::new();
        batches::next_batch(
            &self.train,
            &mut state.cursor,
            &mut self.order.borrow_mut(),
            cfg.seed,
            cfg.batch,
            &mut tokens,
        );
        if cfg.hflip {
            batches::hflip(&mut tokens, self.train.width, self.train.height, &mut state.rng);
        }
        let mask = (cfg.objective == Objective::Bert)
            .then(|| batches::bert_mask(cfg.batch * t, cfg.mask_prob, &mut state.rng));
        let loss = model.forward_backward(acts, grads, &tokens, cfg.batch, t, cfg.objective, mask.as_deref())?;
        Ok(Losses { loss, fields: Map::new() })
    }

    /// Mean validation loss over the first `eval_batches` batches (fixed images, fixed BERT masks).
    fn evaluate(&self, model: &ImageGpt, _head: &[f32], acts: &mut TrainActs, cfg: &TrainConfig) -> Result<Evaluation> {
        let (val, t) = (&self.val, self.val.seq_len());
        let n = (cfg.eval_batches * cfg.batch).min(val.count);
        let mut rng = Rng::new(cfg.seed ^ 0xe7a1);
        let (mut sum, mut count) = (0.0, 0usize);
        let mut tokens = vec![0u32; cfg.batch * t];
        for start in (0..n).step_by(cfg.batch) {
            let b = cfg.batch.min(n - start);
            for i in 0..b {
                val.image_into(start + i, &mut tokens[i * t..(i + 1) * t]);
            }
            let mask = (cfg.objective == Objective::Bert).then(|| batches::bert_mask(b * t, cfg.mask_prob, &mut rng));
            let loss = model.loss(acts, &tokens[..b * t], b, t, cfg.objective, mask.as_deref())?;
            sum += loss * b as f64;
            count += b;
        }
        let vl = sum / count as f64;
        let fields = json!({"val_loss": vl, "val_bits": vl / std::f64::consts::LN_2});
        Ok(Evaluation { value: vl, fields: fields.as_object().cloned().unwrap_or_default() })
    }

    fn write_best(
        &self,
        dir: &Path,
        _: &ImageGpt,
        _: &[f32],
        _: &TrainState,
        ckpt: &dyn Fn(&Path) -> Result<()>,
    ) -> Result<()> {
        ckpt(dir)
    }

    fn plot(&self, run: &Path, tokens_per_step: f64) -> Result<()> {
        super::plot_losses(run, tokens_per_step)
    }
}
