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
use qstar_core::mix;
use qstar_search::strategy::Strategy;
use qstar_search::{Compute, Meter, NodeId, SearchConfig, SearchError, Searcher, Tree};
use qstar_tasks::{Problem, Task};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::job::{open_store, Job};
use crate::report::{Align, Reporter, Text};
use crate::solve::{SearchArgs, MAX_BUDGET};
use crate::{bounded, UsageError};

/// Mixed into the search seed for the rollouts.
const ROLLOUT_SEED: u64 = 0x7011_0075;

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
    /// step delimiter; the last as the model ended it), so their
    /// concatenation is the solution.
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
    /// The sampling's and the rollouts' compute.
    compute: Compute,
}

/// The path (step nodes) of each distinct finished solution in `tree`, in
/// sampling order.
fn distinct_solutions(tree: &Tree) -> Vec<Vec<NodeId>> {
    let mut texts: Vec<Vec<&str>> = Vec::new();
    let mut out = Vec::new();
    for leaf in tree.finished() {
        let path: Vec<NodeId> = tree
            .path(leaf)
            .into_iter()
            .filter(|&n| !tree.node(n).text.is_empty())
            .collect();
        let steps: Vec<&str> = path.iter().map(|&n| tree.node(n).text.as_str()).collect();
        if !steps.is_empty() && !texts.contains(&steps) {
            texts.push(steps);
            out.push(path);
        }
    }
    out
}

/// Whether the finished node `n` reached the reference answer (no answer
/// is wrong).
fn is_right(tree: &Tree, n: NodeId, task: Task, reference: &str) -> bool {
    tree.node(n)
        .answer
        .as_deref()
        .is_some_and(|a| task.is_correct(a, reference))
}

/// Labels the steps of every distinct solution in `tree` by `rollouts`
/// completions from each step's end, through the searcher's own way of
/// finishing a solution (the budget left after the steps so far, the
/// answer found as search finds it).
async fn label(
    searcher: &Searcher<'_>,
    tree: &mut Tree,
    rollouts: usize,
) -> Result<Vec<LabelledSolution>, SearchError> {
    let paths = distinct_solutions(tree);
    let (task, reference) = (searcher.task, searcher.problem.answer.as_str());
    // Every step but each solution's last, `rollouts` times.
    let parents: Vec<NodeId> = paths
        .iter()
        .flat_map(|path| path[..path.len() - 1].iter())
        .flat_map(|&n| std::iter::repeat_n(n, rollouts))
        .collect();
    let leaves = searcher.complete_from(tree, &parents, false).await?;
    if leaves.len() != parents.len() {
        return Err(SearchError::Config(format!(
            "{} rollouts came back of {}",
            leaves.len(),
            parents.len()
        )));
    }
    let mut outcomes = leaves.into_iter();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let last = path[path.len() - 1];
        let correct = is_right(tree, last, task, reference);
        let (mut soft, mut hard) = (Vec::new(), Vec::new());
        for _ in &path[..path.len() - 1] {
            let right = outcomes
                .by_ref()
                .take(rollouts)
                .filter(|&leaf| is_right(tree, leaf, task, reference))
                .count();
            soft.push(right as f64 / rollouts as f64);
            hard.push(right > 0);
        }
        soft.push(f64::from(u8::from(correct)));
        hard.push(correct);
        out.push(LabelledSolution {
            steps: path.iter().map(|&n| tree.node(n).text.clone()).collect(),
            soft,
            hard,
            correct,
        });
    }
    Ok(out)
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
            // The rollouts draw from their own seeds, never the samples'.
            let config = SearchConfig {
                seed: mix(setup_ref.config.seed ^ ROLLOUT_SEED),
                ..setup_ref.config.clone()
            };
            let meter = Meter::with_parameters(setup_ref.parameters);
            let model = setup_ref.model.as_ref();
            let searcher = Searcher::new(model, setup_ref.task, &p, &config, &meter)?;
            let mut tree = sampled.tree;
            let solutions = label(&searcher, &mut tree, rollouts).await?;
            let mut compute = sampled.compute;
            compute.add(&meter.total());
            let record = StepRecord {
                line: p.line,
                question: p.question.clone(),
                reference: p.answer.clone(),
                solutions,
                rollouts,
                compute,
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
        summary.prompt_tokens += r.compute.prompt_tokens;
        summary.prompt_tokens_computed += r.compute.prompt_tokens_computed;
        summary.prompt_tokens_reused += r.compute.prompt_tokens_reused;
        summary.completion_tokens += r.compute.tokens_generated;
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
            // step but the last is taken off (and put back by `train prm`);
            // the last step is kept as the model ended it.
            let last = s.steps.len().saturating_sub(1);
            let completions: Vec<&str> = s
                .steps
                .iter()
                .enumerate()
                .map(|(i, t)| match i < last {
                    true => t.strip_suffix(delimiter.as_str()).unwrap_or(t),
                    false => t,
                })
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
        assert_eq!(distinct_solutions(&tree), vec![vec![a, a2], vec![b, b2]]);
    }
}
