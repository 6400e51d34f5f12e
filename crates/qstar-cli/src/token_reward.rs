//! `qstar eval token-reward`: does DPO's per-token implicit reward put its
//! lowest value where a wrong solution first goes wrong?
//!
//! The solutions come from a `qstar solve` run (every finished solution in
//! each record's tree); the wrong ones whose first error can be located
//! (additions only: `qstar_tasks::first_error`) are scored by the policy
//! (the model with `--adapter`) and the reference, and the first wrong
//! token's place among the per-token values is compared with chance. The
//! policy's and the reference's own log-probs are measured beside it, so the
//! table shows whether the implicit reward adds anything to "the least
//! likely token".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use qstar_core::{LanguageModel, ScoreRequest, ScoreResponse};
use qstar_eval::token_credit::{credit_report, lowest, token_at, CreditCase, CreditReport};
use qstar_search::{implicit_token_rewards, Meter, SearchConfig, Searcher, SolveRecord};
use qstar_tasks::first_error::{first_addition_error, FirstError};
use qstar_tasks::{Problem, Task};
use serde_json::json;

use crate::backend::BackendArgs;
use crate::label::Format;
use crate::report::{Align, Reporter, Text};
use crate::{positive_f64, UsageError};

#[derive(Args)]
pub struct EvalTokenRewardArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Records of `qstar solve` (JSONL); every finished solution of each
    /// record's tree is read.
    #[arg(long)]
    input: PathBuf,
    /// The task the records were solved as (first errors are located for
    /// additions: arithmetic).
    #[arg(long, default_value = "arithmetic")]
    task: String,
    /// Reference model (GGUF; default: the model without --adapter).
    #[arg(long)]
    ref_model: Option<PathBuf>,
    /// β of the implicit reward (scales it; the ranks do not depend on it).
    #[arg(long, default_value_t = 0.1, value_parser = positive_f64)]
    beta: f64,
    /// How the solve run framed its prompts (default: chat).
    #[arg(long, value_enum, default_value = "chat")]
    prompt_format: Format,
    /// Read at most this many records.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON line per located wrong solution: its tokens, their rewards
    /// and log-probs, and where it first goes wrong.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// A wrong solution to score: its prompt and text, and the byte where it
/// first goes wrong.
struct Wrong {
    line: usize,
    question: String,
    prompt: String,
    solution: String,
    error_byte: usize,
}

/// The three per-token readings of one solution, by name.
type NamedScores = [(&'static str, Vec<f64>); 3];

/// What the records held, before any scoring.
#[derive(Default)]
struct Census {
    records: usize,
    /// Distinct finished solutions.
    solutions: usize,
    correct: usize,
    /// Wrong, with no written number to blame.
    unlocated: usize,
}

fn read_records(path: &Path, limit: Option<usize>) -> Result<Vec<SolveRecord>> {
    Ok(qstar_tasks::read_json_rows(path, limit, |value, _| {
        serde_json::from_value(value).map_err(|e| format!("not a record of qstar solve: {e}"))
    })
    .map_err(|e| UsageError(e.to_string()))?)
}

/// The wrong, located solutions of `records`, each once per question.
fn wrong_solutions(
    records: &[SolveRecord],
    task: Task,
    model: &dyn LanguageModel,
    config: &SearchConfig,
) -> Result<(Vec<Wrong>, Census)> {
    let meter = Meter::with_parameters(None);
    let mut census = Census {
        records: records.len(),
        ..Census::default()
    };
    let mut wrong = Vec::new();
    for record in records {
        let problem = Problem {
            line: record.line,
            question: record.question.clone(),
            answer: record.reference.clone(),
        };
        let prompt = Searcher::new(model, task, &problem, config, &meter)?.prompt;
        let mut seen = BTreeSet::new();
        for leaf in record.tree.finished() {
            let solution = record.tree.text(leaf);
            if !seen.insert(solution.clone()) {
                continue;
            }
            census.solutions += 1;
            let right = task
                .extract(&solution)
                .is_some_and(|a| task.is_correct(&a, &record.reference));
            if right {
                census.correct += 1;
                continue;
            }
            match first_addition_error(&record.question, &solution) {
                FirstError::At(error_byte) => wrong.push(Wrong {
                    line: record.line,
                    question: record.question.clone(),
                    prompt: prompt.clone(),
                    solution,
                    error_byte,
                }),
                // Judged wrong by the checker but with every number right
                // (an answer the checker could not read): not located.
                FirstError::None | FirstError::Unlocated => census.unlocated += 1,
            }
        }
    }
    Ok((wrong, census))
}

/// Scores every solution with `model`, in batches, with a progress bar.
async fn score_all(
    model: &dyn LanguageModel,
    wrong: &[Wrong],
    reporter: &Reporter,
    label: &str,
) -> Result<Vec<ScoreResponse>> {
    let bar = reporter.progress(wrong.len(), 0, label, "solutions");
    let mut out = Vec::with_capacity(wrong.len());
    for chunk in wrong.chunks(32) {
        let requests = chunk
            .iter()
            .map(|w| ScoreRequest {
                prompt: w.prompt.clone(),
                continuation: w.solution.clone(),
            })
            .collect();
        let scored = model.score(requests).await?;
        if scored.len() != chunk.len() {
            anyhow::bail!(
                "the {label} returned {} scores for {} solutions",
                scored.len(),
                chunk.len()
            );
        }
        out.extend(scored);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn logprobs(r: &ScoreResponse) -> Vec<f64> {
    r.tokens
        .iter()
        .map(|t| t.logprob.map_or(0.0, f64::from))
        .collect()
}

pub async fn eval_token_reward(args: EvalTokenRewardArgs) -> Result<()> {
    let task = Task::parse(&args.task).map_err(UsageError)?;
    if args.task != "arithmetic" {
        return Err(UsageError(format!(
            "first errors are located in additions only (--task arithmetic), not {:?}",
            args.task
        ))
        .into());
    }
    let records = read_records(&args.input, args.limit)?;
    let reporter = Reporter::new(args.json);
    let reference = args
        .backend
        .reference_engine(args.ref_model.as_deref())
        .await?;
    let policy = args.backend.open().await?;
    let config = SearchConfig {
        format: args.prompt_format.into(),
        ..SearchConfig::default()
    };
    let (wrong, census) = wrong_solutions(&records, task, policy.as_ref(), &config)?;
    let p = score_all(policy.as_ref(), &wrong, &reporter, "policy").await?;
    let r = score_all(&reference, &wrong, &reporter, "reference").await?;

    let (mut misaligned, mut at_end) = (0, 0);
    let mut kept: Vec<(usize, NamedScores)> = Vec::new();
    let mut rows = Vec::new();
    for ((w, p), r) in wrong.iter().zip(&p).zip(&r) {
        let rewards = implicit_token_rewards(p, r, args.beta).map_err(UsageError)?;
        let texts: Vec<&str> = p.tokens.iter().map(|t| t.text.as_str()).collect();
        // The byte of the error is in the solution's text: the tokens must
        // spell it exactly for it to name a token.
        if texts.concat() != w.solution {
            misaligned += 1;
            continue;
        }
        // An error at the very end ("… is 6" for 68) is in a token the
        // model did not write: nothing to rank, counted apart.
        let Some(error_token) = token_at(&texts, w.error_byte) else {
            at_end += 1;
            continue;
        };
        let scores = [
            ("implicit reward", rewards),
            ("policy log-prob", logprobs(p)),
            ("reference log-prob", logprobs(r)),
        ];
        if args.out.is_some() {
            rows.push(json!({
                "line": w.line,
                "question": w.question,
                "solution": w.solution,
                "tokens": texts,
                "first_error_token": error_token,
                "implicit_reward": scores[0].1,
                "logprob": scores[1].1,
                "ref_logprob": scores[2].1,
                "lowest_implicit_reward_token": lowest(&scores[0].1),
            }));
        }
        kept.push((error_token, scores));
    }
    let cases: Vec<CreditCase<'_>> = kept
        .iter()
        .map(|(k, scores)| CreditCase {
            scores,
            first_error: *k,
        })
        .collect();
    let report = credit_report(&cases);
    if let Some(out) = &args.out {
        let lines = rows
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        crate::job::write_lines(out, &lines)?;
    }
    print_report(&reporter, &census, (misaligned, at_end), &report, args.beta)
}

fn print_report(
    reporter: &Reporter,
    census: &Census,
    (misaligned, at_end): (usize, usize),
    report: &CreditReport,
    beta: f64,
) -> Result<()> {
    let rows: Vec<Vec<String>> = report
        .scores
        .iter()
        .map(|s| {
            vec![
                s.score.clone(),
                format!("{:.3}", s.hit_rate),
                format!("{:.3}", report.chance_hit_rate),
                format!("{:.3}", s.mean_rank),
            ]
        })
        .collect();
    let text = Text::new()
        .line(format!(
            "{} records, {} distinct finished solutions: {} right, {} wrong with no number to blame, \
             {at_end} wrong only in what they did not write, {misaligned} whose tokens do not spell \
             the text; {} wrong ones measured ({:.1} tokens on average)",
            census.records,
            census.solutions,
            census.correct,
            census.unlocated,
            report.solutions,
            report.mean_tokens
        ))
        .table(
            &["lowest per-token score", "on the first wrong token", "chance", "mean rank (chance 0.5)"],
            &[Align::Left, Align::Right, Align::Right, Align::Right],
            &rows,
        );
    let figures = json!({
        "records": census.records,
        "solutions": census.solutions,
        "correct": census.correct,
        "unlocated": census.unlocated,
        "misaligned": misaligned,
        "error_at_end": at_end,
        "measured": report.solutions,
        "mean_tokens": report.mean_tokens,
        "chance_hit_rate": report.chance_hit_rate,
        "beta": beta,
        "scores": report.scores,
    });
    reporter.summary(&figures, &text)
}
