//! `qstar train sft` and `qstar train dpo`: supervised fine-tuning and
//! direct preference optimization of the GGUF model, LoRA or full,
//! resumable from their checkpoints.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use qstar_tasks::Task;
use qstar_train::dpo::{DpoConfig, DpoLoss, PreferenceSequences};
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
    /// Rows to measure the loss on while training.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[command(flatten)]
    pub training: TrainingArgs,
}

/// The model, the adapter and the optimizer: what every training command
/// takes.
#[derive(Args, Debug)]
pub struct TrainingArgs {
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
    /// Peak learning rate (default for SFT 2e-4 with LoRA, 2e-5 full; for
    /// DPO 5e-5 with LoRA, 1e-6 full).
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

pub(crate) fn train_error(e: qstar_train::TrainError) -> anyhow::Error {
    if e.is_input_error() {
        UsageError(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// The GGUF file to train: `--model`, or the default model (fetched when
/// it is not in the cache yet).
async fn model_path(args: &TrainingArgs, reporter: &Reporter) -> Result<PathBuf> {
    match &args.model {
        Some(p) => Ok(p.clone()),
        None => {
            let p = qstar_engine::fetch::default_model_path();
            if !p.exists() {
                reporter.note("the default model is not in the cache yet; fetching it");
                qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
            }
            Ok(p)
        }
    }
}

fn check_flags(args: &TrainingArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.lora_dropout) {
        return Err(UsageError("--lora-dropout takes a value in [0, 1)".into()).into());
    }
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(args.max_grad_norm) || !non_negative(args.weight_decay) {
        return Err(
            UsageError("--max-grad-norm and --weight-decay must not be negative".into()).into(),
        );
    }
    Ok(())
}

/// The run's settings for examples of `lens` tokens; `lr` is the default
/// learning rate (LoRA, full) of the command.
fn train_config(args: &TrainingArgs, lens: &[usize], lr: (f64, f64)) -> (TrainConfig, usize) {
    let planned = qstar_train::run::plan(lens, args.epochs, args.batch_tokens, args.seed).len();
    let steps = args.max_steps.map_or(planned, |m| m.min(planned));
    let config = TrainConfig {
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_tokens: args.batch_tokens,
        micro_tokens: args.micro_tokens,
        lr: args.lr.unwrap_or(if args.full { lr.1 } else { lr.0 }),
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
    (config, steps)
}

fn lora_config(args: &TrainingArgs) -> Option<LoraConfig> {
    (!args.full).then(|| LoraConfig {
        rank: args.lora_rank,
        alpha: args.lora_alpha.unwrap_or(2.0 * args.lora_rank as f32),
        dropout: args.lora_dropout,
        targets: args.lora_targets.clone(),
    })
}

/// What every run's key holds besides its command's own settings: the
/// model and its hash, the adapter it starts from, the trainer's settings.
fn resolved_common(
    args: &TrainingArgs,
    model_path: &Path,
    config: &TrainConfig,
) -> Result<serde_json::Value> {
    Ok(json!({
        "trainable": if args.full { "full" } else { "lora" },
        "lora": lora_config(args),
        "train": config,
        "max_len": args.max_len,
        "model": model_path,
        "model_sha256": sha256(model_path)?,
        "init_adapter_sha256": args
            .init_adapter
            .as_deref()
            .map(|d| qstar_engine::peft::adapter_files(d).map(|f| sha256(&f)))
            .map(|h| h.into_iter().collect::<Result<Vec<_>>>())
            .transpose()?,
    }))
}

/// Writes the run's `config.json` into `out` and returns its key.
fn write_run_config(out: &Path, resolved: &serde_json::Value) -> Result<String> {
    let text = serde_json::to_string_pretty(resolved)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    qstar_train::checkpoint::write_atomic(&out.join("config.json"), text.as_bytes())
        .map_err(train_error)?;
    Ok(qstar_store::sha256_hex(text.as_bytes()))
}

/// The model to train: the GGUF's weights with a fresh adapter, the one
/// `--init-adapter` names, or none for full fine-tuning.
fn build_model(
    args: &TrainingArgs,
    model_path: &Path,
) -> Result<(qstar_train::ModelConfig, Model<f32>)> {
    let (model_config, weights) = Weights::from_gguf(model_path)?;
    let lora = match (&args.init_adapter, lora_config(args)) {
        (Some(dir), _) => {
            let engine_config = qstar_engine::llama::LlamaConfig::from_gguf(
                &qstar_engine::gguf::GgufFile::open(model_path)?,
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
    let model = Model::new(model_config.clone(), weights, lora).map_err(UsageError)?;
    Ok((model_config, model))
}

fn trainable(args: &TrainingArgs) -> Trainable {
    if args.full {
        Trainable::Full
    } else {
        Trainable::Lora
    }
}

fn what_trains(args: &TrainingArgs) -> String {
    if args.full {
        "every weight".to_string()
    } else {
        format!("a rank-{} adapter", args.lora_rank)
    }
}

/// The loss curves of a finished run, from its metrics file, as `loss.png`.
fn plot_loss(out: &Path, title: &str) -> Result<Vec<qstar_train::StepRecord>> {
    let metrics = read_metrics(out)?;
    let train_points: Vec<(f64, f64)> = metrics.iter().map(|r| (r.step as f64, r.loss)).collect();
    let eval_points: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|r| r.eval_loss.map(|e| (r.step as f64, e)))
        .collect();
    crate::report::Reporter::default().before_plot();
    qstar_eval::plot::loss_curve(&out.join("loss.png"), title, &train_points, &eval_points)?;
    Ok(metrics)
}

fn fmt_figure(x: Option<f64>) -> String {
    x.map_or("–".to_string(), |v| format!("{v:.4}"))
}

pub async fn sft(args: SftArgs) -> Result<()> {
    let t = &args.training;
    let reporter = Reporter::new(t.json);
    let task = args
        .task
        .as_deref()
        .map(Task::parse)
        .transpose()
        .map_err(UsageError)?;
    let model_path = model_path(t, &reporter).await?;
    check_flags(t)?;
    let loaded = qstar_engine::LoadedModel::load(&model_path)?;
    let data =
        qstar_train::data::read_sft(&args.data, &loaded, task, t.max_len).map_err(train_error)?;
    let eval = match &args.eval_data {
        Some(p) => {
            qstar_train::data::read_sft(p, &loaded, task, t.max_len)
                .map_err(train_error)?
                .sequences
        }
        None => Vec::new(),
    };
    drop(loaded);

    let lens: Vec<usize> = data.sequences.iter().map(|s| s.tokens.len()).collect();
    let (config, steps) = train_config(t, &lens, (2e-4, 2e-5));
    // Everything the run's numbers depend on; the micro-batch size is in it
    // too, since it changes the order of floating-point sums.
    let mut resolved = resolved_common(t, &model_path, &config)?;
    resolved["command"] = json!("train sft");
    resolved["task"] = json!(task.map(|t| t.name()));
    resolved["data"] = json!(args.data.canonicalize().unwrap_or(args.data.clone()));
    resolved["data_sha256"] = json!(sha256(&args.data)?);
    resolved["eval_data_sha256"] = json!(args.eval_data.as_deref().map(sha256).transpose()?);
    let key = write_run_config(&args.out, &resolved)?;

    let (model_config, mut model) = build_model(t, &model_path)?;
    reporter.note(&format!(
        "training {} on {} sequences ({} tokens), {steps} steps",
        what_trains(t),
        data.sequences.len(),
        lens.iter().sum::<usize>(),
    ));
    let resumed = qstar_train::checkpoint::latest(&args.out)
        .map_err(train_error)?
        .unwrap_or(0);
    let bar = reporter.progress_with_message(steps, resumed, "train", "steps");
    let out = args.out.clone();
    let sequences = data.sequences;
    let trainable = trainable(t);
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

    let result = write_outputs(t, &args.out, &model, &model_config, &model_path)?;
    plot_loss(&args.out, "SFT loss")?;
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
    let text = Text::new()
        .line(format!(
            "trained {} steps, {} tokens → {}",
            summary.steps,
            summary.tokens,
            args.out.display()
        ))
        .metrics(&[
            ("final loss", fmt_figure(summary.final_loss)),
            ("eval loss", fmt_figure(summary.eval_loss)),
            ("tokens/s", format!("{:.1}", summary.tok_s)),
        ]);
    reporter.summary(&figures, &text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DpoLossArg {
    Sigmoid,
    Robust,
    Ipo,
    Soft,
}

#[derive(Args, Debug)]
pub struct DpoArgs {
    #[command(flatten)]
    pub source: crate::reward::PairArgs,
    /// The run's directory: checkpoints, reference.jsonl, metrics.jsonl,
    /// loss.png, the adapter.
    #[arg(long)]
    pub out: PathBuf,
    /// Strength of the KL tie to the reference (DPO's β).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// sigmoid (DPO), robust (rDPO), ipo, or soft (each pair's soft label as
    /// its target: conservative DPO with a per-pair ε = 1 − p).
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub loss: DpoLossArg,
    /// ε of the sigmoid (cDPO) and robust losses: the chance a label is wrong.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Weight of the chosen reply's per-token negative log-likelihood added
    /// to the loss (RPO).
    #[arg(long, default_value_t = 0.0)]
    pub nll_coef: f64,
    #[command(flatten)]
    pub training: TrainingArgs,
}

/// Each pair's two replies after its conversation in the chat template,
/// only the reply learned; the target is the soft label for the soft loss.
/// A pair that cannot be trained on (an empty reply, a sequence over
/// `max_len`) is an error naming its file and line, or with `skip_invalid`
/// is named on stderr and left out.
fn preference_sequences(
    pairs: &[qstar_tasks::preference::PreferencePair],
    model: &qstar_engine::LoadedModel,
    soft: bool,
    max_len: usize,
    path: &Path,
    skip_invalid: bool,
    reporter: &Reporter,
) -> Result<Vec<PreferenceSequences>> {
    let context = model.llama.config.context_length;
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        let reply = |text: &str| -> Result<qstar_train::Sequence, String> {
            let s = qstar_train::data::reply_sequence(model, &p.conversation, text)?;
            let n = s.tokens.len();
            if n > max_len {
                return Err(format!(
                    "{n} tokens, more than the {max_len} a sequence may have (--max-len)"
                ));
            }
            if n > context {
                return Err(format!(
                    "{n} tokens, more than the model's context of {context}"
                ));
            }
            Ok(s)
        };
        let at = |reason: &str| format!("{}:{}: {reason}", path.display(), p.line);
        let sequences = reply(&p.chosen).and_then(|c| Ok((c, reply(&p.rejected)?)));
        let (chosen, rejected) = match sequences {
            Ok(s) => s,
            Err(why) if skip_invalid => {
                reporter.note(&format!("{}: skipped", at(&why)));
                continue;
            }
            Err(why) => return Err(UsageError(at(&why)).into()),
        };
        // A missing soft label is a wrong flag, not a bad row: never skipped.
        let target = if soft {
            p.soft_label.ok_or_else(|| {
                UsageError(at(
                    "the soft loss needs a `soft_label` on every row (`qstar label` writes it)",
                ))
            })?
        } else {
            1.0
        };
        out.push(PreferenceSequences {
            chosen,
            rejected,
            target,
        });
    }
    Ok(out)
}

pub async fn dpo(args: DpoArgs) -> Result<()> {
    let t = &args.training;
    let reporter = Reporter::new(t.json);
    check_flags(t)?;
    let dpo = DpoConfig {
        beta: args.beta,
        loss: match args.loss {
            DpoLossArg::Sigmoid => DpoLoss::Sigmoid,
            DpoLossArg::Robust => DpoLoss::Robust,
            DpoLossArg::Ipo => DpoLoss::Ipo,
            DpoLossArg::Soft => DpoLoss::Soft,
        },
        label_smoothing: args.label_smoothing,
        nll_coef: args.nll_coef,
    };
    dpo.check().map_err(UsageError)?;
    let model_path = model_path(t, &reporter).await?;
    let source = &args.source;
    let split = source.read(&reporter)?;
    let (pairs, eval_pairs, eval_path) = (split.train, split.eval, split.eval_path);
    let soft = dpo.loss == DpoLoss::Soft;
    let loaded = qstar_engine::LoadedModel::load(&model_path)?;
    let convert = |pairs, path| {
        preference_sequences(
            pairs,
            &loaded,
            soft,
            t.max_len,
            path,
            source.skip_invalid,
            &reporter,
        )
    };
    let train = convert(&pairs, &source.pairs)?;
    let eval = convert(&eval_pairs, &eval_path)?;
    if train.is_empty() {
        return Err(UsageError(format!("{}: no pair to train on", source.pairs.display())).into());
    }
    drop(loaded);

    let lens: Vec<usize> = train.iter().map(PreferenceSequences::tokens).collect();
    let (config, steps) = train_config(t, &lens, (5e-5, 1e-6));
    let mut resolved = resolved_common(t, &model_path, &config)?;
    resolved["command"] = json!("train dpo");
    resolved["dpo"] = json!(dpo);
    resolved["pairs"] = json!(source.pairs.canonicalize().unwrap_or(source.pairs.clone()));
    resolved["pairs_sha256"] = json!(sha256(&source.pairs)?);
    resolved["limit"] = json!(source.limit);
    resolved["skip_invalid"] = json!(source.skip_invalid);
    resolved["holdout"] = json!(source.holdout);
    resolved["eval_pairs_sha256"] = json!(source.eval_pairs.as_deref().map(sha256).transpose()?);
    let key = write_run_config(&args.out, &resolved)?;

    let (model_config, mut model) = build_model(t, &model_path)?;
    reporter.note(&format!(
        "training {} with DPO on {} pairs ({} tokens), {steps} steps",
        what_trains(t),
        train.len(),
        lens.iter().sum::<usize>(),
    ));
    let resumed = qstar_train::checkpoint::latest(&args.out)
        .map_err(train_error)?
        .unwrap_or(0);
    let reference_bar =
        reporter.progress_with_message(train.len() + eval.len(), 0, "reference", "pairs");
    let out = args.out.clone();
    let trainable = trainable(t);
    let progress = reporter;
    let (summary, model) = tokio::task::spawn_blocking(move || {
        let mut bar = None;
        let summary = qstar_train::dpo::train_dpo(
            &mut model,
            trainable,
            &dpo,
            &train,
            &eval,
            &config,
            &out,
            &key,
            &mut |done, _| reference_bar.set_position(done as u64),
            &mut |done, _, r| {
                let bar = bar.get_or_insert_with(|| {
                    reference_bar.finish_and_clear();
                    progress.progress_with_message(steps, resumed, "train", "steps")
                });
                bar.set_position(done as u64);
                bar.set_message(format!(
                    "loss {:.4}  reward accuracy {:.2}  {:.0} tok/s",
                    r.loss,
                    r.metrics
                        .get("rewards/accuracies")
                        .copied()
                        .unwrap_or(f64::NAN),
                    r.tok_s
                ));
            },
        );
        reference_bar.finish_and_clear();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        summary.map(|s| (s, model))
    })
    .await?
    .map_err(train_error)?;

    let result = write_outputs(t, &args.out, &model, &model_config, &model_path)?;
    let metrics = plot_loss(&args.out, "DPO loss")?;
    let last_eval = metrics
        .iter()
        .rev()
        .find(|r| r.eval_loss.is_some())
        .map(|r| r.metrics.clone())
        .unwrap_or_default();
    let last = metrics
        .last()
        .map(|r| r.metrics.clone())
        .unwrap_or_default();
    let figure = |m: &qstar_train::run::Metrics, k: &str| m.get(k).copied();
    let figures = json!({
        "steps": summary.steps,
        "tokens": summary.tokens,
        "final_loss": summary.final_loss,
        "reward_accuracy": figure(&last, "rewards/accuracies"),
        "eval_loss": summary.eval_loss,
        "eval_reward_accuracy": figure(&last_eval, "eval_rewards/accuracies"),
        "eval_reward_margin": figure(&last_eval, "eval_rewards/margins"),
        "eval_logps_chosen": figure(&last_eval, "eval_logps/chosen"),
        "eval_logps_rejected": figure(&last_eval, "eval_logps/rejected"),
        "tok_s": summary.tok_s,
        "resumed_from": summary.resumed_from,
        "out": args.out,
        "result": result,
    });
    let text = Text::new()
        .line(format!(
            "trained {} steps with DPO ({:?}, β = {}), {} tokens → {}",
            summary.steps,
            args.loss,
            args.beta,
            summary.tokens,
            args.out.display()
        ))
        .metrics(&[
            ("final loss", fmt_figure(summary.final_loss)),
            (
                "reward accuracy",
                fmt_figure(figure(&last, "rewards/accuracies")),
            ),
            ("eval loss", fmt_figure(summary.eval_loss)),
            (
                "eval reward accuracy",
                fmt_figure(figure(&last_eval, "eval_rewards/accuracies")),
            ),
            (
                "eval reward margin",
                fmt_figure(figure(&last_eval, "eval_rewards/margins")),
            ),
            ("tokens/s", format!("{:.1}", summary.tok_s)),
        ]);
    reporter.summary(&figures, &text)
}

pub(crate) fn read_metrics(dir: &Path) -> Result<Vec<qstar_train::StepRecord>> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: bad line", path.display())))
        .collect()
}

/// What PEFT's config names as the base model: the default model's hub
/// name, or the GGUF's own name.
pub(crate) fn base_model_name(model_path: &Path) -> String {
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
    args: &TrainingArgs,
    out: &Path,
    model: &Model<f32>,
    config: &qstar_train::ModelConfig,
    model_path: &Path,
) -> Result<PathBuf> {
    match &model.lora {
        Some(lora) if !args.full => {
            let dir = out.join("adapter");
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
            let path = out.join("model.gguf");
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
