//! `qstar label` and `qstar eval labels`: AI preference labels for pairs,
//! committed record by record to a store so a stopped run resumes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use qstar_eval::label_metrics;
use qstar_feedback::cai::Judgement;
use qstar_feedback::{
    rated_pair_record, CaiConfig, CaiLabeler, Constitution, LabelRecord, PairLabel,
    PrincipleChoice, PromptFormat,
};
use qstar_tasks::{PreferencePair, RowLayout, TrlForm};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backend::BackendArgs;
pub(crate) use crate::job::sibling;
use crate::job::{add_fingerprint, open_store, Finished, Job};
use crate::prompts::{PromptArgs, PromptSet};
use crate::report::{Reporter, Text};
use crate::{bounded, UsageError};

/// The most replies `judge` samples per prompt.
pub const MAX_SAMPLES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Constitutional-AI multiple choice under sampled principles.
    Cai,
    /// Google-style RLAIF: "Response 1/2" and "Preferred Response=".
    Rlaif,
    /// CAI with a sampled chain of thought; probabilities clamped.
    Cot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Chat,
    Plain,
}

/// What every job over preference pairs takes.
#[derive(Args)]
pub struct PairJobArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Pairs: HH-RLHF transcripts or TRL rows (JSONL).
    #[arg(long)]
    input: PathBuf,
    /// Results (JSONL), written when the job ends.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    limit: Option<usize>,
    /// Put malformed input lines in a reject file instead of stopping.
    #[arg(long)]
    skip_invalid: bool,
    /// How prompts reach the model: its chat template, or plain text.
    #[arg(long, value_enum, default_value = "chat")]
    prompt_format: Format,
    /// Pairs sent to the model together.
    #[arg(long, default_value_t = 8)]
    batch_pairs: usize,
    /// Where finished records are kept (default: OUT.store.sqlite).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Flags from a TOML file whose keys are flag names (`principles =
    /// "all"`, `no_debias = true`); flags on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// How TRL preference rows are written: TRL's standard form (`prompt`,
/// `chosen` and `rejected` as strings) or its conversational form (all
/// three as lists of messages); `auto` keeps the input's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowForm {
    Auto,
    Standard,
    Conversational,
}

impl RowForm {
    /// The form to write for `input`: the one asked for, or under `auto`
    /// the form of the input's first row. A row is conversational when its
    /// prompt or a reply is a list of messages, or when it is an HH-RLHF
    /// transcript pair; a prompt given as text is the standard form. An
    /// unreadable input gives `conversational` (the reader then reports it).
    fn resolve(self, input: &Path) -> RowForm {
        if self != RowForm::Auto {
            return self;
        }
        let first = std::fs::File::open(input).ok().and_then(|f| {
            use std::io::BufRead;
            std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .find(|l| !l.trim().is_empty())
        });
        let Some(row) = first.and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        else {
            return RowForm::Conversational;
        };
        match TrlForm::of_row(&row) {
            TrlForm::Standard => RowForm::Standard,
            TrlForm::Conversational => RowForm::Conversational,
        }
    }

    /// The TRL form of a resolved choice.
    fn trl_form(self) -> TrlForm {
        match self {
            RowForm::Standard => TrlForm::Standard,
            RowForm::Auto | RowForm::Conversational => TrlForm::Conversational,
        }
    }
}

impl From<Format> for PromptFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Chat => PromptFormat::Chat,
            Format::Plain => PromptFormat::Plain,
        }
    }
}

impl PairJobArgs {
    fn format(&self) -> PromptFormat {
        self.prompt_format.into()
    }
}

#[derive(Args)]
pub struct LabelArgs {
    #[command(flatten)]
    job: PairJobArgs,
    #[arg(long, value_enum, default_value = "cai")]
    method: Method,
    /// Principles per pair: a number (sampled, seeded) or `all`.
    #[arg(long, default_value = "1")]
    principles: String,
    /// Score only the presented order instead of averaging both.
    #[arg(long)]
    no_debias: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A constitution file (TOML or JSON); default: qstar's own.
    #[arg(long)]
    constitution: Option<PathBuf>,
    /// Bounds of chain-of-thought probabilities (low ≤ high, in [0, 1]).
    #[arg(long, default_value_t = 0.4, value_parser = probability)]
    clamp_low: f64,
    #[arg(long, default_value_t = 0.6, value_parser = probability)]
    clamp_high: f64,
    /// Longest chain of thought, in tokens.
    #[arg(long, default_value_t = 96)]
    rationale_tokens: usize,
    /// Worked examples from the constitution shown before each question.
    #[arg(long, default_value_t = 0)]
    few_shot: usize,
    /// RLAIF: sample a rationale before the preference.
    #[arg(long)]
    rationale: bool,
    /// Put the principle after the replies (faster with the prefix cache:
    /// a pair's questions then share both replies).
    #[arg(long)]
    principle_last: bool,
    /// Output keys: TRL (prompt/chosen/rejected) or OpenRLHF (chosen and
    /// rejected as whole conversations).
    #[arg(long, value_enum, default_value = "trl")]
    keys: Keys,
    /// TRL rows: standard (strings), conversational (message lists) or
    /// auto (the input's form).
    #[arg(long, value_enum, default_value = "auto")]
    row_form: RowForm,
    #[command(flatten)]
    prompts: PromptArgs,
}

/// A probability flag's value, in [0, 1].
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{s} is not a probability in [0, 1]"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Keys {
    Trl,
    Openrlhf,
}

impl From<Keys> for qstar_feedback::SftKeys {
    fn from(k: Keys) -> Self {
        match k {
            Keys::Trl => qstar_feedback::SftKeys::Trl,
            Keys::Openrlhf => qstar_feedback::SftKeys::Openrlhf,
        }
    }
}

/// What evaluation reads back from a label record.
#[derive(Debug, Deserialize)]
struct StoredLabel {
    p_human_chosen: f64,
    presented_human_chosen_first: bool,
    judgements: Vec<Judgement>,
}

/// Where a labeled pair's replies go in the chosen key layout.
fn layout(keys: Keys, form: RowForm) -> RowLayout {
    match keys {
        Keys::Trl => RowLayout::Trl(form.trl_form()),
        Keys::Openrlhf => RowLayout::Openrlhf,
    }
}

/// A judged prompt's record holds a DPO pair (only those are exported).
fn is_dpo_pair(record: &str) -> bool {
    record.contains("\"chosen\"")
}

type Records<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>>> + 'a>>;

/// Runs the job `kind` over the input's pairs with the job runner, `process`
/// labeling a batch of pairs at a time, then exports the records that
/// `exported` accepts, in input order.
async fn run_pair_job<'a>(
    args: &PairJobArgs,
    prompts_only: bool,
    kind: &str,
    resolved: &serde_json::Value,
    exported: fn(&str) -> bool,
    process: impl FnMut(Vec<PreferencePair>) -> Records<'a>,
) -> Result<Finished> {
    let read = if prompts_only {
        qstar_tasks::read_prompts
    } else {
        qstar_tasks::read_pairs
    };
    let report =
        read(&args.input, args.skip_invalid, args.limit).map_err(|e| UsageError(e.to_string()))?;
    if !report.rejected_lines.is_empty() {
        let rejects = sibling(&args.out, ".rejects.jsonl");
        let mut f = std::fs::File::create(&rejects)
            .with_context(|| format!("creating {}", rejects.display()))?;
        for (line, text, why) in &report.rejected_lines {
            writeln!(f, "{}", json!({"line": line, "error": why, "text": text}))?;
        }
        Reporter::new(args.json).note(&format!(
            "skipped {} malformed lines (see {})",
            report.rejected_lines.len(),
            rejects.display()
        ));
    }
    let pairs = report.pairs;
    let store = open_store(args.store.as_deref(), &args.out)?;
    let mut resolved = resolved.clone();
    resolved["limit"] = json!(args.limit);
    add_fingerprint(&mut resolved, &store, &args.backend, &args.input)?;
    let unit = if prompts_only { "prompts" } else { "pairs" };
    let scope = format!("{kind}:{}", args.out.display());
    let job = Job::begin(
        &store,
        &scope,
        &resolved,
        Reporter::new(args.json),
        kind,
        unit,
    )?;
    let finished = job
        .run(&pairs, |p| p.line as u64, args.batch_pairs, 1, process)
        .await?;
    job.export(&args.out, finished.records.iter().filter(|r| exported(r)))?;
    Ok(finished)
}

/// Prints a job's summary: under `--json` one JSON line with the job's
/// record count, how many records an earlier run had made and `figures`;
/// otherwise `text`.
fn report(
    args: &PairJobArgs,
    finished: &Finished,
    figures: serde_json::Value,
    text: Text,
) -> Result<()> {
    let mut line = json!({"records": finished.records.len(), "resumed": finished.resumed});
    if let (Some(line), serde_json::Value::Object(figures)) = (line.as_object_mut(), figures) {
        line.extend(figures);
    }
    Reporter::new(args.json).summary(&line, &text)
}

pub async fn label(args: LabelArgs) -> Result<()> {
    if args.clamp_low > args.clamp_high {
        return Err(UsageError(format!(
            "--clamp-low {} is above --clamp-high {}",
            args.clamp_low, args.clamp_high
        ))
        .into());
    }
    let principles = match args.principles.as_str() {
        "all" => PrincipleChoice::All,
        k => PrincipleChoice::Sample(k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(
            || {
                UsageError(format!(
                    "--principles takes a positive number or `all`, not `{k}`"
                ))
            },
        )?),
    };
    let constitution = match &args.constitution {
        Some(p) => Constitution::load(p).map_err(UsageError)?,
        None => Constitution::default_constitution(),
    };
    if args.few_shot > constitution.few_shot.len() {
        return Err(UsageError(format!(
            "--few-shot {} asks for more examples than the constitution has ({})",
            args.few_shot,
            constitution.few_shot.len()
        ))
        .into());
    }
    let prompts = PromptSet::load(&args.prompts)?;
    let keys = args.keys;
    let form = args.row_form.resolve(&args.job.input);
    let config = CaiConfig {
        method: match args.method {
            Method::Cai => qstar_feedback::Method::Cai,
            Method::Rlaif => qstar_feedback::Method::Rlaif,
            Method::Cot => qstar_feedback::Method::Cot,
        },
        cot_clamp: (args.clamp_low, args.clamp_high),
        rationale_tokens: args.rationale_tokens,
        few_shot: args.few_shot,
        rationale: args.rationale,
        principle_last: args.principle_last,
        principles,
        debias: !args.no_debias,
        seed: args.seed,
        format: args.job.format(),
    };
    let model = args.job.backend.open().await?;
    let labeler = CaiLabeler::with_prompts(
        model.as_ref(),
        &constitution,
        config.clone(),
        &prompts.feedback,
    )?;
    let mut resolved = json!({
        "method": args.method,
        "keys": format!("{:?}", args.keys).to_lowercase(),
        "row_form": form,
        "cai": config,
        "constitution": constitution,
        "backend": model.backend_name(),
    });
    let used = match args.method {
        Method::Rlaif => crate::prompts::LABEL_RLAIF,
        Method::Cai | Method::Cot => crate::prompts::LABEL_CAI,
    };
    prompts.add_to(&mut resolved, used);
    let labeler = &labeler;
    let out = &args.job.out;
    let finished = run_pair_job(
        &args.job,
        false,
        "label",
        &resolved,
        |_| true,
        |chunk| {
            Box::pin(async move {
                let labels = labeler.label(&chunk).await?;
                chunk
                    .iter()
                    .zip(labels)
                    .map(|(pair, label)| {
                        let record = LabelRecord::new(pair, label, layout(keys, form));
                        Ok(serde_json::to_string(&record)?)
                    })
                    .collect()
            })
        },
    )
    .await?;

    let labels = read_labels(out)?;
    let m = label_metrics(&labels);
    let figures = json!({
        "pairs": m.pairs,
        "alignment": m.alignment,
        "position_bias_rate": m.position_bias_rate,
        "mean_p_a": m.mean_p_a,
        "ece": m.ece,
        "option_mass_mean": m.option_mass_mean,
        "option_mass_min": m.option_mass_min,
    });
    let bias = match m.position_bias_rate {
        Some(b) => (
            "position-bias rate (same option in both orders)",
            format!("{b:.3}"),
        ),
        None => ("position-bias rate", "n/a (one order)".to_string()),
    };
    let text = Text::new()
        .line(format!("labeled {} pairs → {}", m.pairs, out.display()))
        .metrics(&[
            (
                "agreement with the source's choice",
                format!("{:.3}", m.alignment),
            ),
            bias,
            ("mean P(A)", format!("{:.3}", m.mean_p_a)),
            ("calibration error (ECE)", format!("{:.3}", m.ece)),
        ]);
    report(&args.job, &finished, figures, text)
}

#[derive(Args)]
pub struct RateArgs {
    #[command(flatten)]
    job: PairJobArgs,
    /// TRL rows: standard (strings), conversational (message lists) or
    /// auto (the input's form).
    #[arg(long, value_enum, default_value = "auto")]
    row_form: RowForm,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Score replies with a reward model `qstar train rm` wrote instead of
    /// d-RLAIF ratings.
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// SQLite file that keeps the reward model's hidden states (default:
    /// features.sqlite in qstar's cache directory).
    #[arg(long, requires = "reward_model")]
    feature_cache: Option<PathBuf>,
}

/// `qstar rate`: d-RLAIF rewards for both replies of each pair, or a
/// trained reward model's.
pub async fn rate(args: RateArgs) -> Result<()> {
    if let Some(dir) = &args.reward_model {
        return rate_with_reward_model(&args, dir).await;
    }
    let prompts = PromptSet::load(&args.prompts)?;
    let model = args.job.backend.open().await?;
    let rater =
        qstar_feedback::Rater::with_prompts(model.as_ref(), args.job.format(), &prompts.feedback)?;
    let form = args.row_form.resolve(&args.job.input);
    let mut resolved = json!({
        "method": "d-rlaif",
        "format": args.job.format(),
        "row_form": form,
        "backend": model.backend_name(),
    });
    prompts.add_to(&mut resolved, crate::prompts::RATE);
    let rater = &rater;
    let finished = run_pair_job(
        &args.job,
        false,
        "rate",
        &resolved,
        |_| true,
        |chunk| {
            Box::pin(async move {
                let items = reply_items(&chunk);
                let ratings = rater.rate(&items).await?;
                chunk
                    .iter()
                    .zip(ratings.chunks(2))
                    .map(|(pair, r)| {
                        let record = rated_pair_record(pair, form.trl_form(), &r[0], &r[1]);
                        Ok(serde_json::Value::Object(record).to_string())
                    })
                    .collect()
            })
        },
    )
    .await?;
    rate_summary(&args, &finished)
}

/// `qstar rate --reward-model DIR`: the head's reward of both replies.
async fn rate_with_reward_model(args: &RateArgs, dir: &Path) -> Result<()> {
    let reporter = Reporter::new(args.job.json);
    let rm = crate::reward::RewardModel::open(
        dir,
        args.job.backend.model.as_deref(),
        args.job.backend.threads,
        args.feature_cache.as_deref(),
    )
    .await?;
    let form = args.row_form.resolve(&args.job.input);
    let resolved = json!({
        "method": "reward-model",
        "reward_model": rm.fingerprint(dir)?,
        "row_form": form,
    });
    let (rm, reporter) = (&rm, &reporter);
    let finished = run_pair_job(
        &args.job,
        false,
        "rate",
        &resolved,
        |_| true,
        |chunk| {
            Box::pin(async move {
                let items = reply_items(&chunk);
                let (rewards, _) = rm.rewards(&items, Some(reporter)).await?;
                chunk
                    .iter()
                    .zip(rewards.chunks(2))
                    .map(|(pair, r)| {
                        let mut record = serde_json::Map::new();
                        record.insert("line".into(), json!(pair.line));
                        record.extend(RowLayout::Trl(form.trl_form()).rows(
                            &pair.conversation,
                            &pair.chosen,
                            &pair.rejected,
                        ));
                        record.insert("reward_chosen".into(), json!(r[0]));
                        record.insert("reward_rejected".into(), json!(r[1]));
                        Ok(serde_json::Value::Object(record).to_string())
                    })
                    .collect()
            })
        },
    )
    .await?;
    rate_summary(args, &finished)
}

/// Both replies of each pair after its conversation, in order: what a
/// rating or a reward model scores.
fn reply_items(pairs: &[PreferencePair]) -> Vec<(&[qstar_core::Message], &str)> {
    pairs
        .iter()
        .flat_map(|p| {
            [
                (p.conversation.as_slice(), p.chosen.as_str()),
                (p.conversation.as_slice(), p.rejected.as_str()),
            ]
        })
        .collect()
}

fn rate_summary(args: &RateArgs, finished: &Finished) -> Result<()> {
    let rewards: Vec<(f64, f64)> = finished
        .records
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .filter_map(|v| Some((v["reward_chosen"].as_f64()?, v["reward_rejected"].as_f64()?)))
        .collect();
    let higher = rewards.iter().filter(|(c, r)| c > r).count();
    let mean = |f: fn(&(f64, f64)) -> f64| {
        rewards.iter().map(f).sum::<f64>() / rewards.len().max(1) as f64
    };
    let alignment = higher as f64 / rewards.len().max(1) as f64;
    let figures = json!({
        "pairs": rewards.len(),
        "reward_alignment": alignment,
        "mean_reward_chosen": mean(|x| x.0),
        "mean_reward_rejected": mean(|x| x.1),
    });
    let text = Text::new()
        .line(format!(
            "rated {} pairs → {}",
            rewards.len(),
            args.job.out.display()
        ))
        .metrics(&[
            (
                "human-preferred reply rewarded higher",
                format!("{alignment:.3}"),
            ),
            (
                "mean reward, preferred / other",
                format!("{:.3} / {:.3}", mean(|x| x.0), mean(|x| x.1)),
            ),
        ]);
    report(&args.job, finished, figures, text)
}

fn read_labels(path: &Path) -> Result<Vec<PairLabel>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let r: StoredLabel = serde_json::from_str(l).map_err(|e| {
                UsageError(format!(
                    "{}:{}: not a label record: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            Ok(PairLabel {
                p_human_chosen: r.p_human_chosen,
                presented_human_chosen_first: r.presented_human_chosen_first,
                judgements: r.judgements,
            })
        })
        .collect()
}

#[derive(Args)]
pub struct ReviseArgs {
    #[command(flatten)]
    job: PairJobArgs,
    /// Critique/revision rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long)]
    constitution: Option<PathBuf>,
    /// Also emit each pair's preferred input reply as an SFT example (the
    /// CAI paper mixes helpful samples in to keep helpfulness).
    #[arg(long)]
    mix_input_replies: bool,
    /// Output keys: TRL (`messages`) or OpenRLHF (`input`/`output`).
    #[arg(long, value_enum, default_value = "trl")]
    keys: Keys,
}

/// `qstar revise`: SL-CAI examples from the opening human turn of each pair.
pub async fn revise(args: ReviseArgs) -> Result<()> {
    let constitution = match &args.constitution {
        Some(p) => Constitution::load(p).map_err(UsageError)?,
        None => Constitution::default_constitution(),
    };
    let config = qstar_feedback::ReviseConfig {
        rounds: args.rounds,
        seed: args.seed,
        temperature: args.temperature,
        max_tokens: args.max_tokens,
    };
    let model = args.job.backend.open().await?;
    let resolved = json!({"method": "critique-revision", "config": config, "constitution": constitution, "backend": model.backend_name(), "mix_input_replies": args.mix_input_replies, "keys": format!("{:?}", args.keys).to_lowercase()});
    let (model_ref, constitution, config) = (model.as_ref(), &constitution, &config);
    let (mix, keys) = (args.mix_input_replies, args.keys);
    let finished = run_pair_job(
        &args.job,
        true,
        "revise",
        &resolved,
        |_| true,
        |chunk| {
            Box::pin(async move {
                let prompts = qstar_feedback::opening_prompts(&chunk);
                let revisions =
                    qstar_feedback::critique_and_revise(model_ref, constitution, config, &prompts)
                        .await?;
                // The input's preferred reply, when mixed in, is a second
                // line of the same record (so both resume together).
                chunk
                    .iter()
                    .zip(revisions)
                    .map(|(pair, rev)| {
                        let rows = qstar_feedback::revision_rows(pair, &rev, keys.into(), mix);
                        let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
                        Ok(lines.join("\n"))
                    })
                    .collect()
            })
        },
    )
    .await?;
    let examples: usize = finished.records.iter().map(|r| r.lines().count()).sum();
    let revisions = finished.records.len();
    let figures = json!({"examples": examples, "revisions": revisions});
    let text = Text::new().line(format!(
        "wrote {} SFT examples ({} revisions) → {}",
        examples,
        revisions,
        args.job.out.display()
    ));
    report(&args.job, &finished, figures, text)
}

#[derive(Args)]
pub struct JudgeArgs {
    #[command(flatten)]
    job: PairJobArgs,
    /// Replies sampled per prompt (2 to 64).
    #[arg(long, default_value_t = 4, value_parser = bounded(2, MAX_SAMPLES))]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// TRL rows: standard (strings), conversational (message lists) or
    /// auto (the input's form).
    #[arg(long, value_enum, default_value = "auto")]
    row_form: RowForm,
    #[command(flatten)]
    prompts: PromptArgs,
}

/// `qstar judge`: self-rewarding DPO pairs (best vs worst judged reply).
pub async fn judge(args: JudgeArgs) -> Result<()> {
    let config = qstar_feedback::JudgeConfig {
        samples: args.samples,
        seed: args.seed,
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        ..Default::default()
    };
    let prompts = PromptSet::load(&args.prompts)?;
    let model = args.job.backend.open().await?;
    let form = args.row_form.resolve(&args.job.input);
    let mut resolved = json!({
        "method": "llm-as-judge",
        "config": config,
        "row_form": form,
        "backend": model.backend_name(),
    });
    prompts.add_to(&mut resolved, crate::prompts::JUDGE);
    let (model_ref, config, templates) = (model.as_ref(), &config, &prompts.feedback);
    // Every prompt's record is stored; only formed pairs are exported.
    let finished = run_pair_job(&args.job, true, "judge", &resolved, is_dpo_pair, |chunk| {
        Box::pin(async move {
            let prompts = qstar_feedback::opening_prompts(&chunk);
            let judged =
                qstar_feedback::judge_prompts_with(model_ref, templates, config, &prompts).await?;
            let trl_form = form.trl_form();
            chunk
                .iter()
                .zip(judged)
                .map(|(pair, j)| {
                    Ok(qstar_feedback::judged_record(pair.line, &j, trl_form).to_string())
                })
                .collect()
        })
    })
    .await?;
    // Report over every judged prompt, not only the exported pairs.
    let records = &finished.records;
    let pairs = records.iter().filter(|r| is_dpo_pair(r)).count();
    let (mut judged, mut unparsed) = (0usize, 0usize);
    for data in records {
        let v: serde_json::Value = serde_json::from_str(data)?;
        judged += v["samples"].as_array().map_or(0, |s| s.len());
        unparsed += v["unparsed"].as_u64().unwrap_or(0) as usize;
    }
    let skipped = records.len() - pairs;
    let figures = json!({
        "prompts": records.len(),
        "pairs": pairs,
        "judgements": judged,
        "unparsed": unparsed,
        "skipped": skipped,
    });
    let text = Text::new()
        .line(format!(
            "{} DPO pairs from {} prompts → {}",
            pairs,
            records.len(),
            args.job.out.display()
        ))
        .metrics(&[
            ("judgements", judged.to_string()),
            (
                "unparsed judgements (not scored, never guessed)",
                unparsed.to_string(),
            ),
            (
                "prompts skipped (ties or too few scores)",
                skipped.to_string(),
            ),
        ]);
    report(&args.job, &finished, figures, text)
}

#[derive(Args)]
pub struct EvalLabelsArgs {
    /// Output of `qstar label`.
    #[arg(long)]
    labels: PathBuf,
    #[arg(long)]
    json: bool,
    /// Reliability-diagram PNG (default: LABELS.reliability.png).
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn eval_labels(args: EvalLabelsArgs) -> Result<()> {
    // d-RLAIF output carries rewards instead of soft labels.
    let first = std::fs::read_to_string(&args.labels)
        .with_context(|| format!("reading {}", args.labels.display()))?
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    if first.is_some_and(|v| v.get("reward_chosen").is_some()) {
        return eval_rewards(&args);
    }
    let labels = read_labels(&args.labels)?;
    let m = label_metrics(&labels);
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| sibling(&args.labels, ".reliability.png"));
    let bins: Vec<(f64, f64, usize, f64, f64)> = m
        .reliability
        .iter()
        .map(|b| (b.low, b.high, b.count, b.mean_confidence, b.accuracy))
        .collect();
    crate::report::Reporter::default().before_plot();
    qstar_eval::plot::reliability(
        &plot,
        &format!("{} pairs · ECE {:.3}", m.pairs, m.ece),
        &bins,
    )?;
    let mass = mass_text(m.option_mass_mean, m.option_mass_min);
    let text = Text::new()
        .line(format!(
            "pairs {}  alignment {:.3}  position-bias rate {}  ECE {:.3}  mean P(A) {:.3}  mass on the options {}",
            m.pairs,
            m.alignment,
            m.position_bias_rate.map_or("n/a".into(), |b| format!("{b:.3}")),
            m.ece,
            m.mean_p_a,
            mass
        ))
        .line(format!("reliability diagram → {}", plot.display()));
    Reporter::new(args.json).summary(&m, &text)
}

/// The mass on the options for a summary line: mean and least, or n/a for
/// files written before it was recorded.
fn mass_text(mean: Option<f64>, least: Option<f64>) -> String {
    match (mean, least) {
        (Some(mean), Some(least)) => format!("{mean:.3} (least {least:.4})"),
        _ => "n/a".into(),
    }
}

fn eval_rewards(args: &EvalLabelsArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.labels)?;
    let mut pairs = 0usize;
    let mut higher = 0usize;
    let mut masses: Vec<f64> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| UsageError(format!("{}:{}: {e}", args.labels.display(), i + 1)))?;
        let (Some(c), Some(r)) = (v["reward_chosen"].as_f64(), v["reward_rejected"].as_f64())
        else {
            return Err(
                UsageError(format!("{}:{}: no rewards", args.labels.display(), i + 1)).into(),
            );
        };
        pairs += 1;
        higher += usize::from(c > r);
        for rating in [&v["rating_chosen"], &v["rating_rejected"]] {
            if let Some(m) = rating["option_mass"].as_f64() {
                masses.push(m);
            }
        }
    }
    let rate = higher as f64 / pairs.max(1) as f64;
    // The ratings' mass on "1"…"10" before normalization (absent in files
    // written before it was recorded).
    let mass_mean = (!masses.is_empty()).then(|| masses.iter().sum::<f64>() / masses.len() as f64);
    let mass_min = masses.iter().copied().reduce(f64::min);
    let mass = mass_text(mass_mean, mass_min);
    let text = Text::new().line(format!(
        "pairs {pairs}  human-preferred reply rewarded higher {rate:.3}  mass on the ratings {mass}"
    ));
    Reporter::new(args.json).summary(
        &json!({"pairs": pairs, "reward_alignment": rate,
                "option_mass_mean": mass_mean, "option_mass_min": mass_min}),
        &text,
    )
}
