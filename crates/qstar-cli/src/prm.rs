//! `qstar train prm`: a process reward model, a scalar head on the
//! backbone's state at the end of each step, trained on step labels
//! (`qstar label-steps`, TRL's stepwise rows, or PRM800K's raw records), with
//! cross-entropy on the soft labels or the hard ones. In search it is the
//! `prm-model:DIR` verifier: a step's score is σ(head(state)), read at the
//! end of the same text the search has written, so training and use see the
//! same tokens.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use qstar_core::PromptFormat;
use qstar_train::head_objectives::ScoredSteps;
use qstar_train::process_reward::{train_step_head, FeatureStep};
use qstar_train::reward::{HeadTraining, RewardHead};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::report::{Reporter, Text};
use crate::reward::{
    adapter_sha256, check_adapter, load_checked_head, read_config, remove_config, save_head,
    sha256, write_config, FeatureArgs, Features, RmMode,
};
use crate::{non_empty, UsageError};

pub const PRM_CONFIG_FILE: &str = "prm_model.json";

#[derive(Args)]
pub struct TrainPrmArgs {
    /// Labelled steps (JSONL): `qstar label-steps` output, TRL stepwise
    /// rows (`prompt`, `completions`, `labels`), or PRM800K's raw records
    /// (every rated step; see the README).
    #[arg(long)]
    pub steps: PathBuf,
    /// The model's directory: reward_head.safetensors, prm_model.json,
    /// metrics.jsonl, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Train on each step's soft label (the fraction of rollouts that reach
    /// the right answer) instead of its hard label.
    #[arg(long)]
    pub soft: bool,
    /// Hold out the solutions of the last N questions for evaluation (by
    /// question, so no step of a held-out question is trained on).
    #[arg(long)]
    pub holdout: Option<usize>,
    /// Read at most this many rows (PRM800K: records).
    #[arg(long)]
    pub limit: Option<usize>,
    /// What joins the steps into the solution text (the search's step
    /// delimiter; TRL's rows carry none).
    #[arg(long, default_value = "\n\n", value_parser = non_empty("--step-delimiter"))]
    pub step_delimiter: String,
    #[arg(long, default_value_t = 30, value_parser = crate::bounded(1, 100_000))]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Steps per batch.
    #[arg(long, default_value_t = 64, value_parser = crate::bounded(1, 1_000_000))]
    pub batch_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// head: only the head learns, on cached states; lora: the head is
    /// fitted so, then learns together with LoRA adapters (--lora-*).
    #[arg(long, value_enum, default_value = "head")]
    pub mode: RmMode,
    #[command(flatten)]
    pub features: FeatureArgs,
    #[command(flatten)]
    pub lora: crate::head_lora::LoraPhaseArgs,
    #[arg(long)]
    pub json: bool,
}

/// One labelled solution of the input.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub line: usize,
    /// The user's turn (the question as search frames it).
    pub prompt: String,
    pub completions: Vec<String>,
    pub labels: Vec<bool>,
    pub soft_labels: Option<Vec<f64>>,
    /// Steps before this one are context only, not training targets (a
    /// PRM800K branch repeats the walk that led to it, which its own row
    /// already trains on).
    pub scored_from: usize,
}

/// Reads one stepwise row; the error says what is wrong with it.
fn step_row(value: &Value, line: usize) -> Result<StepRow, String> {
    let prompt = value
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or("missing string field \"prompt\"")?;
    let completions: Vec<String> = value
        .get("completions")
        .and_then(Value::as_array)
        .ok_or("missing array field \"completions\"")?
        .iter()
        .map(|c| c.as_str().map(String::from))
        .collect::<Option<_>>()
        .ok_or("\"completions\" must hold strings")?;
    let labels: Vec<bool> = value
        .get("labels")
        .and_then(Value::as_array)
        .ok_or("missing array field \"labels\"")?
        .iter()
        .map(Value::as_bool)
        .collect::<Option<_>>()
        .ok_or("\"labels\" must hold true or false")?;
    if completions.is_empty() {
        return Err("no steps in \"completions\"".into());
    }
    if labels.len() != completions.len() {
        return Err(format!(
            "{} labels for {} steps",
            labels.len(),
            completions.len()
        ));
    }
    let soft_labels = match value.get("soft_labels") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let soft: Vec<f64> = v
                .as_array()
                .ok_or("\"soft_labels\" must be an array")?
                .iter()
                .map(Value::as_f64)
                .collect::<Option<_>>()
                .ok_or("\"soft_labels\" must hold numbers")?;
            if soft.len() != completions.len() {
                return Err(format!(
                    "{} soft labels for {} steps",
                    soft.len(),
                    completions.len()
                ));
            }
            if soft.iter().any(|p| !(0.0..=1.0).contains(p)) {
                return Err("a soft label lies outside [0, 1]".into());
            }
            Some(soft)
        }
    };
    Ok(StepRow {
        line,
        prompt: prompt.to_string(),
        completions,
        labels,
        soft_labels,
        scored_from: 0,
    })
}

/// The rows of a stepwise file, or of PRM800K's raw records (each giving
/// several rows, see [`crate::prm800k`]; `limit` then counts records); a bad
/// line is an error naming it.
pub fn read_step_rows(path: &Path, limit: Option<usize>) -> Result<Vec<StepRow>> {
    let rows: Vec<StepRow> = qstar_tasks::read_json_rows(path, limit, |value, line| {
        if crate::prm800k::is_prm800k_record(&value) {
            crate::prm800k::rows_from_record(&value, line)
        } else {
            step_row(&value, line).map(|row| vec![row])
        }
    })
    .map_err(|e| UsageError(e.to_string()))?
    .into_iter()
    .flatten()
    .collect();
    if rows.is_empty() {
        return Err(UsageError(format!("{}: no labelled steps", path.display())).into());
    }
    Ok(rows)
}

/// Splits off the rows of the last `n` distinct questions (prompts), for
/// evaluation.
fn hold_out_questions(rows: Vec<StepRow>, n: usize) -> Result<(Vec<StepRow>, Vec<StepRow>)> {
    let mut prompts: Vec<&str> = Vec::new();
    for r in &rows {
        if !prompts.contains(&r.prompt.as_str()) {
            prompts.push(&r.prompt);
        }
    }
    if n == 0 {
        return Ok((rows, Vec::new()));
    }
    if n >= prompts.len() {
        return Err(UsageError(format!(
            "--holdout {n} leaves nothing to train on ({} questions)",
            prompts.len()
        ))
        .into());
    }
    let held: Vec<String> = prompts[prompts.len() - n..]
        .iter()
        .map(|p| p.to_string())
        .collect();
    Ok(rows.into_iter().partition(|r| !held.contains(&r.prompt)))
}

/// The text whose last state scores step `i` of a solution: the prompt as
/// search frames it, then the steps so far, each but the last one of the
/// solution ended by the delimiter (as search writes them).
pub fn step_texts(framed_prompt: &str, completions: &[String], delimiter: &str) -> Vec<String> {
    let mut text = framed_prompt.to_string();
    let mut out = Vec::with_capacity(completions.len());
    for (i, step) in completions.iter().enumerate() {
        text.push_str(step);
        if i + 1 < completions.len() {
            text.push_str(delimiter);
        }
        out.push(text.clone());
    }
    out
}

/// What `prm_model.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrmConfig {
    pub base_model: PathBuf,
    pub base_model_sha256: String,
    pub step_delimiter: String,
    pub width: usize,
    pub labels: String,
    pub training: StepTraining,
    pub train_steps: usize,
    pub eval_steps: usize,
    pub steps_sha256: String,
    #[serde(default = "head_mode")]
    pub mode: RmMode,
    /// The head file's SHA-256 (see `RewardModelConfig::head_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha256: Option<String>,
    /// With an adapter (`--mode lora` or `--adapter`): its directory inside
    /// the model's, the hash of its files, and how it was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<Value>,
}

/// Models written before the LoRA mode are head-only.
fn head_mode() -> RmMode {
    RmMode::Head
}

/// How the step head was trained (the optimizer settings of
/// [`HeadTraining`] that apply to a pointwise loss).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTraining {
    pub epochs: usize,
    pub batch_steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

/// The user turn framed as search frames it (chat, generation prompt on).
fn framed_prompt(features: &Features, user_turn: &str) -> Result<String> {
    Ok(PromptFormat::Chat.frame(features.engine(), user_turn, "")?)
}

/// The targets of a row's scored steps (from `scored_from` on): its soft
/// labels or its hard ones.
fn row_targets(row: &StepRow, soft: bool) -> Result<Vec<f64>> {
    let from = row.scored_from;
    Ok(match (&row.soft_labels, soft) {
        (Some(s), true) => s.iter().skip(from).copied().collect(),
        (None, true) => {
            return Err(UsageError(format!(
                "line {}: --soft needs \"soft_labels\" (qstar label-steps writes them)",
                row.line
            ))
            .into())
        }
        (_, false) => row
            .labels
            .iter()
            .skip(from)
            .map(|&l| f64::from(u8::from(l)))
            .collect(),
    })
}

async fn feature_steps(
    features: &Features,
    rows: &[StepRow],
    delimiter: &str,
    soft: bool,
    reporter: &Reporter,
) -> Result<Vec<FeatureStep>> {
    let mut texts = Vec::new();
    let mut targets = Vec::new();
    for row in rows {
        let prompt = framed_prompt(features, &row.prompt)?;
        texts.extend(
            step_texts(&prompt, &row.completions, delimiter)
                .into_iter()
                .skip(row.scored_from),
        );
        targets.extend(row_targets(row, soft)?);
    }
    let states = features.states(&texts, Some(reporter)).await?;
    Ok(states
        .into_iter()
        .zip(targets)
        .map(|(state, target)| FeatureStep { state, target })
        .collect())
}

pub async fn train_prm(args: TrainPrmArgs) -> Result<()> {
    let reporter = Reporter::new(args.json);
    let training = HeadTraining {
        epochs: args.epochs,
        batch_pairs: args.batch_steps,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        ..HeadTraining::default()
    };
    training.check().map_err(UsageError)?;
    let rows = read_step_rows(&args.steps, args.limit)?;
    let (rows, eval_rows) = hold_out_questions(rows, args.holdout.unwrap_or(0))?;
    let features = Features::open(
        args.features.model.as_deref(),
        args.features.threads,
        args.features.feature_cache.as_deref(),
        None,
        None,
        args.features.adapter.as_deref(),
    )
    .await?;
    let delimiter = args.step_delimiter.replace("\\n", "\n");
    // Held-out steps are judged against the labels of the kind trained on
    // (soft or hard), so the two losses are comparable across runs of one
    // kind; accuracy is whether σ(z) falls on the label's side of 1/2.
    let train = feature_steps(&features, &rows, &delimiter, args.soft, &reporter).await?;
    let eval = feature_steps(&features, &eval_rows, &delimiter, args.soft, &reporter).await?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    remove_config(&args.out, PRM_CONFIG_FILE)?;
    let mut log = String::new();
    let bar = reporter.progress(args.epochs, 0, "train prm", "epochs");
    let (head, records) = train_step_head(&train, &eval, &training, |r| {
        log.push_str(&serde_json::to_string(r).unwrap_or_default());
        log.push('\n');
        bar.inc(1);
    })
    .map_err(UsageError)?;
    bar.finish_and_clear();
    qstar_train::checkpoint::write_atomic(&args.out.join("metrics.jsonl"), log.as_bytes())?;
    let mut config = PrmConfig {
        base_model: features.model_path.clone(),
        base_model_sha256: features.model_sha256.clone(),
        step_delimiter: delimiter.clone(),
        width: head.width(),
        labels: if args.soft { "soft" } else { "hard" }.into(),
        training: StepTraining {
            epochs: training.epochs,
            batch_steps: training.batch_pairs,
            lr: training.lr,
            weight_decay: training.weight_decay,
            seed: training.seed,
        },
        train_steps: train.len(),
        eval_steps: eval.len(),
        steps_sha256: sha256(&args.steps)?,
        mode: args.mode,
        head_sha256: None,
        adapter: None,
        adapter_sha256: None,
        lora: None,
    };
    let last = records.last();
    let head_figures = (
        last.map(|r| r.train_accuracy),
        last.and_then(|r| r.eval_loss),
        last.and_then(|r| r.eval_accuracy),
    );
    let (train_accuracy, eval_loss, eval_accuracy, lora_figures) = match args.mode {
        RmMode::Head => {
            config.head_sha256 = Some(save_head(&head, &args.out)?);
            if let Some(adapter) = &args.features.adapter {
                let kept = crate::head_lora::keep_adapter(adapter, &args.out)?;
                config.adapter = Some(crate::head_lora::ADAPTER_DIR.into());
                config.adapter_sha256 = Some(adapter_sha256(&kept)?);
            }
            let curve =
                |f: &dyn Fn(&qstar_train::reward::EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
                    records
                        .iter()
                        .filter_map(|r| f(r).map(|l| (r.epoch as f64, l)))
                        .collect()
                };
            reporter.before_plot();
            qstar_eval::plot::loss_curve(
                &args.out.join("loss.png"),
                "process reward model: step cross-entropy per epoch",
                &curve(&|r| Some(r.train_loss)),
                &curve(&|r| r.eval_loss),
            )?;
            (head_figures.0, head_figures.1, head_figures.2, None)
        }
        RmMode::Lora => {
            let data = crate::head_lora::ScoredData::Steps {
                train: scored_steps(&features, &rows, &delimiter, args.soft, &args, &reporter)?,
                eval: scored_steps(
                    &features, &eval_rows, &delimiter, args.soft, &args, &reporter,
                )?,
            };
            let resolved = json!({
                "command": "train prm --mode lora",
                "steps_sha256": config.steps_sha256,
                "limit": args.limit,
                "holdout": args.holdout,
                "labels": config.labels,
                "step_delimiter": delimiter,
                "head_training": config.training,
                "init_adapter_sha256": features.adapter_sha256,
                "model_sha256": features.model_sha256,
            });
            let model_path = features.model_path.clone();
            drop(features);
            let phase = crate::head_lora::train(
                &args.lora,
                &model_path,
                args.features.adapter.as_deref(),
                head,
                data,
                args.weight_decay,
                args.seed,
                &args.out,
                resolved,
                &reporter,
            )
            .await?;
            config.head_sha256 = Some(save_head(&phase.head, &args.out)?);
            crate::head_lora::plot(
                &args.out,
                "process reward model with LoRA: step cross-entropy per step",
                &phase.records,
            )?;
            config.adapter = Some(crate::head_lora::ADAPTER_DIR.into());
            config.adapter_sha256 = Some(adapter_sha256(&phase.adapter)?);
            config.lora = Some(phase.describe(&args.lora));
            write_config(&args.out, PRM_CONFIG_FILE, &config)?;
            // The figures are the engine's, with the adapter applied, as
            // search sees the model.
            let prm = ProcessRewardModel::open(&args.out, args.features.threads).await?;
            let measure = |steps: &[FeatureStep]| -> (f64, f64) {
                let refs: Vec<&FeatureStep> = steps.iter().collect();
                let (loss, _, _) = qstar_train::process_reward::step_batch_loss(&prm.head, &refs);
                let right: f64 = steps
                    .iter()
                    .map(|s| {
                        let z = prm.head.reward(&s.state);
                        if z == 0.0 {
                            0.5
                        } else {
                            f64::from(u8::from((z > 0.0) == (s.target >= 0.5)))
                        }
                    })
                    .sum();
                (loss, right / steps.len().max(1) as f64)
            };
            let train_after =
                feature_steps(&prm.features, &rows, &delimiter, args.soft, &reporter).await?;
            let eval_after =
                feature_steps(&prm.features, &eval_rows, &delimiter, args.soft, &reporter).await?;
            let (_, train_accuracy) = measure(&train_after);
            let (eval_loss, eval_accuracy) = if eval_after.is_empty() {
                (None, None)
            } else {
                let (l, a) = measure(&eval_after);
                (Some(l), Some(a))
            };
            let figures = json!({
                "steps": phase.summary.steps,
                "tokens": phase.summary.tokens,
                "tok_s": phase.summary.tok_s,
                "resumed_from": phase.summary.resumed_from,
                "final_loss": phase.summary.final_loss,
                "head_only_eval_accuracy": head_figures.2,
            });
            (
                Some(train_accuracy),
                eval_loss,
                eval_accuracy,
                Some(figures),
            )
        }
    };
    write_config(&args.out, PRM_CONFIG_FILE, &config)?;
    let figures = json!({
        "mode": args.mode,
        "train_solutions": rows.len(),
        "train_steps": train.len(),
        "eval_solutions": eval_rows.len(),
        "eval_steps": eval.len(),
        "labels": config.labels,
        "epochs": args.epochs,
        "final_train_loss": last.map(|r| r.train_loss),
        "train_accuracy": train_accuracy,
        "eval_loss": eval_loss,
        "eval_accuracy": eval_accuracy,
        "lora": lora_figures,
        "out": args.out,
    });
    let fmt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
    let mut lines = vec![
        (
            match args.mode {
                RmMode::Head => "final train loss",
                RmMode::Lora => "final train loss (head phase)",
            },
            fmt(last.map(|r| r.train_loss)),
        ),
        ("train step accuracy", fmt(train_accuracy)),
        ("eval steps", eval.len().to_string()),
        ("eval loss", fmt(eval_loss)),
        ("eval step accuracy", fmt(eval_accuracy)),
    ];
    if args.mode == RmMode::Lora {
        lines.push(("eval step accuracy, head only", fmt(head_figures.2)));
    }
    let text = Text::new()
        .line(format!(
            "trained a step head{} on {} steps of {} solutions ({} labels) → {}",
            if args.mode == RmMode::Lora {
                " and LoRA adapter"
            } else {
                ""
            },
            train.len(),
            rows.len(),
            config.labels,
            args.out.display()
        ))
        .metrics(&lines);
    reporter.summary(&figures, &text)
}

/// Each row's solution as one token sequence for the LoRA phase, scored at
/// the last token of each of its scored steps. A step whose text does not
/// tokenize to a prefix of the whole solution's tokens (a token spanning
/// the step's end) is scored in a sequence of its own, so every state is
/// the one search reads at the end of that text. A solution too long to
/// train on is an error naming its line.
fn scored_steps(
    features: &Features,
    rows: &[StepRow],
    delimiter: &str,
    soft: bool,
    args: &TrainPrmArgs,
    reporter: &Reporter,
) -> Result<Vec<ScoredSteps>> {
    let engine = features.engine();
    let context = engine.info().config.context_length;
    let mut out = Vec::new();
    let mut apart = 0;
    for row in rows {
        let at = |why: String| UsageError(format!("{}:{}: {why}", args.steps.display(), row.line));
        let prompt = framed_prompt(features, &row.prompt)?;
        let texts = step_texts(&prompt, &row.completions, delimiter);
        let targets = row_targets(row, soft)?;
        let Some(whole_text) = texts.last() else {
            continue;
        };
        let whole = engine.tokenize(whole_text, true);
        let mut ends = Vec::new();
        for (text, target) in texts.iter().skip(row.scored_from).zip(targets) {
            let tokens = engine.tokenize(text, true);
            if tokens.is_empty() {
                return Err(at("a step's text has no tokens".into()).into());
            }
            if whole.starts_with(&tokens) {
                ends.push((tokens.len() - 1, target));
            } else {
                apart += 1;
                let n = tokens.len();
                out.push(ScoredSteps {
                    sequence: args.lora.sequence(tokens, context).map_err(at)?,
                    ends: vec![(n - 1, target)],
                });
            }
        }
        if !ends.is_empty() {
            out.push(ScoredSteps {
                sequence: args.lora.sequence(whole, context).map_err(at)?,
                ends,
            });
        }
    }
    if apart > 0 {
        reporter.note(&format!(
            "{apart} steps end inside a token of the text after them; each is scored in a sequence of its own"
        ));
    }
    Ok(out)
}

/// A trained process reward model ready to score steps.
pub struct ProcessRewardModel {
    pub config: PrmConfig,
    pub head: RewardHead,
    pub features: Features,
}

impl ProcessRewardModel {
    pub async fn open(dir: &Path, threads: usize) -> Result<Self> {
        let config: PrmConfig = read_config(&dir.join(PRM_CONFIG_FILE))?;
        let head = load_checked_head(dir, config.width, &config.head_sha256)?;
        let adapter = config.adapter.as_ref().map(|a| dir.join(a));
        let mut features = Features::open(
            Some(&config.base_model),
            threads,
            None,
            None,
            Some(&config.base_model_sha256),
            adapter.as_deref(),
        )
        .await?;
        check_adapter(dir, &config.adapter_sha256, &features)?;
        // Search scores steps that never recur.
        features.stop_caching_new_states();
        Ok(ProcessRewardModel {
            config,
            head,
            features,
        })
    }

    /// What records scored by this model depend on.
    pub fn fingerprint(&self, dir: &Path) -> Result<Value> {
        let mut f = json!({
            "dir": dir,
            "head_sha256": sha256(&dir.join(qstar_train::reward::HEAD_FILE))?,
            "base_model_sha256": self.config.base_model_sha256,
            "step_delimiter": self.config.step_delimiter,
        });
        self.features.add_adapter_to(&mut f);
        Ok(f)
    }
}

#[async_trait::async_trait]
impl qstar_search::StepRewarder for ProcessRewardModel {
    async fn step_logits(
        &self,
        user_turn: &str,
        solutions: &[String],
    ) -> Result<(Vec<f64>, qstar_core::Usage), String> {
        // Framed as in training: the prompt this model's chat template
        // renders, then the steps exactly as search wrote them.
        let prompt = framed_prompt(&self.features, user_turn).map_err(|e| format!("{e:#}"))?;
        let texts: Vec<String> = solutions.iter().map(|s| prompt.clone() + s).collect();
        let (states, usage) = self
            .features
            .states_metered(&texts, None)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let logits = states
            .iter()
            .map(|h| {
                self.head.check_width(h)?;
                Ok(self.head.reward(h))
            })
            .collect::<Result<_, String>>()?;
        Ok((logits, usage))
    }

    fn parameters(&self) -> Option<u64> {
        Some(self.features.parameters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_texts_end_as_search_writes_them() {
        let steps = vec!["12 + 34 = 46".to_string(), "46 + 5 = 51".to_string()];
        assert_eq!(
            step_texts("P:", &steps, "\n"),
            vec![
                "P:12 + 34 = 46\n".to_string(),
                "P:12 + 34 = 46\n46 + 5 = 51".to_string()
            ]
        );
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let cases = [
            (json!({"completions": ["a"], "labels": [true]}), "prompt"),
            (
                json!({"prompt": "q", "completions": ["a", "b"], "labels": [true]}),
                "1 labels for 2 steps",
            ),
            (
                json!({"prompt": "q", "completions": [], "labels": []}),
                "no steps",
            ),
            (
                json!({"prompt": "q", "completions": ["a"], "labels": [1]}),
                "true or false",
            ),
            (
                json!({"prompt": "q", "completions": ["a"], "labels": [true], "soft_labels": [1.5]}),
                "outside",
            ),
        ];
        for (row, word) in cases {
            let err = step_row(&row, 1).expect_err("refused");
            assert!(err.contains(word), "{row}: {err}");
        }
        let ok = step_row(
            &json!({"prompt": "q", "completions": ["a", "b"], "labels": [true, false], "soft_labels": [0.5, 0.0]}),
            3,
        )
        .expect("a good row");
        assert_eq!(ok.soft_labels, Some(vec![0.5, 0.0]));
    }
}
