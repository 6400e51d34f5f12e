//! `qstar solve`: test-time search over a file of questions, one record per
//! question committed to the store as soon as it is done, so a stopped run
//! resumes where it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use qstar_core::LanguageModel;
use qstar_search::verifier::Aggregation;
pub use qstar_search::{verifier_names, SolveRecord, VerifierKind};
use qstar_search::{Compute, Policy, SearchConfig, SearchError, Solver, Strategy};
use qstar_store::Store;
use qstar_tasks::{read_problems, Problem, Task};
use serde::Serialize;
use serde_json::json;

use crate::backend::BackendArgs;
use crate::job::{add_fingerprint, open_store, Finished, Job};
use crate::label::Format;
use crate::prm::ProcessRewardModel;
use crate::prompts::{PromptArgs, PromptSet};
use crate::report::{Align, Reporter, Text};
use crate::reward::RewardModel;
use crate::{bounded, non_empty, UsageError};

/// The largest budget N (samples, beams, simulations or attempts).
pub const MAX_BUDGET: usize = 1024;

/// What `solve` and `sweep` share: the model, the questions, the search
/// settings and the verifier.
#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// gsm8k, arithmetic, math or serial:<modadd|permutation|squaring|circuit>.
    #[arg(long)]
    pub task: String,
    /// Questions (JSONL): GSM8K, MATH, or rows written by `qstar tasks generate`.
    #[arg(long)]
    pub input: PathBuf,
    /// What scores steps and solutions: checker, prm, orm, confidence,
    /// leco, dpo, likelihood, agreement, orm-model:DIR (a reward model
    /// `qstar train rm` wrote) or prm-model:DIR (`qstar train prm`).
    #[arg(long, value_parser = VerifierParser)]
    pub verifier: Option<VerifierArg>,
    /// How step scores combine (default: the verifier's own).
    #[arg(long, value_enum)]
    pub aggregation: Option<Aggregation>,
    #[arg(long)]
    pub limit: Option<usize>,
    /// Settings (TOML): flag names and the search settings without a flag
    /// (`top_p`, `c_puct`, …); a flag on the command line wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Beam width M (beam keeps N/M, DVTS runs N/M subtrees).
    #[arg(long)]
    pub beam_width: Option<usize>,
    /// Lookahead steps.
    #[arg(long)]
    pub lookahead: Option<usize>,
    /// MCTS children per expansion.
    #[arg(long)]
    pub mcts_children: Option<usize>,
    /// MCTS actions of this many tokens instead of whole steps.
    #[arg(long)]
    pub mini_step_tokens: Option<usize>,
    /// MCTS: start one child of a weak node with a reflection prompt.
    #[arg(long)]
    pub reflection: bool,
    /// MCTS: value new nodes by greedy rollouts to the end.
    #[arg(long)]
    pub mcts_rollout: bool,
    /// Sequential revision: parallel chains sharing the budget.
    #[arg(long)]
    pub revision_chains: Option<usize>,
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Stop each question's search after this many generated tokens (the
    /// budget N then only caps it), to compare strategies at equal compute.
    #[arg(long)]
    pub token_budget: Option<usize>,
    #[arg(long)]
    pub max_step_tokens: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Where steps end (default: a blank line).
    #[arg(long, value_parser = non_empty("--step-delimiter"))]
    pub step_delimiter: Option<String>,
    /// How prompts reach the model (default: chat, or the config file's
    /// `format`).
    #[arg(long, value_enum)]
    pub prompt_format: Option<Format>,
    /// Reference model of the dpo verifier (GGUF; default with --adapter:
    /// the model without the adapter).
    #[arg(long)]
    pub ref_model: Option<PathBuf>,
    /// β of the dpo verifier (default 0.1).
    #[arg(long, value_parser = crate::positive_f64)]
    pub beta: Option<f64>,
    /// Questions searched at once (their requests are batched together).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Where finished records are kept (default: beside the output).
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub prompts: PromptArgs,
}

#[derive(Args)]
pub struct SolveArgs {
    #[command(flatten)]
    pub search: SearchArgs,
    /// The search strategy.
    #[arg(long, value_enum)]
    pub strategy: Strategy,
    /// N: samples, beams, simulations or attempts (1 to 1024).
    #[arg(long, default_value_t = 4, value_parser = bounded(1, MAX_BUDGET))]
    pub budget: usize,
    /// Records (JSONL), written when the job ends.
    #[arg(long)]
    pub out: PathBuf,
    /// The policy of compute-optimal search (a `sweep.json`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A `--verifier`: its kind, and the trained model's directory for the
/// kinds that need one (`orm-model:DIR`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierArg {
    pub kind: VerifierKind,
    pub model: Option<PathBuf>,
}

impl From<VerifierKind> for VerifierArg {
    fn from(kind: VerifierKind) -> Self {
        VerifierArg { kind, model: None }
    }
}

/// Parses `--verifier`: a verifier's name (clap's own error, with the
/// possible values, for an unknown one), or `orm-model:DIR` / `prm-model:DIR`
/// for the kinds that read a trained model.
#[derive(Clone)]
pub struct VerifierParser;

impl clap::builder::TypedValueParser for VerifierParser {
    type Value = VerifierArg;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<VerifierArg, clap::Error> {
        let names = clap::builder::EnumValueParser::<VerifierKind>::new();
        let text = value.to_string_lossy();
        let (name, dir) = match text.split_once(':') {
            Some((name, dir)) => (name, Some(dir)),
            None => (text.as_ref(), None),
        };
        let kind = names.parse_ref(cmd, arg, std::ffi::OsStr::new(name))?;
        trained_model(kind, name, dir).map_err(|message| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{message}\n"))
                .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            <VerifierKind as clap::ValueEnum>::value_variants()
                .iter()
                .filter_map(clap::ValueEnum::to_possible_value),
        ))
    }
}

/// The verifier `kind` with the directory after its name, which the kinds
/// that read a trained model need and the others refuse.
fn trained_model(kind: VerifierKind, name: &str, dir: Option<&str>) -> Result<VerifierArg, String> {
    let trained = matches!(kind, VerifierKind::OrmModel | VerifierKind::PrmModel);
    match (kind, dir) {
        (_, Some(dir)) if trained && !dir.is_empty() => Ok(VerifierArg {
            kind,
            model: Some(PathBuf::from(dir)),
        }),
        _ if trained => Err(format!(
            "{name} names its trained model: --verifier {name}:DIR"
        )),
        (_, Some(_)) => Err(format!("the {name} verifier takes no directory")),
        (_, None) => Ok(kind.into()),
    }
}

/// Everything a search job needs, opened once.
pub struct Setup {
    pub model: Arc<dyn LanguageModel>,
    pub reference_model: Option<Arc<dyn LanguageModel>>,
    /// The reference engine's parameter count, for its FLOPs.
    pub reference_parameters: Option<u64>,
    /// For FLOP estimates; `None` when a server does not say.
    pub parameters: Option<u64>,
    pub task: Task,
    pub problems: Vec<Problem>,
    pub config: SearchConfig,
    pub verifier: Option<VerifierKind>,
    pub aggregation: Option<Aggregation>,
    pub beta: f64,
    pub ref_model: Option<PathBuf>,
    /// The orm-model verifier's reward model and its directory.
    pub reward_model: Option<(PathBuf, RewardModel)>,
    /// The prm-model verifier's process reward model and its directory.
    pub step_model: Option<(PathBuf, ProcessRewardModel)>,
    pub parallel: usize,
    pub input: PathBuf,
    backend: BackendArgs,
    /// The templates, for the job's key (the search renders
    /// `config.prompts`).
    prompts: PromptSet,
}

/// The keys of the search settings (`SearchConfig`) a config file may hold
/// besides flag names.
pub fn search_config_keys() -> Vec<String> {
    let mut keys: Vec<String> = serde_json::to_value(SearchConfig::default())
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default();
    // Skipped when unset, so not in the default's serialization.
    keys.push("token_budget".into());
    keys
}

impl SearchArgs {
    pub async fn setup(&self) -> Result<Setup> {
        let task = Task::parse(&self.task).map_err(UsageError)?;
        let prompts = PromptSet::load(&self.prompts)?;
        // The file's flag-named keys reached the flags already (see
        // `settings`); the search settings are read here.
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
                let mut table: toml::Table = toml::from_str(&text)
                    .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
                let keys = search_config_keys();
                table.retain(|k, _| keys.iter().any(|x| x == k));
                toml::Value::Table(table)
                    .try_into::<SearchConfig>()
                    .map_err(|e| UsageError(format!("{}: {e}", path.display())))?
            }
            None => SearchConfig::default(),
        };
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut config.beam_width, self.beam_width);
        set(&mut config.lookahead, self.lookahead);
        set(&mut config.mcts_children, self.mcts_children);
        set(&mut config.revision_chains, self.revision_chains);
        set(&mut config.max_tokens, self.max_tokens);
        set(&mut config.max_step_tokens, self.max_step_tokens);
        set(&mut config.max_steps, self.max_steps);
        if let Some(s) = self.seed {
            config.seed = s;
        }
        if self.token_budget.is_some() {
            config.token_budget = self.token_budget;
        }
        if let Some(t) = self.temperature {
            config.temperature = t;
        }
        if self.mini_step_tokens.is_some() {
            config.mini_step_tokens = self.mini_step_tokens;
        }
        if let Some(d) = &self.step_delimiter {
            config.step_delimiter = d.replace("\\n", "\n");
        }
        config.prompts = prompts.search.clone();
        config.reflection |= self.reflection;
        config.mcts_rollout |= self.mcts_rollout;
        if let Some(f) = self.prompt_format {
            config.format = f.into();
        }
        if config.step_delimiter.is_empty() {
            return Err(UsageError(
                "the step delimiter is empty: every step would end after one token".into(),
            )
            .into());
        }
        let verifier = self.verifier.as_ref().map(|v| v.kind);
        let problems =
            read_problems(&self.input, task, self.limit).map_err(|e| UsageError(e.to_string()))?;
        let (model, parameters) = self.backend.open_with_size().await?;
        // The dpo verifier's reference (`reference_engine` refuses a search
        // with neither --ref-model nor --adapter); another verifier loads
        // one only when --ref-model asks for it.
        let (reference_model, reference_parameters): (Option<Arc<dyn LanguageModel>>, _) =
            if verifier == Some(VerifierKind::Dpo) || self.ref_model.is_some() {
                let engine = self
                    .backend
                    .reference_engine(self.ref_model.as_deref())
                    .await?;
                let parameters = engine.info().parameters as u64;
                (Some(Arc::new(engine)), Some(parameters))
            } else {
                (None, None)
            };
        let trained = self
            .verifier
            .as_ref()
            .and_then(|v| v.model.clone().map(|dir| (v.kind, dir)));
        let (mut reward_model, mut step_model) = (None, None);
        match trained {
            Some((VerifierKind::OrmModel, dir)) => {
                let mut rm = RewardModel::open(&dir, None, self.backend.threads, None).await?;
                rm.features.stop_caching_new_states();
                reward_model = Some((dir, rm));
            }
            Some((VerifierKind::PrmModel, dir)) => {
                let prm = ProcessRewardModel::open(&dir, self.backend.threads).await?;
                if prm.config.step_delimiter != config.step_delimiter {
                    return Err(UsageError(format!(
                        "{} was trained on steps ended by {:?}, this search ends them with {:?}: \
                         pass the same --step-delimiter",
                        dir.display(),
                        prm.config.step_delimiter,
                        config.step_delimiter
                    ))
                    .into());
                }
                step_model = Some((dir, prm));
            }
            // The parser gives a directory to those two kinds only.
            Some(_) | None => {}
        }
        Ok(Setup {
            model,
            reference_model,
            reference_parameters,
            parameters,
            task,
            problems,
            config,
            verifier,
            aggregation: self.aggregation,
            beta: self.beta.unwrap_or(0.1),
            ref_model: self.ref_model.clone(),
            reward_model,
            step_model,
            parallel: self.parallel.max(1),
            input: self.input.clone(),
            backend: self.backend.clone(),
            prompts,
        })
    }
}

impl Setup {
    /// What searches a question with these settings.
    pub fn solver(&self) -> Solver<'_> {
        Solver {
            model: self.model.as_ref(),
            reference_model: self.reference_model.as_deref(),
            reference_parameters: self.reference_parameters,
            parameters: self.parameters,
            task: self.task,
            config: &self.config,
            verifier: self.verifier,
            aggregation: self.aggregation,
            beta: self.beta,
            reward_model: self
                .reward_model
                .as_ref()
                .map(|(_, rm)| rm as &dyn qstar_search::SolutionRewarder),
            step_model: self
                .step_model
                .as_ref()
                .map(|(_, prm)| prm as &dyn qstar_search::StepRewarder),
        }
    }

    /// What a job's records depend on, the job's key: every setting, the
    /// compute-optimal policy, and the SHA-256 of the model, the reference
    /// model and the input.
    pub fn describe(
        &self,
        store: &Store,
        strategy: &str,
        budget: usize,
        policy: Option<&Policy>,
    ) -> Result<serde_json::Value> {
        let ref_model_sha256 = match &self.ref_model {
            Some(p) => Some(store.file_sha256(p)?),
            None => None,
        };
        let mut described = json!({
            "task": self.task.name(),
            "questions": self.problems.len(),
            "strategy": strategy,
            "budget": budget,
            "verifier": self.verifier,
            "aggregation": self.aggregation,
            "search": self.config,
            "backend": self.model.backend_name(),
            "beta": self.beta,
            "ref_model": self.ref_model,
            "ref_model_sha256": ref_model_sha256,
            "policy": policy,
        });
        // Only with a reward model, so the keys of other jobs stay as they
        // were.
        if let Some((dir, rm)) = &self.reward_model {
            described["reward_model"] = rm.fingerprint(dir)?;
        }
        if let Some((dir, prm)) = &self.step_model {
            described["process_reward_model"] = prm.fingerprint(dir)?;
        }
        self.prompts.add_to(&mut described, crate::prompts::SEARCH);
        add_fingerprint(&mut described, store, &self.backend, &self.input)?;
        Ok(described)
    }

    /// Searches one question.
    pub async fn solve_one(
        &self,
        problem: &Problem,
        strategy: Strategy,
        budget: usize,
        policy: Option<&Policy>,
    ) -> Result<SolveRecord, SearchError> {
        self.solver().solve(problem, strategy, budget, policy).await
    }

    /// Runs `work` on every question the job `job` has no record of yet,
    /// `parallel` at a time, committing each record as it finishes.
    pub async fn run_job<F, Fut>(&self, job: &Job<'_>, work: F) -> Result<Finished>
    where
        F: Fn(Problem) -> Fut,
        Fut: std::future::Future<Output = Result<String, SearchError>>,
    {
        job.run(
            &self.problems,
            |p| p.line as u64,
            1,
            self.parallel,
            |chunk: Vec<Problem>| {
                let calls: Vec<Fut> = chunk.into_iter().map(&work).collect();
                async move {
                    let mut records = Vec::with_capacity(calls.len());
                    for call in calls {
                        records.push(call.await.map_err(|e| match e.is_input_error() {
                            true => anyhow::Error::new(UsageError(e.to_string())),
                            false => anyhow::Error::new(e),
                        })?);
                    }
                    Ok(records)
                }
            },
        )
        .await
    }
}

/// Checks up front that the strategy can run with the verifier given.
pub fn check_strategy(strategy: Strategy, args: &SearchArgs) -> Result<()> {
    if strategy.needs_verifier() && args.verifier.is_none() {
        return Err(UsageError(format!(
            "strategy {} needs --verifier ({})",
            strategy.name(),
            verifier_names()
        ))
        .into());
    }
    Ok(())
}

/// Totals over a job's records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub tokens_generated: usize,
    pub prompt_tokens_computed: usize,
    pub prompt_tokens_reused: usize,
    pub model_calls: usize,
    pub verifier_calls: usize,
    /// `None` (null) when the model's parameter count is unknown.
    pub flops: Option<f64>,
    /// Finished solutions whose answer could not be found.
    pub unparsed: usize,
    pub candidates: usize,
}

/// `solve --json`: the totals, the job's record count and how many of the
/// records an earlier run had made.
#[derive(Serialize)]
struct JobSummary<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    records: usize,
    resumed: usize,
}

pub fn summarize(records: &[SolveRecord]) -> Summary {
    let mut total = Compute::default();
    for r in records {
        total.add(&r.compute);
    }
    let correct = records.iter().filter(|r| r.correct).count();
    Summary {
        questions: records.len(),
        correct,
        accuracy: correct as f64 / records.len().max(1) as f64,
        tokens_generated: total.tokens_generated,
        prompt_tokens_computed: total.prompt_tokens_computed,
        prompt_tokens_reused: total.prompt_tokens_reused,
        model_calls: total.model_calls,
        verifier_calls: total.verifier_calls,
        flops: total.flops,
        unparsed: records.iter().map(|r| r.unparsed).sum(),
        candidates: records.iter().map(|r| r.candidates).sum(),
    }
}

pub fn parse_records(lines: &[String]) -> Result<Vec<SolveRecord>> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).context("a stored record is damaged"))
        .collect()
}

pub async fn solve(args: SolveArgs) -> Result<()> {
    let strategy = args.strategy;
    let policy = match &args.policy {
        Some(path) => Some(read_policy(path)?),
        None => None,
    };
    if strategy == Strategy::ComputeOptimal && policy.is_none() {
        return Err(UsageError(
            "compute-optimal needs --policy DIR/sweep.json (from qstar sweep)".into(),
        )
        .into());
    }
    if strategy != Strategy::ComputeOptimal {
        check_strategy(strategy, &args.search)?;
    }
    let setup = args.search.setup().await?;
    let store = open_store(args.search.store.as_deref(), &args.out)?;
    let described = setup.describe(&store, strategy.name(), args.budget, policy.as_ref())?;
    let reporter = Reporter::new(args.json);
    let job = Job::begin(
        &store,
        &format!("solve:{}", args.out.display()),
        &described,
        reporter,
        "solve",
        "questions",
    )?;
    let setup_ref = &setup;
    let policy_ref = policy.as_ref();
    let finished = setup
        .run_job(&job, |p| async move {
            let r = setup_ref
                .solve_one(&p, strategy, args.budget, policy_ref)
                .await?;
            Ok(serde_json::to_string(&r).unwrap_or_default())
        })
        .await?;
    job.export(&args.out, &finished.records)?;
    let records = parse_records(&finished.records)?;
    let summary = summarize(&records);
    let line = JobSummary {
        summary: &summary,
        records: finished.records.len(),
        resumed: finished.resumed,
    };
    let text = summary_text(&summary, &format!("{}@{}", strategy.name(), args.budget))
        .line(format!("records → {}", args.out.display()));
    reporter.summary(&line, &text)
}

/// The two-column table of a search's totals.
fn summary_text(s: &Summary, name: &str) -> Text {
    let rows = [
        ("questions", s.questions.to_string()),
        (
            "correct",
            format!("{} ({:.1} %)", s.correct, 100.0 * s.accuracy),
        ),
        ("tokens generated", s.tokens_generated.to_string()),
        (
            "prompt tokens computed / reused",
            format!("{} / {}", s.prompt_tokens_computed, s.prompt_tokens_reused),
        ),
        (
            "model / verifier calls",
            format!("{} / {}", s.model_calls, s.verifier_calls),
        ),
        ("FLOPs", flops_text(s.flops)),
        (
            "solutions without an answer",
            format!("{} of {}", s.unparsed, s.candidates),
        ),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
    Text::new().table(&[name, "value"], &[Align::Left, Align::Right], &rows)
}

/// FLOPs for a table: "unknown" when the parameter count is.
pub fn flops_text(flops: Option<f64>) -> String {
    match flops {
        Some(f) => format!("{f:.3e}"),
        None => "unknown".into(),
    }
}

pub fn read_policy(path: &Path) -> Result<Policy> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("{}: not JSON: {e}", path.display())))?;
    let policy = value.get("policy").cloned().unwrap_or(value);
    serde_json::from_value(policy).map_err(|e| {
        UsageError(format!(
            "{}: not a compute-optimal policy: {e}",
            path.display()
        ))
        .into()
    })
}
