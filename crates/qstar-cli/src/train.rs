//! `qstar train sft`: supervised fine-tuning of the GGUF model, LoRA or
//! full, resumable from its checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use qstar_tasks::Task;
use qstar_train::optim::{AdamWConfig, Decay};
use qstar_train::run::TrainConfig;
use qstar_train::{Lora, LoraConfig, Model, Trainable, Weights};
use serde_json::json;

use crate::report::{Reporter, Text};
use crate::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    Linear,
    Constant,
}

const ALL_TARGETS: &str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

#[derive(Args, Debug)]
pub struct SftArgs {
    /// JSONL rows: TRL `prompt`/`completion` or `messages`, or `question`/`answer`.
    #[arg(long)]
    pub data: PathBuf,
    /// The run's directory: checkpoints, metrics.jsonl, loss.png, the adapter.
    #[arg(long)]
    pub out: PathBuf,
    /// Frame questions as `qstar solve --task T` does (gsm8k, arithmetic, math, serial:<kind>).
    #[arg(long)]
    pub task: Option<String>,
    /// GGUF model to train (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// LoRA rank (the default training is LoRA).
    #[arg(long, default_value_t = 8, value_parser = crate::bounded(1, 1024))]
    pub lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank); default 2 × rank.
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f32,
    /// Projections that get adapters, comma-separated.
    #[arg(long, default_value = ALL_TARGETS, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// Start from this LoRA adapter (PEFT's layout) instead of a fresh one;
    /// its rank, alpha and targets replace the --lora-* flags.
    #[arg(long, conflicts_with = "full")]
    pub init_adapter: Option<PathBuf>,
    /// Train every weight instead of an adapter.
    #[arg(long, conflicts_with_all = ["lora_alpha", "lora_dropout"])]
    pub full: bool,
    #[arg(long, default_value_t = 1, value_parser = crate::bounded(1, 10_000))]
    pub epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long, value_parser = crate::bounded(1, 100_000_000))]
    pub max_steps: Option<usize>,
    /// Peak learning rate (default 2e-4 for LoRA, 2e-5 for full fine-tuning).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// Warm-up steps (default: 5 % of the steps).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Tokens per optimizer step (gradients are accumulated up to it).
    #[arg(long, default_value_t = 2048, value_parser = crate::bounded(1, 100_000_000))]
    pub batch_tokens: usize,
    /// Tokens per forward/backward pass (bounds the memory).
    #[arg(long, default_value_t = 1024, value_parser = crate::bounded(1, 1_000_000))]
    pub micro_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest sequence allowed (a longer row is an error).
    #[arg(long, default_value_t = 2048, value_parser = crate::bounded(2, 1_000_000))]
    pub max_len: usize,
    /// Rows to measure the loss on while training.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 50, value_parser = crate::bounded(1, 100_000_000))]
    pub checkpoint_every: usize,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

fn sha256(path: &Path) -> Result<String> {
    qstar_store::sha256_of(path).with_context(|| format!("cannot read {}", path.display()))
}

fn train_error(e: qstar_train::TrainError) -> anyhow::Error {
    if e.is_input_error() {
        UsageError(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

pub async fn sft(args: SftArgs) -> Result<()> {
    let reporter = Reporter::new(args.json);
    let task = args
        .task
        .as_deref()
        .map(Task::parse)
        .transpose()
        .map_err(UsageError)?;
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => {
            let p = qstar_engine::fetch::default_model_path();
            if !p.exists() {
                reporter.note("the default model is not in the cache yet; fetching it");
                qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
            }
            p
        }
    };
    if !(0.0..1.0).contains(&args.lora_dropout) {
        return Err(UsageError("--lora-dropout takes a value in [0, 1)".into()).into());
    }
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(args.max_grad_norm) || !non_negative(args.weight_decay) {
        return Err(
            UsageError("--max-grad-norm and --weight-decay must not be negative".into()).into(),
        );
    }
    let loaded = qstar_engine::LoadedModel::load(&model_path)?;
    let data = qstar_train::data::read_sft(&args.data, &loaded, task, args.max_len)
        .map_err(train_error)?;
    let eval = match &args.eval_data {
        Some(p) => {
            qstar_train::data::read_sft(p, &loaded, task, args.max_len)
                .map_err(train_error)?
                .sequences
        }
        None => Vec::new(),
    };
    drop(loaded);

    let trainable = if args.full {
        Trainable::Full
    } else {
        Trainable::Lora
    };
    let lr = args.lr.unwrap_or(if args.full { 2e-5 } else { 2e-4 });
    let lens: Vec<usize> = data.sequences.iter().map(|s| s.tokens.len()).collect();
    let planned = qstar_train::run::plan(&lens, args.epochs, args.batch_tokens, args.seed).len();
    let steps = args.max_steps.map_or(planned, |m| m.min(planned));
    let config = TrainConfig {
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_tokens: args.batch_tokens,
        micro_tokens: args.micro_tokens,
        lr,
        warmup_steps: args.warmup_steps.unwrap_or(planned / 20),
        decay: match args.schedule {
            ScheduleArg::Cosine => Decay::Cosine,
            ScheduleArg::Linear => Decay::Linear,
            ScheduleArg::Constant => Decay::Constant,
        },
        min_lr_ratio: 0.0,
        max_grad_norm: args.max_grad_norm,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        eval_every: args.eval_every,
    };
    let lora_config = (!args.full).then(|| LoraConfig {
        rank: args.lora_rank,
        alpha: args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f32),
        dropout: args.lora_dropout,
        targets: args.lora_targets.clone(),
    });

    // Everything the run's numbers depend on; the micro-batch size is in it
    // too, since it changes the order of floating-point sums.
    let resolved = json!({
        "command": "train sft",
        "trainable": if args.full { "full" } else { "lora" },
        "lora": lora_config,
        "train": config,
        "task": task.map(|t| t.name()),
        "max_len": args.max_len,
        "model": model_path,
        "model_sha256": sha256(&model_path)?,
        "data": args.data.canonicalize().unwrap_or(args.data.clone()),
        "data_sha256": sha256(&args.data)?,
        "eval_data_sha256": args.eval_data.as_deref().map(sha256).transpose()?,
        "init_adapter_sha256": args
            .init_adapter
            .as_deref()
            .map(|d| qstar_engine::peft::adapter_files(d).map(|f| sha256(&f)))
            .map(|h| h.into_iter().collect::<Result<Vec<_>>>())
            .transpose()?,
    });
    let text = serde_json::to_string_pretty(&resolved)?;
    let key = qstar_store::sha256_hex(text.as_bytes());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    qstar_train::checkpoint::write_atomic(&args.out.join("config.json"), text.as_bytes())
        .map_err(train_error)?;

    let (model_config, weights) = Weights::from_gguf(&model_path)?;
    let lora = match (&args.init_adapter, lora_config.clone()) {
        (Some(dir), _) => {
            let engine_config = qstar_engine::llama::LlamaConfig::from_gguf(
                &qstar_engine::gguf::GgufFile::open(&model_path)?,
            )?;
            let adapter = qstar_engine::peft::load_peft(dir, &engine_config)?;
            Some(
                Lora::from_adapter(&model_config, &adapter, args.lora_dropout)
                    .map_err(UsageError)?,
            )
        }
        (None, Some(c)) => Some(Lora::init(&model_config, c, args.seed).map_err(UsageError)?),
        (None, None) => None,
    };
    let mut model = Model::new(model_config.clone(), weights, lora).map_err(UsageError)?;
    reporter.note(&format!(
        "training {} on {} sequences ({} tokens), {steps} steps",
        if args.full {
            "every weight".to_string()
        } else {
            format!("a rank-{} adapter", args.lora_rank)
        },
        data.sequences.len(),
        lens.iter().sum::<usize>(),
    ));
    let resumed = qstar_train::checkpoint::latest(&args.out)
        .map_err(train_error)?
        .unwrap_or(0);
    let bar = reporter.progress_with_message(steps, resumed, "train", "steps");
    let out = args.out.clone();
    let sequences = data.sequences;
    let (summary, model) = tokio::task::spawn_blocking(move || {
        let summary = qstar_train::train(
            &mut model,
            trainable,
            &sequences,
            &eval,
            &config,
            &out,
            &key,
            &mut |done, _, r| {
                bar.set_position(done as u64);
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", r.loss, r.tok_s));
            },
        );
        bar.finish_and_clear();
        summary.map(|s| (s, model))
    })
    .await?
    .map_err(train_error)?;

    let result = write_outputs(&args, &model, &model_config, &model_path)?;
    let metrics = read_metrics(&args.out)?;
    let train_points: Vec<(f64, f64)> = metrics.iter().map(|r| (r.step as f64, r.loss)).collect();
    let eval_points: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|r| r.eval_loss.map(|e| (r.step as f64, e)))
        .collect();
    crate::report::Reporter::default().before_plot();
    qstar_eval::plot::loss_curve(
        &args.out.join("loss.png"),
        "SFT loss",
        &train_points,
        &eval_points,
    )?;

    let figures = json!({
        "steps": summary.steps,
        "tokens": summary.tokens,
        "final_loss": summary.final_loss,
        "eval_loss": summary.eval_loss,
        "tok_s": summary.tok_s,
        "resumed_from": summary.resumed_from,
        "out": args.out,
        "result": result,
    });
    let fmt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
    let text = Text::new()
        .line(format!(
            "trained {} steps, {} tokens → {}",
            summary.steps,
            summary.tokens,
            args.out.display()
        ))
        .metrics(&[
            ("final loss", fmt(summary.final_loss)),
            ("eval loss", fmt(summary.eval_loss)),
            ("tokens/s", format!("{:.1}", summary.tok_s)),
        ]);
    reporter.summary(&figures, &text)
}

fn read_metrics(dir: &Path) -> Result<Vec<qstar_train::StepRecord>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", path.display())))
        .collect()
}

/// What PEFT's config names as the base model: the default model's hub
/// name, or the GGUF's own name.
fn base_model_name(model_path: &Path) -> String {
    if model_path == qstar_engine::fetch::default_model_path() {
        return "HuggingFaceTB/SmolLM2-135M-Instruct".into();
    }
    qstar_engine::gguf::GgufFile::open(model_path)
        .ok()
        .and_then(|g| g.string("general.name").ok())
        .unwrap_or_else(|| model_path.display().to_string())
}

/// The trained result: DIR/adapter (PEFT's layout, for `--adapter`, PEFT,
/// TRL and vLLM) for LoRA, DIR/model.gguf (Q8_0, for `--model` and
/// llama.cpp) for full fine-tuning.
fn write_outputs(
    args: &SftArgs,
    model: &Model<f32>,
    config: &qstar_train::ModelConfig,
    model_path: &Path,
) -> Result<PathBuf> {
    match &model.lora {
        Some(lora) if !args.full => {
            let dir = args.out.join("adapter");
            let adapter = lora.to_adapter(config, &base_model_name(model_path));
            qstar_engine::peft::save_peft(
                &adapter,
                &dir,
                config.n_head,
                config.n_head_kv,
                config.head_dim(),
            )?;
            Ok(dir)
        }
        _ => {
            let path = args.out.join("model.gguf");
            qstar_train::export::write_weights_gguf(
                model_path,
                &model.base,
                &path,
                candle_core::quantized::GgmlDType::Q8_0,
            )?;
            Ok(path)
        }
    }
}
