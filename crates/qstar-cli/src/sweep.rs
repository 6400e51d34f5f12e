//! `qstar sweep`: a grid of strategies × budgets on one question set, with
//! a table, `sweep.json` and a plot of accuracy against compute, plus the
//! compute-optimal curve (the best strategy per difficulty bin, fitted on
//! these same questions, so an in-sample upper bound of what choosing per
//! question can give).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use qstar_search::optimal::{bin_of, estimate_difficulty, DevResult, DIFFICULTY_BINS, PROBES};
use qstar_search::{Meter, Policy, Searcher, Strategy};
use qstar_store::Store;
use serde::Serialize;
use serde_json::json;

use crate::job::Job;
use crate::report::{Align, Reporter, Text};
use crate::solve::{
    check_strategy, parse_records, summarize, SearchArgs, Summary, VerifierKind, MAX_BUDGET,
};
use crate::{bounded, UsageError};

/// The verifier of a sweep whose strategies need one and that names none.
pub const DEFAULT_VERIFIER: VerifierKind = VerifierKind::Prm;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub search: SearchArgs,
    /// Strategies to compare (comma-separated). Those that rank use the
    /// prm verifier unless --verifier names another.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "greedy,majority,best-of-n,beam"
    )]
    pub strategies: Vec<Strategy>,
    /// Budgets N (comma-separated, 1 to 1024); greedy runs once.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16",
          value_parser = bounded(1, MAX_BUDGET))]
    pub budgets: Vec<usize>,
    /// Directory for sweep.json, sweep.png, the runs and the store.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    strategy: Strategy,
    budget: usize,
    #[serde(flatten)]
    summary: Summary,
    /// Means per question, the x axis of the plot.
    tokens_per_question: f64,
    /// `None` (null) when the model's parameter count is unknown.
    flops_per_question: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct OptimalPoint {
    budget: usize,
    accuracy: f64,
    tokens_per_question: f64,
    /// Which strategy each difficulty bin used.
    strategies: Vec<Option<Strategy>>,
}

pub async fn sweep(mut args: SweepArgs) -> Result<()> {
    let strategies = args.strategies.clone();
    if strategies.contains(&Strategy::ComputeOptimal) {
        return Err(UsageError(
            "sweep fits compute-optimal itself; leave it out of --strategies".into(),
        )
        .into());
    }
    if args.budgets.is_empty() || args.budgets.contains(&0) {
        return Err(UsageError("--budgets needs positive numbers".into()).into());
    }
    let ranking: Vec<&str> = strategies
        .iter()
        .filter(|s| s.needs_verifier())
        .map(|s| s.name())
        .collect();
    let reporter = Reporter::new(args.json);
    if args.search.verifier.is_none() && !ranking.is_empty() {
        reporter.note(&format!(
            "sweep: {} rank with a verifier; using {} (choose one with --verifier)",
            ranking.join(", "),
            DEFAULT_VERIFIER.name()
        ));
        args.search.verifier = Some(DEFAULT_VERIFIER.into());
    }
    for &s in &strategies {
        check_strategy(s, &args.search)?;
    }
    let setup = args.search.setup().await?;
    std::fs::create_dir_all(args.out.join("runs"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let store = Store::open(
        &args
            .search
            .store
            .clone()
            .unwrap_or_else(|| args.out.join("store.sqlite")),
    )?;
    let setup_ref = &setup;

    // How hard each question looks to the model, from a few samples.
    let probed = setup.describe(&store, "difficulty", PROBES, None)?;
    let job = Job::begin(
        &store,
        "sweep:difficulty",
        &probed,
        reporter,
        "difficulty",
        "questions",
    )?;
    let probes = setup
        .run_job(&job, |p| async move {
            let meter = Meter::with_parameters(setup_ref.parameters);
            let s = Searcher::new(
                setup_ref.model.as_ref(),
                setup_ref.task,
                &p,
                &setup_ref.config,
                &meter,
            )?;
            let d = estimate_difficulty(&s, PROBES).await?;
            Ok(json!({"line": p.line, "difficulty": d, "compute": meter.total()}).to_string())
        })
        .await?
        .records;
    let mut difficulty = std::collections::HashMap::new();
    let mut probe_tokens = 0usize;
    for line in &probes {
        let v: serde_json::Value =
            serde_json::from_str(line).context("a stored record is damaged")?;
        let key = v["line"].as_u64().unwrap_or(0) as usize;
        difficulty.insert(key, v["difficulty"].as_f64().unwrap_or(1.0));
        probe_tokens += v["compute"]["tokens_generated"].as_u64().unwrap_or(0) as usize;
    }

    let mut rows = Vec::new();
    let mut dev = Vec::new();
    // Per (strategy, budget): (line, correct, tokens) of each question.
    type Outcomes = Vec<(usize, bool, usize)>;
    let mut per_question: Vec<(Strategy, usize, Outcomes)> = Vec::new();
    for &strategy in &strategies {
        let budgets: Vec<usize> = if strategy == Strategy::Greedy {
            vec![1]
        } else {
            args.budgets.clone()
        };
        for budget in budgets {
            let name = format!("{}@{budget}", strategy.name());
            let described = setup.describe(&store, strategy.name(), budget, None)?;
            let job = Job::begin(
                &store,
                &format!("sweep:{name}"),
                &described,
                reporter,
                &name,
                "questions",
            )?;
            let lines = setup
                .run_job(&job, |p| async move {
                    let r = setup_ref.solve_one(&p, strategy, budget, None).await?;
                    Ok(serde_json::to_string(&r).unwrap_or_default())
                })
                .await?
                .records;
            job.export(&args.out.join("runs").join(format!("{name}.jsonl")), &lines)?;
            let records = parse_records(&lines)?;
            let summary = summarize(&records);
            let n = summary.questions.max(1) as f64;
            rows.push(Row {
                strategy,
                budget,
                tokens_per_question: summary.tokens_generated as f64 / n,
                flops_per_question: summary.flops.map(|f| f / n),
                summary,
            });
            let mut outcomes = Vec::new();
            for r in &records {
                let d = difficulty.get(&r.line).copied().unwrap_or(1.0);
                // Greedy takes part at every budget: it costs the least.
                for &b in if strategy == Strategy::Greedy {
                    &args.budgets[..]
                } else {
                    std::slice::from_ref(&budget)
                } {
                    dev.push(DevResult {
                        bin: bin_of(d),
                        strategy,
                        budget: b,
                        correct: r.correct,
                    });
                }
                outcomes.push((r.line, r.correct, r.compute.tokens_generated));
            }
            per_question.push((strategy, budget, outcomes));
        }
    }

    let policy = Policy::fit(&dev);
    let questions = setup.problems.len().max(1) as f64;
    let mut optimal = Vec::new();
    for &budget in &args.budgets {
        let mut correct = 0usize;
        let mut tokens = probe_tokens;
        let mut chosen = vec![None; DIFFICULTY_BINS.len()];
        for p in &setup.problems {
            let bin = bin_of(difficulty.get(&p.line).copied().unwrap_or(1.0));
            let strategy = policy.choose(budget, bin);
            chosen[bin] = Some(strategy);
            let run_budget = if strategy == Strategy::Greedy {
                1
            } else {
                budget
            };
            if let Some((_, _, outcomes)) = per_question
                .iter()
                .find(|(s, b, _)| *s == strategy && *b == run_budget)
            {
                if let Some(&(_, ok, t)) = outcomes.iter().find(|(l, _, _)| *l == p.line) {
                    correct += usize::from(ok);
                    tokens += t;
                }
            }
        }
        optimal.push(OptimalPoint {
            budget,
            accuracy: correct as f64 / questions,
            tokens_per_question: tokens as f64 / questions,
            strategies: chosen,
        });
    }

    let report = json!({
        "task": args.search.task,
        "input": setup.input,
        "questions": setup.problems.len(),
        "verifier": setup.verifier,
        "search": setup.config,
        "backend": setup.model.backend_name(),
        "model_sha256": probed["model_sha256"],
        "input_sha256": probed["input_sha256"],
        "rows": rows,
        "difficulty_probes": PROBES,
        "probe_tokens_per_question": probe_tokens as f64 / questions,
        "compute_optimal": optimal,
        "policy": policy,
    });
    std::fs::write(
        args.out.join("sweep.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let plot = args.out.join("sweep.png");
    crate::report::Reporter::default().before_plot();
    qstar_eval::plot::accuracy_vs_compute(
        &plot,
        &format!("{} · {} questions", args.search.task, setup.problems.len()),
        &rows
            .iter()
            .map(|r| {
                (
                    r.strategy.name().to_string(),
                    r.tokens_per_question,
                    r.summary.accuracy,
                )
            })
            .collect::<Vec<_>>(),
        &optimal
            .iter()
            .map(|o| (o.tokens_per_question, o.accuracy))
            .collect::<Vec<_>>(),
    )?;

    let mut table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.summary;
            vec![
                r.strategy.name().to_string(),
                r.budget.to_string(),
                format!(
                    "{}/{} ({:.1} %)",
                    s.correct,
                    s.questions,
                    100.0 * s.accuracy
                ),
                format!("{:.0}", r.tokens_per_question),
                format!("{} / {}", s.prompt_tokens_computed, s.prompt_tokens_reused),
                s.verifier_calls.to_string(),
                format!("{} of {}", s.unparsed, s.candidates),
            ]
        })
        .collect();
    for o in &optimal {
        table.push(vec![
            "compute-optimal (in-sample)".into(),
            o.budget.to_string(),
            format!("{:.1} %", 100.0 * o.accuracy),
            format!("{:.0}", o.tokens_per_question),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    let header = [
        "strategy",
        "N",
        "accuracy",
        "tokens / question",
        "prompt computed / reused",
        "verifier calls",
        "unparsed",
    ];
    let mut align = [Align::Right; 7];
    align[0] = Align::Left;
    let text = Text::new().table(&header, &align, &table).line(format!(
        "sweep → {}, plot → {}",
        args.out.join("sweep.json").display(),
        plot.display()
    ));
    reporter.summary(&report, &text)?;
    Ok(())
}
