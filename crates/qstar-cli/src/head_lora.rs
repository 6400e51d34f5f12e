//! The LoRA mode of `qstar train rm` and `qstar train prm`: after the head
//! is fitted on cached states, it learns together with LoRA adapters on the
//! backbone, through the trainer's forward and backward passes. The run
//! starts from the fitted head (not from zero), with the same loss. Its
//! states are the trainer's f32 ones, while the engine that scores later
//! rounds activations to 8 bits on quantized weights; the two agree closely
//! (`qstar-train`'s hidden-state test) but not exactly, so nothing
//! guarantees the adapters improve on the head: the summary reports both.
//! The run is resumable like every training run (its checkpoints hold the
//! adapters, the head and the optimizer), and its result is the head and a
//! PEFT adapter, which the engine applies when the model scores.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use qstar_train::head_objectives::{PairwiseReward, ProcessReward, ScoredPair, ScoredSteps};
use qstar_train::optim::{AdamWConfig, Decay};
use qstar_train::reward::{PairLoss, RewardHead};
use qstar_train::run::{train_objective, Objective, StepRecord, Summary, TrainConfig};
use qstar_train::score_head::ScoreHead;
use qstar_train::{Lora, LoraConfig, Model, Sequence, Trainable, Weights};
use serde_json::json;

use crate::report::Reporter;
use crate::train::{base_model_name, read_metrics, train_error};
use crate::UsageError;

/// The adapter's directory inside the model's.
pub const ADAPTER_DIR: &str = "adapter";
/// The LoRA run's directory (checkpoints, metrics.jsonl) inside the model's.
pub const RUN_DIR: &str = "lora";

/// Settings of the LoRA phase (used with `--mode lora`).
#[derive(Args, Debug, Clone)]
pub struct LoraPhaseArgs {
    #[arg(long, default_value_t = 8, value_parser = crate::bounded(1, 1024))]
    pub lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank); default 2 × rank.
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    /// Projections that get adapters, comma-separated.
    #[arg(
        long,
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        value_delimiter = ','
    )]
    pub lora_targets: Vec<String>,
    /// Passes over the training data with the adapters.
    #[arg(long, default_value_t = 1, value_parser = crate::bounded(1, 10_000))]
    pub lora_epochs: usize,
    /// Peak learning rate of the adapters and the head (cosine schedule,
    /// 5 % warm-up).
    #[arg(long, default_value_t = 1e-4)]
    pub lora_lr: f64,
    /// Stop the LoRA phase after this many optimizer steps.
    #[arg(long, value_parser = crate::bounded(1, 100_000_000))]
    pub lora_max_steps: Option<usize>,
    /// Tokens per optimizer step.
    #[arg(long, default_value_t = 4096, value_parser = crate::bounded(1, 100_000_000))]
    pub batch_tokens: usize,
    /// Tokens per forward/backward pass (bounds the memory).
    #[arg(long, default_value_t = 1024, value_parser = crate::bounded(1, 1_000_000))]
    pub micro_tokens: usize,
    /// Longest sequence allowed (a longer one is an error naming its line,
    /// or skipped with --skip-invalid where the command has it).
    #[arg(long, default_value_t = 1024, value_parser = crate::bounded(2, 1_000_000))]
    pub max_len: usize,
    #[arg(long, default_value_t = 20, value_parser = crate::bounded(1, 100_000_000))]
    pub checkpoint_every: usize,
}

impl LoraPhaseArgs {
    fn lora(&self) -> LoraConfig {
        LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * self.lora_rank as f32),
            dropout: 0.0,
            targets: self.lora_targets.clone(),
        }
    }

    fn config(&self, lens: &[usize], weight_decay: f64, seed: u64) -> TrainConfig {
        let planned = qstar_train::run::plan(lens, self.lora_epochs, self.batch_tokens, seed).len();
        TrainConfig {
            epochs: self.lora_epochs,
            max_steps: self.lora_max_steps,
            batch_tokens: self.batch_tokens,
            micro_tokens: self.micro_tokens,
            lr: self.lora_lr,
            warmup_steps: planned / 20,
            decay: Decay::Cosine,
            min_lr_ratio: 0.0,
            max_grad_norm: 1.0,
            adamw: AdamWConfig {
                weight_decay,
                ..AdamWConfig::default()
            },
            seed,
            checkpoint_every: self.checkpoint_every,
            eval_every: 0,
        }
    }

    /// A text's tokens as a scored sequence (no token predicted), or why it
    /// cannot be one.
    pub fn sequence(&self, tokens: Vec<u32>, context: usize) -> Result<Sequence, String> {
        let n = tokens.len();
        if n == 0 {
            return Err("the text has no tokens".into());
        }
        if n > self.max_len {
            return Err(format!(
                "{n} tokens, more than the {} a sequence may have (--max-len)",
                self.max_len
            ));
        }
        if n > context {
            return Err(format!(
                "{n} tokens, more than the model's context of {context}"
            ));
        }
        Ok(Sequence {
            tokens,
            predict: vec![false; n],
        })
    }
}

/// What the LoRA phase trains on.
pub enum ScoredData {
    Pairs {
        train: Vec<ScoredPair>,
        eval: Vec<ScoredPair>,
        loss: PairLoss,
        center_coef: f64,
    },
    Steps {
        train: Vec<ScoredSteps>,
        eval: Vec<ScoredSteps>,
    },
}

impl ScoredData {
    /// Runs `f` on the run objective over this data.
    fn with_objective<R>(&self, f: impl FnOnce(&dyn Objective) -> R) -> R {
        match self {
            ScoredData::Pairs {
                train,
                eval,
                loss,
                center_coef,
            } => f(&PairwiseReward {
                data: train,
                eval,
                loss: *loss,
                center_coef: *center_coef,
            }),
            ScoredData::Steps { train, eval } => f(&ProcessReward { data: train, eval }),
        }
    }
}

/// What the phase produced.
pub struct LoraPhase {
    pub head: RewardHead,
    pub adapter: PathBuf,
    /// The adapter's settings (the starting adapter's, when there was one).
    pub lora: LoraConfig,
    pub summary: Summary,
    pub records: Vec<StepRecord>,
}

impl LoraPhase {
    /// How the adapter was trained, for the model's config.
    pub fn describe(&self, args: &LoraPhaseArgs) -> serde_json::Value {
        json!({
            "rank": self.lora.rank,
            "alpha": self.lora.alpha,
            "targets": self.lora.targets,
            "epochs": args.lora_epochs,
            "lr": args.lora_lr,
            "steps": self.summary.steps,
        })
    }
}

/// Copies the adapter a head was fitted on into the model's directory, so
/// the model does not depend on a path outside it; returns the copy.
pub fn keep_adapter(adapter: &Path, out: &Path) -> Result<PathBuf> {
    let dir = out.join(ADAPTER_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in qstar_engine::peft::adapter_files(adapter) {
        let name = file
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{}: not a file", file.display()))?;
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        qstar_train::checkpoint::write_atomic(&dir.join(name), &bytes)?;
    }
    Ok(dir)
}

/// Trains the adapters (fresh, or starting from `init_adapter`) and `head`
/// on `data` in `out/lora` (continuing a killed run there), then writes the
/// adapter to `out/adapter` and returns the trained head. `resolved` is
/// everything else the run depends on (the command's data, labels, head
/// settings, starting adapter and the model's SHA-256); the phase adds its
/// own.
#[allow(clippy::too_many_arguments)]
pub async fn train(
    args: &LoraPhaseArgs,
    model_path: &Path,
    init_adapter: Option<&Path>,
    head: RewardHead,
    data: ScoredData,
    weight_decay: f64,
    seed: u64,
    out: &Path,
    mut resolved: serde_json::Value,
    reporter: &Reporter,
) -> Result<LoraPhase> {
    let lens = data.with_objective(|o| o.lens());
    if lens.is_empty() {
        return Err(UsageError("nothing to train the adapters on".into()).into());
    }
    if let Some(dir) = init_adapter {
        let inside = |p: &Path| p.canonicalize().ok();
        if inside(dir).is_some() && inside(dir) == inside(&out.join(ADAPTER_DIR)) {
            return Err(UsageError(format!(
                "--adapter {} is where this run writes its own adapter; copy it elsewhere first",
                dir.display()
            ))
            .into());
        }
    }
    let config = args.config(&lens, weight_decay, seed);
    config.check().map_err(|e| UsageError(e.to_string()))?;
    let (model_config, weights) = Weights::from_gguf(model_path)?;
    let lora = match init_adapter {
        Some(dir) => {
            let engine_config = qstar_engine::llama::LlamaConfig::from_gguf(
                &qstar_engine::gguf::GgufFile::open(model_path)?,
            )?;
            let adapter = qstar_engine::peft::load_peft(dir, &engine_config)?;
            Lora::from_adapter(&model_config, &adapter, 0.0).map_err(UsageError)?
        }
        None => Lora::init(&model_config, args.lora(), seed).map_err(UsageError)?,
    };
    let lora_config = lora.config.clone();
    resolved["lora"] = json!(lora_config);
    resolved["lora_train"] = json!(config);
    resolved["max_len"] = json!(args.max_len);
    let run_dir = out.join(RUN_DIR);
    let text = serde_json::to_string_pretty(&resolved)?;
    let key = qstar_store::sha256_hex(text.as_bytes());
    // The directory is checked (or claimed) before its config.json is
    // written, so a refused run leaves the other run's description alone.
    qstar_train::run::open_run(&run_dir, &key).map_err(train_error)?;
    qstar_train::checkpoint::write_atomic(&run_dir.join("config.json"), text.as_bytes())?;

    let mut model = Model::new(model_config.clone(), weights, Some(lora))
        .map_err(UsageError)?
        .with_head(ScoreHead::from_reward_head(&head))
        .map_err(UsageError)?;
    let planned = qstar_train::run::plan(&lens, config.epochs, config.batch_tokens, seed).len();
    let steps = config.max_steps.map_or(planned, |m| m.min(planned));
    reporter.note(&format!(
        "training a rank-{} adapter with the head: {} examples ({} tokens), {steps} steps",
        lora_config.rank,
        lens.len(),
        lens.iter().sum::<usize>()
    ));
    let resumed = qstar_train::checkpoint::latest(&run_dir)
        .map_err(train_error)?
        .unwrap_or(0);
    let bar = reporter.progress_with_message(steps, resumed, "train", "steps");
    let dir = run_dir.clone();
    let (summary, model) = tokio::task::spawn_blocking(move || {
        let mut on_step = |done: usize, _: usize, r: &StepRecord| {
            bar.set_position(done as u64);
            bar.set_message(format!("loss {:.4}  {:.0} tok/s", r.loss, r.tok_s));
        };
        let summary = data.with_objective(|objective| {
            train_objective(
                &mut model,
                Trainable::Lora,
                objective,
                &config,
                &dir,
                &key,
                &mut on_step,
            )
        });
        bar.finish_and_clear();
        summary.map(|s| (s, model))
    })
    .await?
    .map_err(train_error)?;

    let adapter_dir = out.join(ADAPTER_DIR);
    let lora = model
        .lora
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the trained model lost its adapter"))?;
    let adapter = lora.to_adapter(&model_config, &base_model_name(model_path));
    qstar_engine::peft::save_peft(
        &adapter,
        &adapter_dir,
        model_config.n_head,
        model_config.n_head_kv,
        model_config.head_dim(),
    )?;
    let head = model
        .head
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the trained model lost its head"))?
        .to_reward_head();
    let records = read_metrics(&run_dir)?;
    Ok(LoraPhase {
        head,
        adapter: adapter_dir,
        lora: lora_config,
        summary,
        records,
    })
}

/// The phase's loss per step (and the held-out loss at its end) as
/// `loss.png` in `out`.
pub fn plot(out: &Path, title: &str, records: &[StepRecord]) -> Result<()> {
    let train: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.loss)).collect();
    let eval: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.eval_loss.map(|e| (r.step as f64, e)))
        .collect();
    Reporter::default().before_plot();
    qstar_eval::plot::loss_curve(&out.join("loss.png"), title, &train, &eval)?;
    Ok(())
}
