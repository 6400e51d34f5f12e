//! `qstar train rm` and `qstar eval rm`: a reward model as a scalar head on
//! the backbone's last hidden state.
//!
//! In `head` mode only the head learns, so each reply's state is computed
//! once by the fast engine (sharing each pair's conversation through the
//! prefix cache) and kept in a feature cache; a second run, an evaluation
//! or a killed run started again reads the states back instead of
//! recomputing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use qstar_core::{LanguageModel, Message, Usage};
use qstar_engine::{Engine, EngineOptions};
use qstar_store::Store;
use qstar_tasks::preference::{read_pairs, PreferencePair};
use qstar_train::reward::{train_head, FeaturePair, HeadTraining, PairLoss, RewardHead};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::report::{Align, Reporter, Text};
use crate::UsageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RmMode {
    /// Only the head learns, on states the engine computes once.
    Head,
    /// The head is fitted as in `head` mode, then learns together with
    /// LoRA adapters on the backbone (the --lora-* settings).
    Lora,
}

/// Where the states come from and where they are kept.
#[derive(Debug, Clone, Args)]
pub struct FeatureArgs {
    /// GGUF model whose last hidden state the head reads (default: the
    /// fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Threads of the embedded engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// SQLite file that keeps computed states (default: features.sqlite in
    /// qstar's cache directory).
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// A LoRA adapter (PEFT's layout) on the backbone: the head reads the
    /// adapted model's states (a policy's own, say), and with --mode lora
    /// the adapters start from it (its rank, alpha and targets replace the
    /// --lora-* ones). A copy is kept in the trained model's directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// The pairs a training command learns from, and the ones it is evaluated
/// on.
#[derive(Args, Debug)]
pub struct PairArgs {
    /// Preference pairs: HH-RLHF transcripts, TRL rows, or `qstar label`
    /// output (whose `soft_label` the soft losses train on).
    #[arg(long)]
    pub pairs: PathBuf,
    /// Hold out the last N pairs of --pairs for evaluation.
    #[arg(long, conflicts_with = "eval_pairs")]
    pub holdout: Option<usize>,
    /// Pairs to evaluate on.
    #[arg(long)]
    pub eval_pairs: Option<PathBuf>,
    /// Read only the first N pairs of --pairs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Pass over malformed lines (each is named on stderr) instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
}

#[derive(Args, Debug)]
pub struct TrainRmArgs {
    #[command(flatten)]
    pub source: PairArgs,
    /// The reward model's directory: reward_head.safetensors,
    /// reward_model.json, metrics.jsonl, loss.png.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "head")]
    pub mode: RmMode,
    /// Train on each pair's soft label with cross-entropy (RLAIF's
    /// distillation) instead of Bradley–Terry on the hard preference.
    #[arg(long)]
    pub soft: bool,
    /// Bradley–Terry margin: the gap the chosen reply must clear.
    #[arg(long, default_value_t = 0.0, conflicts_with = "soft")]
    pub margin: f64,
    /// Weight of the reward-centring term c·(r₁ + r₂)².
    #[arg(long, default_value_t = 0.0)]
    pub center_coef: f64,
    #[arg(long, default_value_t = 30, value_parser = crate::bounded(1, 100_000))]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 32, value_parser = crate::bounded(1, 1_000_000))]
    pub batch_pairs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub features: FeatureArgs,
    #[command(flatten)]
    pub lora: crate::head_lora::LoraPhaseArgs,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalRmArgs {
    /// A directory `qstar train rm` wrote.
    #[arg(long = "model")]
    pub reward_model: PathBuf,
    #[arg(long)]
    pub pairs: PathBuf,
    #[arg(long)]
    pub limit: Option<usize>,
    /// Read only the last N pairs (e.g. the ones a training run held out).
    #[arg(long)]
    pub last: Option<usize>,
    /// Pass over malformed lines (each is named on stderr) instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    /// GGUF model of the backbone, when it is no longer where the reward
    /// model's config says (its SHA-256 must match).
    #[arg(long = "base-model")]
    pub base_model: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// What `reward_model.json` holds: enough to rebuild the features the head
/// was trained on and to check that the backbone is the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardModelConfig {
    pub mode: RmMode,
    pub base_model: PathBuf,
    pub base_model_sha256: String,
    /// How a conversation and its reply become the text the backbone reads.
    pub framing: Framing,
    pub width: usize,
    /// What the targets were: the source's preference, or the soft label.
    pub labels: String,
    pub training: HeadTraining,
    pub train_pairs: usize,
    pub pairs_sha256: String,
    /// The head file's SHA-256, so that a head written by another run into
    /// the same directory is never read with this config (models written
    /// before it was recorded have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha256: Option<String>,
    /// With an adapter (`--mode lora` or `--adapter`): its directory inside
    /// the model's, the hash of its files, and how it was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// The model's chat template with the reply as the last assistant turn,
    /// read at its end-of-turn token.
    Chat,
    /// An HH-RLHF transcript ending in the reply, for models without a
    /// chat template.
    Transcript,
}

pub const CONFIG_FILE: &str = "reward_model.json";

/// The text whose last state scores `reply` after `conversation`.
pub fn framed(
    engine: &Engine,
    framing: Framing,
    conversation: &[Message],
    reply: &str,
) -> Result<String> {
    let mut messages = conversation.to_vec();
    messages.push(Message::assistant(reply));
    Ok(match framing {
        Framing::Chat => engine.render_chat(&messages, false)?.trim_end().to_string(),
        Framing::Transcript => qstar_tasks::preference::transcript(&messages),
    })
}

/// Computes last hidden states through the engine and keeps them in the
/// feature cache, keyed on the backbone and the text.
pub struct Features {
    engine: Engine,
    /// Behind a lock so that a reward model can serve concurrent callers;
    /// it is never held across an await.
    store: std::sync::Mutex<Store>,
    /// The cache's namespace: backbone hash (with its adapter's) and
    /// framing.
    job: String,
    pub framing: Framing,
    pub model_path: PathBuf,
    pub model_sha256: String,
    /// The SHA-256 of the LoRA adapter's files on the backbone, if any.
    pub adapter_sha256: Option<String>,
    /// Whether computed states are written to the cache. Training and
    /// evaluation reread the same texts, so they keep them; a verifier in
    /// search or behind a server sees texts that never recur (every sampled
    /// step), and writing them would grow the cache without bound.
    keep_new_states: bool,
}

/// Texts sent to the engine at once: enough to fill its batch, few enough
/// that a killed run loses little.
const EMBED_CHUNK: usize = 32;

impl Features {
    /// States of `model` (default: the default model), with the PEFT
    /// adapter in `adapter` applied when one is given.
    pub async fn open(
        model: Option<&Path>,
        threads: usize,
        cache: Option<&Path>,
        framing: Option<Framing>,
        expected_sha256: Option<&str>,
        adapter: Option<&Path>,
    ) -> Result<Self> {
        let model_path = match model {
            Some(p) => p.to_path_buf(),
            None => {
                let p = qstar_engine::fetch::default_model_path();
                if !p.exists() {
                    Reporter::default()
                        .note("the default model is not in the cache yet; fetching it");
                    qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
                }
                p
            }
        };
        let cache_path = match cache {
            Some(p) => p.to_path_buf(),
            None => {
                let home = qstar_engine::fetch::home_dir();
                std::fs::create_dir_all(&home)
                    .with_context(|| format!("cannot create {}", home.display()))?;
                home.join("features.sqlite")
            }
        };
        let store = Store::open(&cache_path)
            .with_context(|| format!("opening the feature cache {}", cache_path.display()))?;
        let model_sha256 = store
            .file_sha256(&model_path)
            .map_err(|e| UsageError(format!("model {}: {e}", model_path.display())))?;
        if let Some(expected) = expected_sha256.filter(|e| *e != model_sha256) {
            return Err(UsageError(format!(
                "{} is not the model this reward model was trained on (SHA-256 {model_sha256} ≠ {expected})",
                model_path.display()
            ))
            .into());
        }
        let adapter_sha256 = adapter.map(adapter_sha256).transpose()?;
        let engine = Engine::load_with_adapter(
            &model_path,
            adapter,
            EngineOptions {
                threads,
                ..EngineOptions::default()
            },
        )?;
        let framing = framing.unwrap_or(if engine.capabilities().chat_template {
            Framing::Chat
        } else {
            Framing::Transcript
        });
        // The job names of states without an adapter are those written
        // before adapters existed, so their caches stay valid.
        let job = match &adapter_sha256 {
            None => format!("last-hidden-state/{model_sha256}/{framing:?}"),
            Some(a) => format!("last-hidden-state/{model_sha256}/adapter-{a}/{framing:?}"),
        };
        store.begin(&job, "{}")?;
        Ok(Features {
            engine,
            store: std::sync::Mutex::new(store),
            job,
            framing,
            model_path,
            model_sha256,
            adapter_sha256,
            keep_new_states: true,
        })
    }

    /// Adds the adapter's hash to a model's fingerprint when there is an
    /// adapter (a head-only model's fingerprint, and the keys of the jobs
    /// it scored, stay as they were).
    pub fn add_adapter_to(&self, fingerprint: &mut serde_json::Value) {
        if let Some(a) = &self.adapter_sha256 {
            fingerprint["adapter_sha256"] = json!(a);
        }
    }

    /// States computed from now on are used but not written to the cache
    /// (see `keep_new_states`); states already there are still read.
    pub fn stop_caching_new_states(&mut self) {
        self.keep_new_states = false;
    }

    /// The state of each text, in order: read from the cache or computed
    /// (and committed chunk by chunk, so an interrupted run keeps them).
    /// Without a reporter (a server's requests) nothing is printed.
    pub async fn states(
        &self,
        texts: &[String],
        reporter: Option<&Reporter>,
    ) -> Result<Vec<Vec<f32>>> {
        Ok(self.states_counted(texts, reporter, false).await?.0)
    }

    /// [`Features::states`], with the tokens they took: every text's
    /// prompt tokens, of which those the engine did not run (its prefix
    /// cache, a state already in the feature cache, a text given twice)
    /// count as reused.
    pub async fn states_metered(
        &self,
        texts: &[String],
        reporter: Option<&Reporter>,
    ) -> Result<(Vec<Vec<f32>>, Usage)> {
        self.states_counted(texts, reporter, true).await
    }

    /// The states, and with `count` the tokens they took (tokenizing every
    /// text, which callers that discard the count need not pay for).
    async fn states_counted(
        &self,
        texts: &[String],
        reporter: Option<&Reporter>,
        count: bool,
    ) -> Result<(Vec<Vec<f32>>, Usage)> {
        let mut usage = Usage::default();
        if count {
            usage.prompt_tokens = texts
                .iter()
                .map(|t| self.engine.tokenize(t, true).len())
                .sum();
        }
        let mut computed = 0;
        let key = |t: &str| {
            let hex = qstar_store::sha256_hex(t.as_bytes());
            u64::from_str_radix(&hex[..16], 16).unwrap_or(0)
        };
        let keys: Vec<u64> = texts.iter().map(|t| key(t)).collect();
        // Only the states these texts need are read, not the whole cache.
        let mut known: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
        {
            let store = self.store();
            for &k in &keys {
                if known.contains_key(&k) {
                    continue;
                }
                // A cache entry that does not read back is computed again.
                if let Some(v) = store
                    .get(&self.job, k)?
                    .and_then(|data| serde_json::from_str::<Vec<f32>>(&data).ok())
                {
                    known.insert(k, v);
                }
            }
        }
        let mut missing: Vec<usize> = Vec::new();
        let mut queued = std::collections::HashSet::new();
        for (i, k) in keys.iter().enumerate() {
            if !known.contains_key(k) && queued.insert(*k) {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            if let Some(r) = reporter {
                r.note(&format!(
                    "computing {} hidden states ({} cached)",
                    missing.len(),
                    texts.len() - missing.len()
                ));
            }
            let bar = match reporter {
                Some(r) => r.progress(missing.len(), 0, "states", "texts"),
                None => indicatif::ProgressBar::hidden(),
            };
            for chunk in missing.chunks(EMBED_CHUNK) {
                let batch: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
                let states = self.engine.embed(batch).await?;
                let store = self.store();
                for (&i, state) in chunk.iter().zip(states) {
                    computed += state
                        .usage
                        .prompt_tokens
                        .saturating_sub(state.usage.prompt_tokens_reused);
                    if self.keep_new_states {
                        store.put(&self.job, keys[i], &serde_json::to_string(&state.hidden)?)?;
                    }
                    known.insert(keys[i], state.hidden);
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
        }
        usage.prompt_tokens_reused = usage.prompt_tokens.saturating_sub(computed);
        let states =
            keys.iter()
                .map(|k| {
                    known.get(k).cloned().ok_or_else(|| {
                        anyhow::anyhow!("a hidden state went missing from the cache")
                    })
                })
                .collect::<Result<_>>()?;
        Ok((states, usage))
    }

    /// The engine the states come from (to frame prompts as it renders
    /// them).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic elsewhere while holding it leaves a store that is still
        // consistent (SQLite commits whole records).
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each reply's state after its conversation, in order, with the
    /// tokens they took.
    pub async fn reply_states(
        &self,
        items: &[(&[Message], &str)],
        reporter: Option<&Reporter>,
    ) -> Result<(Vec<Vec<f32>>, Usage)> {
        let texts = items
            .iter()
            .map(|(conversation, reply)| framed(&self.engine, self.framing, conversation, reply))
            .collect::<Result<Vec<_>>>()?;
        self.states_metered(&texts, reporter).await
    }

    /// The parameters a hidden state runs through, for its FLOPs: the
    /// layers' weights only (the embedding is a lookup, and the output
    /// projection is never applied to a state).
    pub fn parameters(&self) -> u64 {
        self.engine.info().config.layer_parameters() as u64
    }

    /// Each pair's (chosen, rejected) states, in order.
    pub async fn pair_states(
        &self,
        pairs: &[PreferencePair],
        reporter: Option<&Reporter>,
    ) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let mut texts = Vec::with_capacity(2 * pairs.len());
        for p in pairs {
            texts.push(framed(
                &self.engine,
                self.framing,
                &p.conversation,
                &p.chosen,
            )?);
            texts.push(framed(
                &self.engine,
                self.framing,
                &p.conversation,
                &p.rejected,
            )?);
        }
        let mut states = self.states(&texts, reporter).await?.into_iter();
        let mut out = Vec::with_capacity(pairs.len());
        while let (Some(c), Some(r)) = (states.next(), states.next()) {
            out.push((c, r));
        }
        Ok(out)
    }
}

/// Saves a trained head into a model's directory; returns its SHA-256.
pub fn save_head(head: &RewardHead, out: &Path) -> Result<String> {
    head.save(out).map_err(anyhow::Error::new)?;
    sha256(&out.join(qstar_train::reward::HEAD_FILE))
}

/// Removes a model's config file if there is one (a run about to write a
/// model there), so a run that fails half-way leaves no model that pairs
/// its files with another run's.
pub fn remove_config(out: &Path, name: &str) -> Result<()> {
    let path = out.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::Error::new(e).context(format!("cannot replace {}", path.display())))
        }
        _ => Ok(()),
    }
}

/// The head in `dir`, checked to read `width` features and, when the
/// config records it, to be the head the config was written with.
pub fn load_checked_head(
    dir: &Path,
    width: usize,
    expected_sha256: &Option<String>,
) -> Result<RewardHead> {
    if let Some(expected) = expected_sha256 {
        let found = sha256(&dir.join(qstar_train::reward::HEAD_FILE))
            .map_err(|e| UsageError(format!("{e:#}")))?;
        if &found != expected {
            return Err(UsageError(format!(
                "{}: the head is not the one this model's config was written with (SHA-256 {found} ≠ {expected})",
                dir.display()
            ))
            .into());
        }
    }
    load_head(dir, width)
}

/// A model whose adapter is not the one its config names (edited or
/// replaced since training) is refused.
pub fn check_adapter(dir: &Path, expected: &Option<String>, features: &Features) -> Result<()> {
    if expected != &features.adapter_sha256 {
        return Err(UsageError(format!(
            "{}: the adapter is not the one this model was trained with (SHA-256 {} ≠ {})",
            dir.display(),
            features.adapter_sha256.as_deref().unwrap_or("none"),
            expected.as_deref().unwrap_or("none"),
        ))
        .into());
    }
    Ok(())
}

/// One hash of an adapter directory's files (weights and config).
pub fn adapter_sha256(dir: &Path) -> Result<String> {
    let mut joined = String::new();
    for file in qstar_engine::peft::adapter_files(dir) {
        let hash = qstar_store::sha256_of(&file)
            .map_err(|e| UsageError(format!("adapter {}: {e}", file.display())))?;
        joined.push_str(&hash);
    }
    Ok(qstar_store::sha256_hex(joined.as_bytes()))
}

/// The pairs of a file; with `skip_invalid`, malformed lines are passed
/// over, each named on stderr, and counted.
fn read(
    path: &Path,
    limit: Option<usize>,
    skip_invalid: bool,
    reporter: &Reporter,
) -> Result<(Vec<PreferencePair>, usize)> {
    let report = read_pairs(path, skip_invalid, limit).map_err(|e| UsageError(e.to_string()))?;
    for (line, _, why) in &report.rejected_lines {
        reporter.note(&format!("{}:{line}: skipped: {why}", path.display()));
    }
    if report.pairs.is_empty() {
        return Err(UsageError(format!("{}: no preference pairs", path.display())).into());
    }
    Ok((report.pairs, report.rejected_lines.len()))
}

/// What a training command learns from and is evaluated on.
pub struct PairSplit {
    pub train: Vec<PreferencePair>,
    pub eval: Vec<PreferencePair>,
    /// The file the evaluation pairs come from (for error messages).
    pub eval_path: PathBuf,
    /// Malformed lines passed over (`skip_invalid`).
    pub skipped: usize,
}

impl PairArgs {
    /// The pairs of --pairs (the first --limit), and the evaluation pairs:
    /// those of --eval-pairs, or the last --holdout of --pairs, or none.
    pub fn read(&self, reporter: &Reporter) -> Result<PairSplit> {
        let (pairs, skip_invalid) = (&self.pairs, self.skip_invalid);
        let (mut train, mut skipped) = read(pairs, self.limit, skip_invalid, reporter)?;
        let (eval, eval_path) = match (self.eval_pairs.as_deref(), self.holdout) {
            (Some(p), _) => {
                let (read_pairs, n) = read(p, None, skip_invalid, reporter)?;
                skipped += n;
                (read_pairs, p.to_path_buf())
            }
            (None, Some(n)) => {
                if n >= train.len() {
                    return Err(UsageError(format!(
                        "--holdout {n} leaves no pairs to train on ({} read)",
                        train.len()
                    ))
                    .into());
                }
                let held = train.split_off(train.len() - n);
                (held, pairs.to_path_buf())
            }
            (None, None) => (Vec::new(), pairs.to_path_buf()),
        };
        Ok(PairSplit {
            train,
            eval,
            eval_path,
            skipped,
        })
    }
}

pub fn sha256(path: &Path) -> Result<String> {
    qstar_store::sha256_of(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The features and targets of `pairs`: the target is 1 (the row's chosen
/// reply wins) unless `soft`, where it is the row's soft label.
fn feature_pairs(
    pairs: &[PreferencePair],
    states: Vec<(Vec<f32>, Vec<f32>)>,
    soft: bool,
    path: &Path,
) -> Result<Vec<FeaturePair>> {
    pairs
        .iter()
        .zip(states)
        .map(|(p, (chosen, rejected))| {
            let target = if soft {
                p.soft_label.ok_or_else(|| {
                    UsageError(format!(
                        "{}:{}: --soft needs a `soft_label` on every row (`qstar label` writes it)",
                        path.display(),
                        p.line
                    ))
                })?
            } else {
                1.0
            };
            Ok(FeaturePair {
                chosen,
                rejected,
                target,
            })
        })
        .collect()
}

pub async fn train_rm(args: TrainRmArgs) -> Result<()> {
    let reporter = Reporter::new(args.json);
    let training = HeadTraining {
        loss: if args.soft {
            PairLoss::Soft
        } else {
            PairLoss::BradleyTerry {
                margin: args.margin,
            }
        },
        center_coef: args.center_coef,
        epochs: args.epochs,
        batch_pairs: args.batch_pairs,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
    };
    training.check().map_err(UsageError)?;
    let split = args.source.read(&reporter)?;
    let (pairs, eval_pairs, eval_path, skipped) =
        (split.train, split.eval, split.eval_path, split.skipped);
    let features = Features::open(
        args.features.model.as_deref(),
        args.features.threads,
        args.features.feature_cache.as_deref(),
        None,
        None,
        args.features.adapter.as_deref(),
    )
    .await?;
    let train_states = features.pair_states(&pairs, Some(&reporter)).await?;
    let eval_states = features.pair_states(&eval_pairs, Some(&reporter)).await?;
    let train = feature_pairs(&pairs, train_states, args.soft, &args.source.pairs)?;
    // Evaluation is against the row's preferred reply, whatever trained.
    let eval = feature_pairs(&eval_pairs, eval_states, false, &eval_path)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // A model already in the directory stops being one until this run has
    // written all of its own files.
    remove_config(&args.out, CONFIG_FILE)?;
    let mut log = String::new();
    let bar = reporter.progress(args.epochs, 0, "train rm", "epochs");
    let (head, records) = train_head(&train, &eval, &training, |r| {
        log.push_str(&serde_json::to_string(r).unwrap_or_default());
        log.push('\n');
        bar.inc(1);
    })
    .map_err(UsageError)?;
    bar.finish_and_clear();
    qstar_train::checkpoint::write_atomic(&args.out.join("metrics.jsonl"), log.as_bytes())?;
    let margins = |head: &RewardHead, set: &[FeaturePair]| -> Vec<f64> {
        set.iter()
            .map(|p| head.reward(&p.chosen) - head.reward(&p.rejected))
            .collect()
    };
    // What the head alone reached, kept beside the LoRA figures.
    let head_eval = (!eval.is_empty()).then(|| qstar_eval::reward_metrics(&margins(&head, &eval)));
    let mut config = RewardModelConfig {
        mode: args.mode,
        base_model: features.model_path.clone(),
        base_model_sha256: features.model_sha256.clone(),
        framing: features.framing,
        width: head.width(),
        labels: if args.soft { "soft" } else { "hard" }.into(),
        training,
        train_pairs: train.len(),
        pairs_sha256: sha256(&args.source.pairs)?,
        head_sha256: None,
        adapter: None,
        adapter_sha256: None,
        lora: None,
    };
    let (train_metrics, eval_metrics, lora_figures) = match args.mode {
        RmMode::Head => {
            config.head_sha256 = Some(save_head(&head, &args.out)?);
            if let Some(adapter) = &args.features.adapter {
                let kept = crate::head_lora::keep_adapter(adapter, &args.out)?;
                config.adapter = Some(crate::head_lora::ADAPTER_DIR.into());
                config.adapter_sha256 = Some(adapter_sha256(&kept)?);
            }
            let train_curve: Vec<(f64, f64)> = records
                .iter()
                .map(|r| (r.epoch as f64, r.train_loss))
                .collect();
            let eval_curve: Vec<(f64, f64)> = records
                .iter()
                .filter_map(|r| r.eval_loss.map(|l| (r.epoch as f64, l)))
                .collect();
            reporter.before_plot();
            qstar_eval::plot::loss_curve(
                &args.out.join("loss.png"),
                "reward model: pairwise loss per epoch",
                &train_curve,
                &eval_curve,
            )?;
            let train_metrics = qstar_eval::reward_metrics(&margins(&head, &train));
            (train_metrics, head_eval.clone(), None)
        }
        RmMode::Lora => {
            let data = crate::head_lora::ScoredData::Pairs {
                train: scored_pairs(
                    &features,
                    &pairs,
                    &train,
                    &args,
                    &args.source.pairs,
                    &reporter,
                )?,
                eval: scored_pairs(&features, &eval_pairs, &eval, &args, &eval_path, &reporter)?,
                loss: training.loss,
                center_coef: training.center_coef,
            };
            let resolved = json!({
                "command": "train rm --mode lora",
                "pairs_sha256": config.pairs_sha256,
                "eval_pairs_sha256": args.source.eval_pairs.as_deref().map(sha256).transpose()?,
                "limit": args.source.limit,
                "holdout": args.source.holdout,
                "skip_invalid": args.source.skip_invalid,
                "labels": config.labels,
                "framing": config.framing,
                "head_training": training,
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
                resolved.clone(),
                &reporter,
            )
            .await?;
            config.head_sha256 = Some(save_head(&phase.head, &args.out)?);
            crate::head_lora::plot(
                &args.out,
                "reward model with LoRA: pairwise loss per step",
                &phase.records,
            )?;
            // The figures are the engine's, with the adapter applied, as
            // `qstar eval rm` and search see the model.
            config.adapter = Some(crate::head_lora::ADAPTER_DIR.into());
            config.adapter_sha256 = Some(adapter_sha256(&phase.adapter)?);
            config.lora = Some(phase.describe(&args.lora));
            write_config(&args.out, CONFIG_FILE, &config)?;
            let rm = RewardModel::open(
                &args.out,
                None,
                args.features.threads,
                args.features.feature_cache.as_deref(),
            )
            .await?;
            let train_metrics =
                qstar_eval::reward_metrics(&rm.margins(&pairs, Some(&reporter)).await?);
            let eval_metrics = if eval_pairs.is_empty() {
                None
            } else {
                Some(qstar_eval::reward_metrics(
                    &rm.margins(&eval_pairs, Some(&reporter)).await?,
                ))
            };
            let figures = json!({
                "steps": phase.summary.steps,
                "tokens": phase.summary.tokens,
                "tok_s": phase.summary.tok_s,
                "resumed_from": phase.summary.resumed_from,
                "final_loss": phase.summary.final_loss,
                "head_only_eval_accuracy": head_eval.as_ref().map(|m| m.accuracy),
            });
            (train_metrics, eval_metrics, Some(figures))
        }
    };
    write_config(&args.out, CONFIG_FILE, &config)?;

    let last = records.last();
    let figures = json!({
        "mode": args.mode,
        "train_pairs": train.len(),
        "eval_pairs": eval.len(),
        "skipped_lines": skipped,
        "epochs": args.epochs,
        "labels": config.labels,
        "final_train_loss": last.map(|r| r.train_loss),
        "train_accuracy": train_metrics.accuracy,
        "eval_accuracy": eval_metrics.as_ref().map(|m| m.accuracy),
        "eval_ece": eval_metrics.as_ref().map(|m| m.ece),
        "eval_mean_margin": eval_metrics.as_ref().map(|m| m.mean_margin),
        "lora": lora_figures,
        "out": args.out,
    });
    let fmt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.4}"));
    let what = match args.mode {
        RmMode::Head => "a reward head",
        RmMode::Lora => "a reward head and LoRA adapter",
    };
    let mut rows = vec![
        (
            match args.mode {
                RmMode::Head => "final train loss",
                RmMode::Lora => "final train loss (head phase)",
            },
            fmt(last.map(|r| r.train_loss)),
        ),
        ("train accuracy", fmt(Some(train_metrics.accuracy))),
        ("eval pairs", eval.len().to_string()),
        (
            "eval accuracy",
            fmt(eval_metrics.as_ref().map(|m| m.accuracy)),
        ),
        ("eval ECE", fmt(eval_metrics.as_ref().map(|m| m.ece))),
    ];
    if args.mode == RmMode::Lora {
        rows.push((
            "eval accuracy, head only",
            fmt(head_eval.as_ref().map(|m| m.accuracy)),
        ));
    }
    let text = Text::new()
        .line(format!(
            "trained {what} on {} pairs ({} labels) → {}",
            train.len(),
            config.labels,
            args.out.display()
        ))
        .metrics(&rows);
    reporter.summary(&figures, &text)
}

/// Writes a trained model's JSON configuration (`name` in `out`)
/// atomically: [`read_config`]'s counterpart.
pub fn write_config<T: Serialize>(out: &Path, name: &str, config: &T) -> Result<()> {
    qstar_train::checkpoint::write_atomic(
        &out.join(name),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )?;
    Ok(())
}

/// Each pair's two framed replies as token sequences for the LoRA phase,
/// with the targets the head was fitted on; a pair too long to train on
/// is an error naming its line, or with --skip-invalid is named and left
/// out.
fn scored_pairs(
    features: &Features,
    pairs: &[PreferencePair],
    targets: &[FeaturePair],
    args: &TrainRmArgs,
    path: &Path,
    reporter: &Reporter,
) -> Result<Vec<qstar_train::head_objectives::ScoredPair>> {
    let engine = features.engine();
    let context = engine.info().config.context_length;
    let mut out = Vec::with_capacity(pairs.len());
    for (p, t) in pairs.iter().zip(targets) {
        let sequence = |reply: &str| -> Result<qstar_train::Sequence> {
            let text = framed(engine, features.framing, &p.conversation, reply)?;
            args.lora
                .sequence(engine.tokenize(&text, true), context)
                .map_err(|why| UsageError(format!("{}:{}: {why}", path.display(), p.line)).into())
        };
        match sequence(&p.chosen).and_then(|c| Ok((c, sequence(&p.rejected)?))) {
            Ok((chosen, rejected)) => out.push(qstar_train::head_objectives::ScoredPair {
                chosen,
                rejected,
                target: t.target,
            }),
            Err(e) if args.source.skip_invalid => {
                reporter.note(&format!("{e:#}: skipped"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A trained model's JSON configuration; a missing or broken one is the
/// user's error, naming the file.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(serde_json::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?)
}

/// The head in `dir`, checked to read `width` features as its config says.
pub fn load_head(dir: &Path, width: usize) -> Result<RewardHead> {
    let head = RewardHead::load(dir).map_err(|e| UsageError(e.to_string()))?;
    if head.width() != width {
        return Err(UsageError(format!(
            "{}: the head reads {} features, the config says {width}",
            dir.display(),
            head.width()
        ))
        .into());
    }
    Ok(head)
}

/// A trained reward model ready to score replies.
pub struct RewardModel {
    pub config: RewardModelConfig,
    pub head: RewardHead,
    pub features: Features,
}

impl RewardModel {
    pub async fn open(
        dir: &Path,
        base_model: Option<&Path>,
        threads: usize,
        cache: Option<&Path>,
    ) -> Result<Self> {
        let config: RewardModelConfig = read_config(&dir.join(CONFIG_FILE))?;
        let head = load_checked_head(dir, config.width, &config.head_sha256)?;
        let model = base_model.unwrap_or(&config.base_model);
        let adapter = config.adapter.as_ref().map(|a| dir.join(a));
        let features = Features::open(
            Some(model),
            threads,
            cache,
            Some(config.framing),
            Some(&config.base_model_sha256),
            adapter.as_deref(),
        )
        .await?;
        check_adapter(dir, &config.adapter_sha256, &features)?;
        Ok(RewardModel {
            config,
            head,
            features,
        })
    }

    /// The reward of each reply after its conversation, and the tokens
    /// they took.
    pub async fn rewards(
        &self,
        items: &[(&[Message], &str)],
        reporter: Option<&Reporter>,
    ) -> Result<(Vec<f64>, Usage)> {
        let (states, usage) = self.features.reply_states(items, reporter).await?;
        let rewards = states
            .iter()
            .map(|h| {
                self.head.check_width(h).map_err(UsageError)?;
                Ok(self.head.reward(h))
            })
            .collect::<Result<_>>()?;
        Ok((rewards, usage))
    }

    /// What records scored by this model depend on: the head's and the
    /// backbone's SHA-256.
    pub fn fingerprint(&self, dir: &Path) -> Result<serde_json::Value> {
        let mut f = json!({
            "dir": dir,
            "head_sha256": sha256(&dir.join(qstar_train::reward::HEAD_FILE))?,
            "base_model_sha256": self.config.base_model_sha256,
            "framing": self.config.framing,
        });
        self.features.add_adapter_to(&mut f);
        Ok(f)
    }

    /// r(chosen) − r(rejected) of each pair.
    pub async fn margins(
        &self,
        pairs: &[PreferencePair],
        reporter: Option<&Reporter>,
    ) -> Result<Vec<f64>> {
        let states = self.features.pair_states(pairs, reporter).await?;
        states
            .iter()
            .map(|(c, r)| {
                self.head.check_width(c).map_err(UsageError)?;
                Ok(self.head.reward(c) - self.head.reward(r))
            })
            .collect()
    }
}

/// The reward model as search's outcome verifier: each solution is the
/// assistant's reply to the user turn, framed as the model was trained.
#[async_trait::async_trait]
impl qstar_search::SolutionRewarder for RewardModel {
    async fn rewards(
        &self,
        user_turn: &str,
        replies: &[String],
    ) -> Result<(Vec<f64>, Usage), String> {
        let conversation = [Message::user(user_turn)];
        let items: Vec<(&[Message], &str)> = replies
            .iter()
            .map(|r| (&conversation[..], r.as_str()))
            .collect();
        RewardModel::rewards(self, &items, None)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    fn parameters(&self) -> Option<u64> {
        Some(self.features.parameters())
    }
}

pub async fn eval_rm(args: EvalRmArgs) -> Result<()> {
    let reporter = Reporter::new(args.json);
    let (mut pairs, skipped) = read(&args.pairs, args.limit, args.skip_invalid, &reporter)?;
    if let Some(n) = args.last {
        let keep = n.min(pairs.len());
        pairs = pairs.split_off(pairs.len() - keep);
    }
    let rm = RewardModel::open(
        &args.reward_model,
        args.base_model.as_deref(),
        args.threads,
        args.feature_cache.as_deref(),
    )
    .await?;
    let margins = rm.margins(&pairs, Some(&reporter)).await?;
    let m = qstar_eval::reward_metrics(&margins);
    let figures = json!({
        "pairs": m.pairs,
        "skipped_lines": skipped,
        "trained_on": rm.config.labels,
        "accuracy": m.accuracy,
        "ece": m.ece,
        "mean_margin": m.mean_margin,
    });
    let rows: Vec<Vec<String>> = m
        .reliability
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| {
            vec![
                format!("{:.2}–{:.2}", b.low, b.high),
                b.count.to_string(),
                format!("{:.3}", b.mean_confidence),
                format!("{:.3}", b.accuracy),
            ]
        })
        .collect();
    let text = Text::new()
        .metrics(&[
            ("pairs", m.pairs.to_string()),
            ("accuracy", format!("{:.4}", m.accuracy)),
            ("ECE", format!("{:.4}", m.ece)),
            ("mean margin", format!("{:.4}", m.mean_margin)),
        ])
        .table(
            &["σ(margin) bin", "pairs", "confidence", "accuracy"],
            &[Align::Left, Align::Right, Align::Right, Align::Right],
            &rows,
        );
    reporter.summary(&figures, &text)
}
