//! `qstar`: AI feedback and test-time reasoning from the command line.

mod backend;
mod bench;
mod commands;
mod label;
mod plot;
mod solve;
mod sweep;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::backend::BackendArgs;

#[derive(Parser)]
#[command(
    name = "qstar",
    version,
    about = "AI feedback and test-time reasoning for LLMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch or inspect model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Sample completions of a prompt.
    Generate(commands::GenerateArgs),
    /// Teacher-forced log-probabilities of a continuation after a prompt.
    Score(commands::ScoreArgs),
    /// Normalized probabilities of candidate continuations.
    Choose(commands::ChooseArgs),
    /// Measure the engine's speed, against llama.cpp when it is installed.
    Bench(bench::BenchArgs),
    /// Label preference pairs with AI feedback (resumable).
    Label(label::LabelArgs),
    /// Rate both replies of each pair from 1 to 10 (d-RLAIF rewards).
    Rate(label::RateArgs),
    /// Critique and revise replies to each pair's opening prompt (SL-CAI).
    Revise(label::ReviseArgs),
    /// Self-rewarding: judge sampled replies, emit best-vs-worst DPO pairs.
    Judge(label::JudgeArgs),
    /// Search for answers at test time (resumable).
    Solve(solve::SolveArgs),
    /// Compare strategies × budgets: table, sweep.json, sweep.png.
    Sweep(sweep::SweepArgs),
    /// Generate synthetic question sets.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Measure labels, models and searches.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Agreement of AI labels with the source's preferences, position bias
    /// and calibration.
    Labels(label::EvalLabelsArgs),
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Seeded arithmetic or serial problems as JSONL.
    Generate(tasks::GenerateTasksArgs),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download the default model into the cache (a no-op when it is there).
    Fetch,
    /// Describe a GGUF model: architecture, sizes, tokens, chat template.
    Info {
        #[command(flatten)]
        backend: BackendArgs,
        #[arg(long)]
        json: bool,
    },
}

/// An error the user caused (bad flag value, missing or broken file, prompt
/// too long): exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<qstar_engine::EngineError>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
        if cause
            .downcast_ref::<qstar_store::StoreError>()
            .is_some_and(|e| matches!(e, qstar_store::StoreError::ConfigMismatch { .. }))
        {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<qstar_search::SearchError>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
        if let Some(e) = cause.downcast_ref::<qstar_core::ModelError>() {
            return if e.is_input_error() { 2 } else { 1 };
        }
    }
    1
}

/// `--config FILE` of the labeling jobs (label, rate, revise, judge): a
/// TOML table whose keys are flag names (`principles = "all"`,
/// `no_debias = true`, `few_shot = 2`). Its flags are added to the command
/// line unless the command line sets them itself, so flags win.
fn expand_config(argv: Vec<String>) -> Result<Vec<String>, String> {
    let jobs = ["label", "rate", "revise", "judge"];
    if !argv.get(1).is_some_and(|c| jobs.contains(&c.as_str())) {
        return Ok(argv);
    }
    let Some(at) = argv
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(argv);
    };
    let (path, remove) = match argv[at].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (argv.get(at + 1).cloned().ok_or("--config needs a file")?, 2),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let mut rest: Vec<String> = argv[..at].to_vec();
    rest.extend(argv[at + remove..].iter().cloned());
    let given = |flag: &str| {
        rest.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let mut added = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        if given(&flag) {
            continue;
        }
        let values: Vec<&toml::Value> = match &value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) => added.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => added.extend([flag.clone(), s.clone()]),
                toml::Value::Integer(_) | toml::Value::Float(_) => {
                    added.extend([flag.clone(), v.to_string()])
                }
                other => return Err(format!("{path}: {key} = {other} is not a flag value")),
            }
        }
    }
    rest.splice(2..2, added);
    Ok(rest)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QSTAR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let argv = match expand_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Model { command } => match command {
                ModelCommand::Fetch => commands::model_fetch().await,
                ModelCommand::Info { backend, json } => commands::model_info(&backend, json).await,
            },
            Command::Generate(args) => commands::generate(args).await,
            Command::Score(args) => commands::score(args).await,
            Command::Choose(args) => commands::choose(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Label(args) => label::label(args).await,
            Command::Rate(args) => label::rate(args).await,
            Command::Revise(args) => label::revise(args).await,
            Command::Judge(args) => label::judge(args).await,
            Command::Solve(args) => solve::solve(args).await,
            Command::Sweep(args) => sweep::sweep(args).await,
            Command::Tasks { command } => match command {
                TasksCommand::Generate(args) => tasks::generate(args),
            },
            Command::Eval { command } => match command {
                EvalCommand::Labels(args) => label::eval_labels(args),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
