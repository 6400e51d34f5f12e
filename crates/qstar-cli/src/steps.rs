//! `qstar label-steps`: automatic step labels (Math-Shepherd). The policy
//! samples solutions of each question step by step (the search's steps,
//! ended by its step delimiter); from the end of every step but the last,
//! N rollouts finish the solution, and the task's checker marks them. A
//! step's soft label is the fraction of its rollouts that reach the right
//! answer, its hard label whether any does; the last step's label is the
//! solution's own correctness. The rollouts of a step share the question and
//! the steps before it, so the prefix cache computes that text once: the
//! summary reports prompt tokens computed and reused.
//!
//! Rows are TRL's stepwise form (`prompt`, `completions`, `labels`) with the
//! soft values beside them, one per distinct solution; a question is a
//! record of the job runner, so a killed run resumes where it was.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use qstar_core::{mix, GenerateRequest, LanguageModel, SamplingParams, Usage};
use qstar_search::solve::SolveRecord;
use qstar_search::strategy::Strategy;
use qstar_search::{Meter, SearchConfig, SearchError, Searcher};
use qstar_tasks::{Problem, Task};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::job::{open_store, Job};
use crate::report::{Align, Reporter, Text};
use crate::solve::{SearchArgs, MAX_BUDGET};
use crate::{bounded, UsageError};

#[derive(Args)]
pub struct LabelStepsArgs {
    #[command(flatten)]
    pub search: SearchArgs,
    /// Solutions sampled per question.
    #[arg(long, default_value_t = 4, value_parser = bounded(1, MAX_BUDGET))]
    pub samples: usize,
    /// Rollouts from the end of each step (N).
    #[arg(long, default_value_t = 4, value_parser = bounded(1, MAX_BUDGET))]
    pub rollouts: usize,
    /// The labelled solutions (JSONL, TRL's stepwise form with
    /// `soft_labels`).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// One labelled solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledSolution {
    /// The steps as the search wrote them (each but the last ends with the
    /// step delimiter), so their concatenation is the solution.
    pub steps: Vec<String>,
    pub soft: Vec<f64>,
    pub hard: Vec<bool>,
    pub correct: bool,
}

/// What the job keeps per question.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StepRecord {
    line: usize,
    question: String,
    reference: String,
    solutions: Vec<LabelledSolution>,
    rollouts: usize,
    usage: Usage,
}

/// The distinct finished solutions of a sampling record, as steps.
fn sampled_solutions(record: &SolveRecord) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for leaf in record.tree.finished() {
        let steps: Vec<String> = record
            .tree
            .path(leaf)
            .into_iter()
            .map(|n| record.tree.node(n).text.clone())
            .filter(|t| !t.is_empty())
            .collect();
        if !steps.is_empty() && !out.contains(&steps) {
            out.push(steps);
        }
    }
    out
}

/// Whether `text` reaches the reference answer.
fn is_right(task: Task, text: &str, reference: &str) -> bool {
    task.extract(text)
        .is_some_and(|a| task.is_correct(&a, reference))
}

/// Labels the steps of `solutions` by rolling out from each step's end.
async fn label(
    model: &dyn LanguageModel,
    searcher: &Searcher<'_>,
    solutions: Vec<Vec<String>>,
    rollouts: usize,
    seed: u64,
) -> Result<(Vec<LabelledSolution>, Usage), SearchError> {
    let problem = searcher.problem;
    let task = searcher.task;
    let config = searcher.config;
    // Every step but each solution's last, in order: (solution, step).
    let mut places = Vec::new();
    let mut requests = Vec::new();
    for (s, steps) in solutions.iter().enumerate() {
        for i in 0..steps.len().saturating_sub(1) {
            let prefix: String = steps[..=i].concat();
            let params = SamplingParams {
                temperature: config.temperature,
                top_p: config.top_p,
                seed: mix(seed ^ mix(problem.line as u64 ^ mix((s * 4096 + i) as u64))),
                max_tokens: config.max_tokens,
                ..SamplingParams::default()
            };
            let mut request = GenerateRequest::new(searcher.prompt.clone() + &prefix, params);
            request.n = rollouts;
            requests.push(request);
            places.push((s, i, prefix));
        }
    }
    let mut usage = Usage::default();
    let mut labelled: Vec<LabelledSolution> = solutions
        .iter()
        .map(|steps| {
            let correct = is_right(task, &steps.concat(), &problem.answer);
            let mut soft = vec![0.0; steps.len()];
            let mut hard = vec![false; steps.len()];
            if let (Some(s), Some(h)) = (soft.last_mut(), hard.last_mut()) {
                *s = f64::from(u8::from(correct));
                *h = correct;
            }
            LabelledSolution {
                steps: steps.clone(),
                soft,
                hard,
                correct,
            }
        })
        .collect();
    if requests.is_empty() {
        return Ok((labelled, usage));
    }
    let responses = model.generate(requests).await?;
    if responses.len() != places.len() {
        return Err(SearchError::Config(format!(
            "the backend answered {} of {} rollout requests",
            responses.len(),
            places.len()
        )));
    }
    for ((s, i, prefix), response) in places.into_iter().zip(responses) {
        usage.prompt_tokens += response.usage.prompt_tokens;
        usage.prompt_tokens_reused += response.usage.prompt_tokens_reused;
        usage.completion_tokens += response.usage.completion_tokens;
        let right = response
            .completions
            .iter()
            .filter(|c| is_right(task, &(prefix.clone() + &c.text), &problem.answer))
            .count();
        let n = response.completions.len().max(1);
        labelled[s].soft[i] = right as f64 / n as f64;
        labelled[s].hard[i] = right > 0;
    }
    Ok((labelled, usage))
}

#[derive(Serialize)]
struct StepsSummary {
    questions: usize,
    solutions: usize,
    correct_solutions: usize,
    steps: usize,
    rollouts: usize,
    /// Mean soft label of the steps before the last.
    mean_soft_label: Option<f64>,
    /// Steps before the last whose rollouts all failed, or all succeeded.
    steps_all_wrong: usize,
    steps_all_right: usize,
    prompt_tokens: usize,
    prompt_tokens_computed: usize,
    prompt_tokens_reused: usize,
    completion_tokens: usize,
    resumed: usize,
    out: PathBuf,
}

pub async fn label_steps(args: LabelStepsArgs) -> Result<()> {
    if args.search.verifier.is_some() {
        return Err(UsageError(
            "qstar label-steps marks rollouts with the task's checker; it takes no --verifier"
                .into(),
        )
        .into());
    }
    let setup = args.search.setup().await?;
    let store = open_store(args.search.store.as_deref(), &args.out)?;
    let mut described = setup.describe(&store, "label-steps", args.samples, None)?;
    described["rollouts"] = json!(args.rollouts);
    let reporter = Reporter::new(args.json);
    let job = Job::begin(
        &store,
        &format!("label-steps:{}", args.out.display()),
        &described,
        reporter,
        "labelling steps",
        "questions",
    )?;
    let (setup_ref, samples, rollouts) = (&setup, args.samples, args.rollouts);
    let finished = setup
        .run_job(&job, |p: Problem| async move {
            let sampled = setup_ref
                .solve_one(&p, Strategy::Majority, samples, None)
                .await?;
            let meter = Meter::with_parameters(None);
            let config: &SearchConfig = &setup_ref.config;
            let model = setup_ref.model.as_ref();
            let searcher = Searcher::new(model, setup_ref.task, &p, config, &meter)?;
            let (solutions, usage) = label(
                model,
                &searcher,
                sampled_solutions(&sampled),
                rollouts,
                config.seed,
            )
            .await?;
            let record = StepRecord {
                line: p.line,
                question: p.question.clone(),
                reference: p.answer.clone(),
                solutions,
                rollouts,
                usage,
            };
            Ok(serde_json::to_string(&record).unwrap_or_default())
        })
        .await?;

    let delimiter = &setup.config.step_delimiter;
    let mut summary = StepsSummary {
        questions: finished.records.len(),
        solutions: 0,
        correct_solutions: 0,
        steps: 0,
        rollouts,
        mean_soft_label: None,
        steps_all_wrong: 0,
        steps_all_right: 0,
        prompt_tokens: 0,
        prompt_tokens_computed: 0,
        prompt_tokens_reused: 0,
        completion_tokens: 0,
        resumed: finished.resumed,
        out: args.out.clone(),
    };
    let (mut soft_sum, mut inner) = (0.0, 0usize);
    let mut lines = Vec::new();
    for text in &finished.records {
        let r: StepRecord = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("a stored record is damaged: {e}"))?;
        summary.prompt_tokens += r.usage.prompt_tokens;
        summary.prompt_tokens_reused += r.usage.prompt_tokens_reused;
        summary.completion_tokens += r.usage.completion_tokens;
        let prompt = setup.task.user_turn(&r.question);
        for s in &r.solutions {
            summary.solutions += 1;
            summary.correct_solutions += usize::from(s.correct);
            summary.steps += s.steps.len();
            for &v in &s.soft[..s.soft.len().saturating_sub(1)] {
                inner += 1;
                soft_sum += v;
                summary.steps_all_wrong += usize::from(v == 0.0);
                summary.steps_all_right += usize::from(v == 1.0);
            }
            // TRL's steps carry no separator: the delimiter that ends each
            // step is taken off (and put back by `train prm`).
            let completions: Vec<&str> = s
                .steps
                .iter()
                .map(|t| t.strip_suffix(delimiter.as_str()).unwrap_or(t))
                .collect();
            let row = json!({
                "prompt": prompt,
                "completions": completions,
                "labels": s.hard,
                "soft_labels": s.soft,
                "correct": s.correct,
                "line": r.line,
                "reference": r.reference,
            });
            lines.push(row.to_string());
        }
    }
    summary.prompt_tokens_computed = summary
        .prompt_tokens
        .saturating_sub(summary.prompt_tokens_reused);
    summary.mean_soft_label = (inner > 0).then(|| soft_sum / inner as f64);
    job.export(&args.out, &lines)?;
    let rows: Vec<Vec<String>> = [
        ("questions", summary.questions.to_string()),
        (
            "distinct solutions (right)",
            format!("{} ({})", summary.solutions, summary.correct_solutions),
        ),
        ("steps", summary.steps.to_string()),
        (
            "mean soft label before the last step",
            summary
                .mean_soft_label
                .map_or("-".into(), |v| format!("{v:.3}")),
        ),
        (
            "steps with every rollout wrong / right",
            format!("{} / {}", summary.steps_all_wrong, summary.steps_all_right),
        ),
        (
            "prompt tokens computed / reused",
            format!(
                "{} / {}",
                summary.prompt_tokens_computed, summary.prompt_tokens_reused
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v])
    .collect();
    let text = Text::new()
        .table(
            &[&format!("steps labelled by {rollouts} rollouts"), "value"],
            &[Align::Left, Align::Right],
            &rows,
        )
        .line(format!("steps → {}", args.out.display()));
    reporter.summary(&summary, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qstar_search::tree::Tree;

    #[test]
    fn solutions_are_read_as_their_steps_once_each() {
        let mut tree = Tree::new();
        let a = tree.add(0, "12 + 34 = 46\n".into(), Vec::new());
        let a2 = tree.add(a, "46 + 5 = 51".into(), Vec::new());
        let b = tree.add(0, "12 + 34 = 47\n".into(), Vec::new());
        let b2 = tree.add(b, "47 + 5 = 52".into(), Vec::new());
        let c = tree.add(0, "12 + 34 = 46\n".into(), Vec::new());
        let c2 = tree.add(c, "46 + 5 = 51".into(), Vec::new());
        for n in [a2, b2, c2] {
            tree.node_mut(n).finished = true;
        }
        let record = SolveRecord {
            line: 1,
            question: "What is 12 + 34 + 5?".into(),
            reference: "51".into(),
            answer: None,
            correct: false,
            strategy: Strategy::Majority,
            budget: 3,
            verifier: None,
            difficulty: None,
            candidates: 3,
            unparsed: 0,
            compute: Meter::with_parameters(None).total(),
            solution: String::new(),
            tree,
        };
        let got = sampled_solutions(&record);
        assert_eq!(
            got,
            vec![
                vec!["12 + 34 = 46\n".to_string(), "46 + 5 = 51".to_string()],
                vec!["12 + 34 = 47\n".to_string(), "47 + 5 = 52".to_string()],
            ]
        );
    }
}
