//! `qstar`: AI feedback and test-time reasoning from the command line.

mod backend;
mod bench;
mod bench_serve;
mod bench_train;
mod commands;
mod export;
mod head_lora;
mod inspect;
mod job;
mod label;
mod pairs;
mod prm;
mod prm800k;
mod prompts;
mod report;
mod reward;
mod serve;
mod settings;
mod solve;
mod steps;
mod sweep;
mod tasks;
mod token_reward;
mod train;

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
    /// Preference pairs with a verifiable winner: N samples per question,
    /// marked by the task's checker, a correct one against an incorrect one.
    Pairs(pairs::PairsArgs),
    /// Automatic step labels (Math-Shepherd): rollouts from the end of each
    /// step of sampled solutions, marked by the task's checker.
    LabelSteps(steps::LabelStepsArgs),
    /// Compare strategies × budgets: table, sweep.json, sweep.png.
    Sweep(sweep::SweepArgs),
    /// Train the model: supervised fine-tuning and DPO (LoRA or full), and
    /// reward models; resumable.
    Train {
        #[command(subcommand)]
        command: TrainCommand,
    },
    /// Generate synthetic question sets.
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Write the model (with a LoRA adapter merged in) for other programs.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Measure labels, models and searches.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Serve the model over HTTP: the OpenAI API and qstar's endpoints.
    Serve(serve::ServeArgs),
    /// A page to look at labels, search trees and runs (all assets built in).
    Inspect(inspect::InspectArgs),
    /// The prompt templates that `--prompts DIR` replaces.
    Prompts {
        #[command(subcommand)]
        command: PromptsCommand,
    },
}

#[derive(Subcommand)]
enum PromptsCommand {
    /// Write every built-in template to DIR/<name>.j2, to edit and pass
    /// back with `--prompts DIR`.
    Export(prompts::ExportArgs),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Agreement of AI labels with the source's preferences, position bias
    /// and calibration.
    Labels(label::EvalLabelsArgs),
    /// A reward model's accuracy, calibration and mean margin on pairs.
    Rm(reward::EvalRmArgs),
    /// Where DPO's per-token implicit reward is lowest in wrong solutions
    /// of `qstar solve`, against their first wrong token.
    TokenReward(token_reward::EvalTokenRewardArgs),
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Supervised fine-tuning on prompt/completion, messages or question/answer rows.
    Sft(train::SftArgs),
    /// A reward model: a scalar head on the last hidden state, trained on
    /// preference pairs (Bradley–Terry, or cross-entropy on soft labels).
    Rm(reward::TrainRmArgs),
    /// Direct preference optimization on preference pairs (sigmoid, robust,
    /// IPO, or soft labels), with reference log-probabilities kept in the run.
    Dpo(train::DpoArgs),
    /// A process reward model: a scalar head on the state at each step's
    /// end, trained on soft or hard step labels.
    Prm(prm::TrainPrmArgs),
}

#[derive(Subcommand)]
enum ExportCommand {
    /// A GGUF file (Q8_0 or F16) with the adapter merged into the weights,
    /// which llama.cpp loads.
    Gguf(export::GgufArgs),
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

/// A count flag's parser: a number from `low` to `high`, so a typo cannot
/// ask for a billion samples.
pub fn bounded(low: usize, high: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(low as u64..=high as u64)
}

/// A flag that must be a finite number above zero (β, a temperature of a
/// reward): zero or a negative would silently invert or erase what it
/// scales.
pub fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err(format!("{s} is not a finite number above 0")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// A string flag's parser that refuses the empty string (an empty stop
/// string or step delimiter would end every generation after one token).
pub fn non_empty(flag: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |s: &str| {
        if s.is_empty() {
            Err(format!("{flag} must not be empty"))
        } else {
            Ok(s.to_string())
        }
    }
}

fn main() -> ExitCode {
    report::init_logging();
    let argv = match settings::merge_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            report::error(e);
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
            report::error(format!("cannot start the async runtime: {e}"));
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
            Command::Pairs(args) => pairs::pairs(args).await,
            Command::LabelSteps(args) => steps::label_steps(args).await,
            Command::Sweep(args) => sweep::sweep(args).await,
            Command::Train { command } => match command {
                TrainCommand::Sft(args) => train::sft(args).await,
                TrainCommand::Rm(args) => reward::train_rm(args).await,
                TrainCommand::Dpo(args) => train::dpo(args).await,
                TrainCommand::Prm(args) => prm::train_prm(args).await,
            },
            Command::Tasks { command } => match command {
                TasksCommand::Generate(args) => tasks::generate(args),
            },
            Command::Export { command } => match command {
                ExportCommand::Gguf(args) => export::gguf(args).await,
            },
            Command::Eval { command } => match command {
                EvalCommand::Labels(args) => label::eval_labels(args),
                EvalCommand::Rm(args) => reward::eval_rm(args).await,
                EvalCommand::TokenReward(args) => token_reward::eval_token_reward(args).await,
            },
            Command::Serve(args) => serve::serve(args).await,
            Command::Inspect(args) => inspect::inspect(args).await,
            Command::Prompts { command } => match command {
                PromptsCommand::Export(args) => prompts::export(args),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report::error(format!("{e:#}"));
            ExitCode::from(exit_code(&e))
        }
    }
}
