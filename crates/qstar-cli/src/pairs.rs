//! `qstar pairs`: preference pairs with a verifiable winner. The policy
//! samples N solutions of each question (majority voting's samples, through
//! the job runner, so a killed run resumes), the task's checker marks each
//! one, and a correct solution is paired with an incorrect one in TRL's
//! conversational form, ready for `qstar train dpo` or `qstar train rm`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use qstar_search::solve::SolveRecord;
use qstar_search::strategy::Strategy;
use qstar_tasks::Task;
use serde::Serialize;
use serde_json::json;

use crate::job::{open_store, Job};
use crate::report::{Align, Reporter, Text};
use crate::solve::{parse_records, SearchArgs, MAX_BUDGET};
use crate::{bounded, UsageError};

#[derive(Args)]
pub struct PairsArgs {
    #[command(flatten)]
    pub search: SearchArgs,
    /// Solutions sampled per question (N).
    #[arg(long, default_value_t = 8, value_parser = bounded(2, MAX_BUDGET))]
    pub samples: usize,
    /// Pairs per question at most: the i-th distinct correct solution with
    /// the i-th distinct incorrect one.
    #[arg(long, default_value_t = 1, value_parser = bounded(1, MAX_BUDGET))]
    pub pairs_per_question: usize,
    /// The pairs (JSONL, TRL's conversational preference form).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A question's samples sorted by the checker: distinct texts, in sampling
/// order, and how many had no answer at all.
#[derive(Debug, Default, PartialEq)]
struct Sorted {
    correct: Vec<String>,
    incorrect: Vec<String>,
    unparsed: usize,
}

/// Marks every finished solution of `record`'s tree with the task's
/// checker. A solution without an answer is incorrect (it is counted too).
fn sort_samples(record: &SolveRecord, task: Task) -> Sorted {
    let mut sorted = Sorted::default();
    for id in record.tree.finished() {
        let text = record.tree.text(id);
        let answer = record.tree.node(id).answer.as_deref();
        if answer.is_none() {
            sorted.unparsed += 1;
        }
        let side = match answer {
            Some(a) if task.is_correct(a, &record.reference) => &mut sorted.correct,
            _ => &mut sorted.incorrect,
        };
        if !text.trim().is_empty() && !side.contains(&text) {
            side.push(text);
        }
    }
    sorted
}

#[derive(Serialize)]
struct PairsSummary {
    questions: usize,
    samples: usize,
    pairs: usize,
    /// Questions whose samples were all correct, or all incorrect: they
    /// give no pair.
    all_correct: usize,
    all_incorrect: usize,
    unparsed: usize,
    resumed: usize,
    out: PathBuf,
}

pub async fn pairs(args: PairsArgs) -> Result<()> {
    if args.search.verifier.is_some() {
        return Err(UsageError(
            "qstar pairs marks samples with the task's checker; it takes no --verifier".into(),
        )
        .into());
    }
    let setup = args.search.setup().await?;
    let store = open_store(args.search.store.as_deref(), &args.out)?;
    let strategy = Strategy::Majority;
    let described = setup.describe(&store, strategy.name(), args.samples, None)?;
    let reporter = Reporter::new(args.json);
    let job = Job::begin(
        &store,
        &format!("pairs:{}", args.out.display()),
        &described,
        reporter,
        "pairs",
        "questions",
    )?;
    let setup_ref = &setup;
    let samples = args.samples;
    let finished = setup
        .run_job(&job, |p| async move {
            let r = setup_ref.solve_one(&p, strategy, samples, None).await?;
            Ok(serde_json::to_string(&r).unwrap_or_default())
        })
        .await?;
    let records = parse_records(&finished.records)?;

    let task = setup.task;
    let mut lines = Vec::new();
    let mut summary = PairsSummary {
        questions: records.len(),
        samples: 0,
        pairs: 0,
        all_correct: 0,
        all_incorrect: 0,
        unparsed: 0,
        resumed: finished.resumed,
        out: args.out.clone(),
    };
    for r in &records {
        let sorted = sort_samples(r, task);
        summary.samples += r.tree.finished().len();
        summary.unparsed += sorted.unparsed;
        match (sorted.correct.is_empty(), sorted.incorrect.is_empty()) {
            (true, _) => summary.all_incorrect += 1,
            (false, true) => summary.all_correct += 1,
            _ => {}
        }
        let prompt = qstar_train::data::framed_question(&r.question, Some(task));
        for (chosen, rejected) in sorted
            .correct
            .iter()
            .zip(&sorted.incorrect)
            .take(args.pairs_per_question)
        {
            let row = json!({
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "line": r.line,
                "reference": r.reference,
            });
            lines.push(row.to_string());
            summary.pairs += 1;
        }
    }
    job.export(&args.out, &lines)?;
    let rows = [
        ("questions", summary.questions.to_string()),
        ("samples", summary.samples.to_string()),
        ("pairs", summary.pairs.to_string()),
        (
            "questions all correct / all incorrect",
            format!("{} / {}", summary.all_correct, summary.all_incorrect),
        ),
        (
            "samples without an answer",
            format!("{} of {}", summary.unparsed, summary.samples),
        ),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
    let text = Text::new()
        .table(
            &[&format!("pairs from {samples} samples"), "value"],
            &[Align::Left, Align::Right],
            &rows,
        )
        .line(format!("pairs → {}", args.out.display()));
    reporter.summary(&summary, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qstar_search::tree::Tree;

    fn record(samples: &[(&str, Option<&str>)]) -> SolveRecord {
        let mut tree = Tree::new();
        for (text, answer) in samples {
            let id = tree.add(0, text.to_string(), Vec::new());
            let node = tree.node_mut(id);
            node.finished = true;
            node.answer = answer.map(String::from);
        }
        SolveRecord {
            line: 3,
            question: "What is 2 + 2?".into(),
            reference: "4".into(),
            answer: None,
            correct: false,
            strategy: Strategy::Majority,
            budget: samples.len(),
            verifier: None,
            difficulty: None,
            candidates: samples.len(),
            unparsed: 0,
            compute: qstar_search::Meter::with_parameters(None).total(),
            solution: String::new(),
            tree,
        }
    }

    #[test]
    fn the_checker_sorts_distinct_samples_and_counts_the_unparsed() {
        let r = record(&[
            ("2 + 2 = 4. The answer is 4.", Some("4")),
            ("2 + 2 = 5. The answer is 5.", Some("5")),
            ("2 + 2 = 4. The answer is 4.", Some("4")),
            ("I am not sure.", None),
            ("Four: the answer is 4.0", Some("4.0")),
        ]);
        let s = sort_samples(&r, Task::Gsm8k);
        assert_eq!(
            s.correct,
            vec!["2 + 2 = 4. The answer is 4.", "Four: the answer is 4.0"]
        );
        assert_eq!(
            s.incorrect,
            vec!["2 + 2 = 5. The answer is 5.", "I am not sure."]
        );
        assert_eq!(s.unparsed, 1);
    }
}
