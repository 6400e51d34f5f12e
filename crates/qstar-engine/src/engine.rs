//! The engine actor: one thread owns the model and serves every caller.
//!
//! Callers send jobs over a channel and await their answers. Between forward
//! passes the actor takes in new jobs, so concurrent callers share batches
//! (continuous batching). Each job becomes one or more sequences; a step
//! stacks every sequence's pending tokens (a prompt chunk, or one token when
//! decoding) into one forward pass.
//!
//! Prefix reuse: when a sequence is admitted, the leading blocks of its tokens
//! that the prefix cache holds are copied in instead of computed. A sequence
//! whose next uncomputed block is being computed right now by another
//! sequence waits for it, so N samples of one prompt, the options of one
//! question, or prompts sharing an instruction compute the shared part once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use qstar_core::{
    choose_response, Capabilities, ChooseRequest, ChooseResponse, Completion, FinishReason,
    GenerateRequest, GenerateResponse, LanguageModel, Message, ModelError, SamplingParams,
    ScoreRequest, ScoreResponse, ScoredOption, TokenLogprob, TopLogprob, Usage,
};
use rayon::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::EngineError;
use crate::llama::{KvCache, SeqStep};
use crate::model::{LoadedModel, ModelInfo};
use crate::prefix_cache::{block_hashes, PrefixCache, BLOCK_TOKENS};
use crate::sampling::{log_softmax, sample, top_k_indices, Rng};

/// How the engine runs. Defaults suit a laptop.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineOptions {
    /// Worker threads for the matrix products (0: one per core).
    pub threads: usize,
    pub prefix_cache: bool,
    /// Memory bound of the prefix cache.
    pub prefix_cache_mb: usize,
    /// Tokens per forward pass; longer prompts are processed in chunks.
    pub max_batch_tokens: usize,
    /// Sequences decoded together.
    pub max_sequences: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            prefix_cache: true,
            prefix_cache_mb: 512,
            max_batch_tokens: 512,
            max_sequences: 64,
        }
    }
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EngineStats {
    pub prompt_tokens_computed: usize,
    pub prompt_tokens_reused: usize,
    pub tokens_generated: usize,
    pub forward_passes: usize,
    pub prefix_cache_bytes: usize,
}

/// Where a job's answer goes. Dropped without an answer (the actor lost the
/// job to a bug it recovered from), it still answers: with an error, so a
/// caller never waits forever.
struct Reply<T>(Option<oneshot::Sender<Result<T, ModelError>>>);

impl<T> Reply<T> {
    fn new(tx: oneshot::Sender<Result<T, ModelError>>) -> Self {
        Reply(Some(tx))
    }

    #[allow(clippy::result_large_err)]
    fn send(mut self, answer: Result<T, ModelError>) -> Result<(), Result<T, ModelError>> {
        match self.0.take() {
            Some(tx) => tx.send(answer),
            None => Ok(()),
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(internal_error(
                "the request was lost after an internal error",
            )));
        }
    }
}

/// An error of the engine itself (a bug), not of the request.
fn internal_error(reason: &str) -> ModelError {
    ModelError::Backend {
        backend: "embedded".into(),
        message: format!("internal error while serving this request: {reason}"),
    }
}

/// The message a panic carried.
fn panic_reason(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Runs `f`; a panic inside becomes an error carrying its message. The actor
/// state `f` touches must be left consistent by the caller's recovery.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_reason(p.as_ref()))
}

enum Job {
    Generate(GenerateRequest, Reply<GenerateResponse>),
    Score(ScoreRequest, Reply<ScoreResponse>),
    Choose(ChooseRequest, Reply<ChooseResponse>),
    Stats(oneshot::Sender<EngineStats>),
    SetPrefixCache(bool, oneshot::Sender<()>),
}

/// Handle to the engine; cheap to clone, all clones feed the same actor.
#[derive(Clone)]
pub struct Engine {
    model: Arc<LoadedModel>,
    tx: mpsc::Sender<Job>,
}

impl Engine {
    pub fn load(path: &Path, options: EngineOptions) -> Result<Self, EngineError> {
        let model = Arc::new(LoadedModel::load(path)?);
        Ok(Self::start(model, options))
    }

    pub fn start(model: Arc<LoadedModel>, options: EngineOptions) -> Self {
        let (tx, rx) = mpsc::channel();
        let actor_model = model.clone();
        std::thread::Builder::new()
            .name("qstar-engine".into())
            .spawn(move || {
                let threads = if options.threads == 0 {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    options.threads
                };
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                let mut actor = Actor::new(actor_model, options);
                match pool {
                    Ok(pool) => pool.install(|| actor.run(rx)),
                    Err(_) => actor.run(rx),
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the engine thread: {e}"));
        Engine { model, tx }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.model.info
    }

    pub fn tokenize(&self, text: &str, with_bos: bool) -> Vec<u32> {
        self.model.tokenizer.encode(text, with_bos)
    }

    pub fn token_text(&self, id: u32) -> String {
        self.model.tokenizer.token_text(id)
    }

    pub async fn stats(&self) -> EngineStats {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Stats(tx)).is_err() {
            return EngineStats::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Turns prefix reuse on or off, emptying the cache (for measurements).
    pub async fn set_prefix_cache(&self, on: bool) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::SetPrefixCache(on, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn stopped() -> ModelError {
        ModelError::Backend {
            backend: "embedded".into(),
            message: "the engine thread stopped".into(),
        }
    }

    async fn submit<R, T>(
        &self,
        requests: Vec<R>,
        wrap: impl Fn(R, Reply<T>) -> Job,
    ) -> Result<Vec<T>, ModelError> {
        let mut pending = Vec::with_capacity(requests.len());
        for r in requests {
            let (tx, rx) = oneshot::channel();
            self.tx
                .send(wrap(r, Reply::new(tx)))
                .map_err(|_| Self::stopped())?;
            pending.push(rx);
        }
        let mut out = Vec::with_capacity(pending.len());
        for rx in pending {
            out.push(rx.await.map_err(|_| Self::stopped())??);
        }
        Ok(out)
    }
}

#[async_trait]
impl LanguageModel for Engine {
    fn backend_name(&self) -> String {
        format!("embedded ({})", self.model.info.path)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: true,
            score: true,
            choose: true,
            max_top_logprobs: 20,
            chat_template: self.model.chat.is_some(),
        }
    }

    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError> {
        self.submit(requests, Job::Generate).await
    }

    async fn score(&self, requests: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError> {
        self.submit(requests, Job::Score).await
    }

    async fn choose(
        &self,
        requests: Vec<ChooseRequest>,
    ) -> Result<Vec<ChooseResponse>, ModelError> {
        self.submit(requests, Job::Choose).await
    }

    fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        render_chat(
            &self.model,
            &self.backend_name(),
            messages,
            add_generation_prompt,
        )
    }
}

/// Renders messages with the model's chat template, or says it has none.
fn render_chat(
    model: &LoadedModel,
    backend: &str,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<String, ModelError> {
    let chat = model.chat.as_ref().ok_or_else(|| ModelError::Unsupported {
        backend: backend.into(),
        capability: "chat templates (the GGUF has no tokenizer.chat_template)".into(),
    })?;
    chat.render(messages, add_generation_prompt)
        .map_err(|e| ModelError::InvalidRequest(e.to_string()))
}

/// What a finished sequence reports to its job.
enum SeqOutput {
    Completion(Completion),
    /// Log-probs of the wanted ids, per wanted row, in order.
    Logprobs(Vec<Vec<f32>>),
}

struct Generation {
    params: SamplingParams,
    rng: Rng,
    top_logprobs: Option<usize>,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    /// Length of the text cut before a stop string, when one appeared.
    stop_at: Option<usize>,
}

struct Seq {
    job: u64,
    /// Which part of the job this is (sample index, option index).
    tag: usize,
    tokens: Vec<u32>,
    /// Tokens that were given (the rest were generated).
    prompt_len: usize,
    hashes: Vec<u64>,
    kv: KvCache,
    /// Rows whose next-token log-probs are wanted, with the ids wanted.
    wants: Vec<(usize, Vec<u32>)>,
    results: Vec<Vec<f32>>,
    generation: Option<Generation>,
    reused: usize,
    /// Block hashes this sequence is computing that others may wait for.
    claimed: Vec<u64>,
    /// A deliberate failure the tests ask for.
    #[cfg(test)]
    fault: Option<Fault>,
}

/// Where a test makes a sequence panic, chosen by a marker in its prompt.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Intake,
    Forward,
    Absorb,
}

#[cfg(test)]
impl Fault {
    const MARKERS: [(&'static str, Fault); 3] = [
        ("\u{1}panic in intake\u{1}", Fault::Intake),
        ("\u{1}panic in the forward pass\u{1}", Fault::Forward),
        ("\u{1}panic in absorb\u{1}", Fault::Absorb),
    ];

    fn in_prompt(prompt: &str) -> Option<Fault> {
        Self::MARKERS
            .iter()
            .find(|(m, _)| prompt.contains(m))
            .map(|&(_, f)| f)
    }
}

impl Seq {
    /// First row whose logits this sequence needs.
    fn first_logit_row(&self) -> usize {
        match &self.generation {
            Some(_) => self.tokens.len() - 1,
            None => self.wants.first().map_or(self.tokens.len() - 1, |w| w.0),
        }
    }

    fn done(&self) -> bool {
        match &self.generation {
            Some(g) => g.finish.is_some(),
            None => self.kv.len >= self.tokens.len(),
        }
    }
}

enum JobState {
    Generate {
        reply: Reply<GenerateResponse>,
        completions: Vec<Option<Completion>>,
    },
    Score {
        reply: Reply<ScoreResponse>,
        ids: Vec<u32>,
        /// Whether the first continuation token has nothing before it.
        first_unconditioned: bool,
        /// Log-prob of each conditioned token, filled when the sequence ends.
        logprobs: Vec<f32>,
    },
    Choose {
        reply: Reply<ChooseResponse>,
        options: Vec<String>,
        /// Each option's tokens and their log-probs, filled in as the
        /// prompt's sequence (first tokens) and the options' sequences finish.
        scored: Vec<ScoredOption<u32>>,
    },
}

impl JobState {
    /// Answers the job with an error instead of its result.
    fn fail(self, error: ModelError) {
        let _ = match self {
            JobState::Generate { reply, .. } => reply.send(Err(error)).map_err(drop),
            JobState::Score { reply, .. } => reply.send(Err(error)).map_err(drop),
            JobState::Choose { reply, .. } => reply.send(Err(error)).map_err(drop),
        };
    }
}

struct PendingJob {
    state: JobState,
    remaining: usize,
    usage: Usage,
}

/// Tag of a choose job's prompt-only sequence (options use their index).
const PROMPT_TAG: usize = usize::MAX;

struct Actor {
    model: Arc<LoadedModel>,
    options: EngineOptions,
    cache: PrefixCache,
    jobs: HashMap<u64, PendingJob>,
    waiting: VecDeque<Seq>,
    active: Vec<Seq>,
    /// Blocks being computed by active sequences, not yet in the cache.
    in_flight: HashSet<u64>,
    next_job: u64,
    stats: EngineStats,
}

impl Actor {
    fn new(model: Arc<LoadedModel>, options: EngineOptions) -> Self {
        let kv_dim = model.llama.config.kv_dim();
        Actor {
            cache: PrefixCache::new(kv_dim, options.prefix_cache_mb << 20),
            model,
            options,
            jobs: HashMap::new(),
            waiting: VecDeque::new(),
            active: Vec::new(),
            in_flight: HashSet::new(),
            next_job: 0,
            stats: EngineStats::default(),
        }
    }

    /// Serves jobs until every handle is gone. A panic while serving fails
    /// the jobs it concerns (with the panic's message) and nothing else.
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(job) => self.intake(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.intake(job);
            }
            if let Err(reason) = guarded(|| self.admit()) {
                self.recover(&reason);
            }
            self.step();
        }
    }

    /// Fails a job: answers it with the error and drops its sequences.
    fn fail_job(&mut self, job: u64, error: ModelError) {
        if let Some(pending) = self.jobs.remove(&job) {
            pending.state.fail(error);
        }
        let mut released = Vec::new();
        self.waiting.retain(|s| s.job != job);
        self.active.retain(|s| {
            let keep = s.job != job;
            if !keep {
                released.extend(s.claimed.iter().copied());
            }
            keep
        });
        for h in released {
            self.in_flight.remove(&h);
        }
    }

    /// After a panic whose jobs are unknown: every job that lost a sequence
    /// (it has fewer queued or active than it waits for) fails.
    fn recover(&mut self, reason: &str) {
        tracing::error!("the engine recovered from an internal error: {reason}");
        let mut present: HashMap<u64, usize> = HashMap::new();
        for s in self.waiting.iter().chain(&self.active) {
            *present.entry(s.job).or_default() += 1;
        }
        let lost: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(id, p)| present.get(id).copied().unwrap_or(0) < p.remaining)
            .map(|(id, _)| *id)
            .collect();
        for job in lost {
            self.fail_job(job, internal_error(reason));
        }
        // Sequences of jobs that no longer exist are dropped too.
        let jobs = &self.jobs;
        self.waiting.retain(|s| jobs.contains_key(&s.job));
        let mut released = Vec::new();
        self.active.retain(|s| {
            let keep = jobs.contains_key(&s.job);
            if !keep {
                released.extend(s.claimed.iter().copied());
            }
            keep
        });
        for h in released {
            self.in_flight.remove(&h);
        }
    }

    fn new_seq(&self, job: u64, tag: usize, tokens: Vec<u32>) -> Seq {
        let hashes = if self.options.prefix_cache {
            block_hashes(&tokens)
        } else {
            Vec::new()
        };
        Seq {
            job,
            tag,
            prompt_len: tokens.len(),
            tokens,
            hashes,
            kv: KvCache::new(self.model.llama.config.n_layer),
            wants: Vec::new(),
            results: Vec::new(),
            generation: None,
            reused: 0,
            claimed: Vec::new(),
            #[cfg(test)]
            fault: None,
        }
    }

    fn check_length(&self, tokens: usize, room: usize) -> Result<(), ModelError> {
        let context = self.model.llama.config.context_length;
        if tokens + room > context {
            return Err(ModelError::InvalidRequest(
                EngineError::PromptTooLong { tokens, context }.to_string(),
            ));
        }
        Ok(())
    }

    fn intake(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        match job {
            Job::Stats(tx) => {
                let mut s = self.stats;
                s.prefix_cache_bytes = self.cache.bytes();
                let _ = tx.send(s);
            }
            Job::SetPrefixCache(on, tx) => {
                self.options.prefix_cache = on;
                self.cache = PrefixCache::new(
                    self.model.llama.config.kv_dim(),
                    self.options.prefix_cache_mb << 20,
                );
                let _ = tx.send(());
            }
            Job::Generate(req, reply) => {
                let n = match self.guarded_intake(id, |a| a.intake_generate(id, req)) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                self.jobs.insert(
                    id,
                    PendingJob {
                        state: JobState::Generate {
                            reply,
                            completions: vec![None; n],
                        },
                        remaining: n,
                        usage: Usage::default(),
                    },
                );
                if let Err(reason) = guarded(|| self.finish_if_done(id)) {
                    self.recover(&reason);
                }
            }
            Job::Score(req, reply) => match self.guarded_intake(id, |a| a.intake_score(id, &req)) {
                Ok(state) => {
                    let state = JobState::Score {
                        reply,
                        ids: state.0,
                        first_unconditioned: state.1,
                        logprobs: Vec::new(),
                    };
                    self.jobs.insert(
                        id,
                        PendingJob {
                            state,
                            remaining: 1,
                            usage: Usage::default(),
                        },
                    );
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Job::Choose(req, reply) => match self.guarded_intake(id, |a| a.intake_choose(id, &req))
            {
                Ok((seqs, option_ids)) => {
                    let scored = option_ids
                        .into_iter()
                        .map(|tokens| ScoredOption {
                            logprobs: vec![0.0; tokens.len()],
                            tokens,
                        })
                        .collect();
                    self.jobs.insert(
                        id,
                        PendingJob {
                            state: JobState::Choose {
                                reply,
                                options: req.options,
                                scored,
                            },
                            remaining: seqs,
                            usage: Usage::default(),
                        },
                    );
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    /// Runs the intake of job `id`; if it panics, the sequences it queued are
    /// dropped and the panic becomes the job's error.
    fn guarded_intake<T>(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut Self) -> Result<T, ModelError>,
    ) -> Result<T, ModelError> {
        match guarded(|| f(self)) {
            Ok(result) => result,
            Err(reason) => {
                tracing::error!("the engine recovered from an internal error: {reason}");
                self.waiting.retain(|s| s.job != id);
                Err(internal_error(&reason))
            }
        }
    }

    /// Queues one sequence per sample and returns how many.
    fn intake_generate(&mut self, id: u64, req: GenerateRequest) -> Result<usize, ModelError> {
        let prompt = match &req.messages {
            Some(messages) => render_chat(&self.model, "embedded", messages, true)?,
            None => req.prompt.clone(),
        };
        let tokens = self.model.tokenizer.encode(&prompt, true);
        if tokens.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the prompt is empty and the model adds no BOS token, so there is nothing to continue".into(),
            ));
        }
        self.check_length(tokens.len(), 1)?;
        #[cfg(test)]
        let fault = Fault::in_prompt(&prompt);
        #[cfg(test)]
        if fault == Some(Fault::Intake) {
            panic!("injected fault in intake");
        }
        // With nothing to generate, the samples are finished before they
        // start and never touch the model.
        let nothing = req.params.max_tokens == 0;
        for i in 0..req.n {
            let mut seq = self.new_seq(id, i, tokens.clone());
            #[cfg(test)]
            {
                seq.fault = fault;
            }
            if nothing {
                seq.kv.len = tokens.len();
            }
            seq.generation = Some(Generation {
                params: req.params.clone(),
                rng: Rng::new(req.params.seed.wrapping_add(i as u64)),
                top_logprobs: req.top_logprobs.map(|k| k.min(20)),
                generated: Vec::new(),
                logprobs: Vec::new(),
                finish: nothing.then_some(FinishReason::Length),
                stop_at: None,
            });
            self.waiting.push_back(seq);
        }
        Ok(req.n)
    }

    fn intake_score(
        &mut self,
        id: u64,
        req: &ScoreRequest,
    ) -> Result<(Vec<u32>, bool), ModelError> {
        let tok = &self.model.tokenizer;
        let prompt = tok.encode(&req.prompt, true);
        // BOS goes first even when the prompt is empty.
        let continuation = if prompt.is_empty() {
            tok.encode(&req.continuation, true)
        } else {
            tok.encode(&req.continuation, false)
        };
        let (prompt, continuation) = match (prompt.is_empty(), continuation.first()) {
            (true, Some(&first)) if tok.add_bos && Some(first) == tok.bos => {
                (vec![first], continuation[1..].to_vec())
            }
            _ => (prompt, continuation),
        };
        if continuation.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the continuation is empty".into(),
            ));
        }
        let mut tokens = prompt.clone();
        tokens.extend_from_slice(&continuation);
        self.check_length(tokens.len(), 0)?;
        let mut seq = self.new_seq(id, 0, tokens);
        let p = prompt.len();
        for (i, &t) in continuation.iter().enumerate() {
            if p + i > 0 {
                seq.wants.push((p + i - 1, vec![t]));
            }
        }
        if seq.wants.is_empty() {
            // A single unconditioned token: nothing to compute, but the job
            // still goes through the queue to keep one code path.
            seq.kv.len = seq.tokens.len();
        }
        self.waiting.push_back(seq);
        Ok((continuation, p == 0))
    }

    /// Queues a choose job: one sequence for the prompt (its last row gives
    /// every option's first token) and one per option of several tokens.
    /// Returns the number of sequences and each option's token ids.
    fn intake_choose(
        &mut self,
        id: u64,
        req: &ChooseRequest,
    ) -> Result<(usize, Vec<Vec<u32>>), ModelError> {
        req.validate()?;
        let tok = &self.model.tokenizer;
        let prompt = tok.encode(&req.prompt, true);
        if prompt.is_empty() {
            return Err(ModelError::InvalidRequest(
                "choose needs a prompt: the model adds no BOS token to condition the options on"
                    .into(),
            ));
        }
        let option_ids: Vec<Vec<u32>> = req.options.iter().map(|o| tok.encode(o, false)).collect();
        if let Some(i) = option_ids.iter().position(|o| o.is_empty()) {
            return Err(ModelError::InvalidRequest(format!(
                "option {} ({:?}) has no tokens in this model's vocabulary",
                i + 1,
                req.options[i]
            )));
        }
        let longest = option_ids.iter().map(|o| o.len()).max().unwrap_or(0);
        self.check_length(prompt.len() + longest, 0)?;
        let p = prompt.len();
        let mut first = self.new_seq(id, PROMPT_TAG, prompt.clone());
        first
            .wants
            .push((p - 1, option_ids.iter().map(|o| o[0]).collect()));
        self.waiting.push_back(first);
        let mut count = 1;
        for (j, o) in option_ids.iter().enumerate() {
            if o.len() < 2 {
                continue;
            }
            let mut tokens = prompt.clone();
            tokens.extend_from_slice(&o[..o.len() - 1]);
            let mut seq = self.new_seq(id, j, tokens);
            for i in 1..o.len() {
                seq.wants.push((p + i - 1, vec![o[i]]));
            }
            self.waiting.push_back(seq);
            count += 1;
        }
        Ok((count, option_ids))
    }

    /// Moves waiting sequences into the active set, reusing cached prefixes.
    fn admit(&mut self) {
        let mut deferred = VecDeque::new();
        // Prompt tokens already waiting in admitted sequences: admitting more
        // than a step can take would only hold their KV memory early.
        let mut pending_prefill: usize = self
            .active
            .iter()
            .map(|s| s.tokens.len() - s.kv.len)
            .filter(|&n| n > 1)
            .sum();
        while self.active.len() < self.options.max_sequences
            && pending_prefill < self.options.max_batch_tokens
        {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.done() {
                self.active.push(seq);
                continue;
            }
            if self.options.prefix_cache && seq.kv.len == 0 {
                let cached = self.cache.cached_blocks(&seq.tokens, &seq.hashes);
                if let Some(next) = seq.hashes.get(cached) {
                    if self.in_flight.contains(next) {
                        // Someone is computing this block: wait and reuse it.
                        deferred.push_back(seq);
                        continue;
                    }
                }
                let reuse = (cached * BLOCK_TOKENS).min(seq.first_logit_row());
                if reuse > 0 {
                    self.cache.restore(&seq.hashes, reuse, &mut seq.kv);
                    seq.reused = reuse;
                }
                seq.claimed = seq.hashes[cached..].to_vec();
                self.in_flight.extend(seq.claimed.iter().copied());
            }
            pending_prefill += seq.tokens.len() - seq.kv.len;
            self.active.push(seq);
        }
        // Deferred sequences keep their place at the front of the queue.
        while let Some(seq) = deferred.pop_back() {
            self.waiting.push_front(seq);
        }
    }

    fn step(&mut self) {
        let chunks = self.plan();
        if !chunks.is_empty() {
            let mut failed = Vec::new();
            match self.run_chunks(&chunks) {
                Ok(f) => failed.extend(f),
                // One of the batched sequences broke the pass: run each alone
                // so that only the culprit's job fails.
                Err(_) if chunks.len() > 1 => {
                    for &chunk in &chunks {
                        match self.run_chunks(&[chunk]) {
                            Ok(f) => failed.extend(f),
                            Err(reason) => failed.push((self.active[chunk.0].job, reason)),
                        }
                    }
                }
                Err(reason) => failed.push((self.active[chunks[0].0].job, reason)),
            }
            for (job, reason) in failed {
                tracing::error!("the engine recovered from an internal error: {reason}");
                self.fail_job(job, internal_error(&reason));
            }
        }
        self.retire();
    }

    /// Which active sequences go into the next pass, and how many tokens
    /// each: decoding sequences first (one token each), then prompt chunks.
    fn plan(&self) -> Vec<(usize, usize)> {
        let mut order: Vec<usize> = (0..self.active.len())
            .filter(|&i| !self.active[i].done())
            .collect();
        order.sort_by_key(|&i| self.active[i].tokens.len() - self.active[i].kv.len > 1);
        let mut budget = self.options.max_batch_tokens.max(1);
        let mut chunks: Vec<(usize, usize)> = Vec::new(); // (seq index, tokens)
        for i in order {
            if budget == 0 {
                break;
            }
            let s = &self.active[i];
            let take = (s.tokens.len() - s.kv.len).min(budget);
            chunks.push((i, take));
            budget -= take;
        }
        chunks
    }

    /// One forward pass over `chunks`, then each
    /// sequence takes in its logits. A panic in the pass undoes what it did
    /// to the KV caches and is returned as the error; a panic while one
    /// sequence takes in its logits fails only that sequence's job, listed in
    /// the result.
    fn run_chunks(&mut self, chunks: &[(usize, usize)]) -> Result<Vec<(u64, String)>, String> {
        // The pass stacks sequences in the order of the active set.
        let mut chunks = chunks.to_vec();
        chunks.sort_unstable_by_key(|&(i, _)| i);
        let chunks = &chunks[..];
        let before: Vec<usize> = chunks.iter().map(|&(i, _)| self.active[i].kv.len).collect();
        let pass = guarded(|| self.forward(chunks));
        let logits = match pass {
            Ok(logits) => logits,
            Err(reason) => {
                let kv_dim = self.model.llama.config.kv_dim();
                for (&(i, _), &len) in chunks.iter().zip(&before) {
                    let kv = &mut self.active[i].kv;
                    for layer in kv.k.iter_mut().chain(kv.v.iter_mut()) {
                        layer.truncate(len * kv_dim);
                    }
                    kv.len = len;
                }
                return Err(reason);
            }
        };
        self.stats.forward_passes += 1;
        let mut per_seq: Vec<Option<(usize, Vec<f32>)>> = vec![None; self.active.len()];
        for ((&(i, _), &start), rows) in chunks.iter().zip(&before).zip(logits) {
            per_seq[i] = Some((start, rows));
        }
        // Sampling and log-softmax touch one sequence each: in parallel.
        let model = &self.model;
        let outcomes: Vec<Option<Result<Absorbed, String>>> = self
            .active
            .par_iter_mut()
            .zip(per_seq.into_par_iter())
            .map(|(seq, work)| {
                work.map(|(start, rows)| guarded(|| absorb(model, seq, start, rows)))
            })
            .collect();
        let mut failed = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let result = match outcome {
                None => continue,
                Some(Ok(outcome)) => guarded(|| self.record(i, outcome)),
                Some(Err(reason)) => Err(reason),
            };
            if let Err(reason) = result {
                failed.push((self.active[i].job, reason));
            }
        }
        Ok(failed)
    }

    /// The forward pass itself: the logits of every chunk's wanted rows.
    fn forward(&mut self, chunks: &[(usize, usize)]) -> Vec<Vec<f32>> {
        let mut plan: HashMap<usize, usize> = chunks.iter().copied().collect();
        let mut steps: Vec<SeqStep<'_>> = Vec::with_capacity(chunks.len());
        for (i, s) in self.active.iter_mut().enumerate() {
            let Some(take) = plan.remove(&i) else {
                continue;
            };
            let start = s.kv.len;
            let first_row = s.first_logit_row();
            let logits_from = first_row.saturating_sub(start);
            steps.push(SeqStep {
                kv: &mut s.kv,
                tokens: &s.tokens[start..start + take],
                logits_from,
            });
        }
        let logits = self.model.llama.forward(&mut steps);
        drop(steps);
        // A sequence that asked for it fails after the pass has written to
        // the KV caches, so the undo is exercised too.
        #[cfg(test)]
        if chunks
            .iter()
            .any(|&(i, _)| self.active[i].fault == Some(Fault::Forward))
        {
            panic!("injected fault in the forward pass");
        }
        logits
    }

    /// Counts what a forward pass did for sequence `i`, and shares its
    /// prompt's blocks once the prompt is complete.
    fn record(&mut self, i: usize, outcome: Absorbed) {
        self.stats.prompt_tokens_computed += outcome.prompt_computed;
        self.stats.tokens_generated += outcome.generated;
        let seq = &mut self.active[i];
        if outcome.prompt_completed && self.options.prefix_cache {
            self.cache
                .insert(&seq.tokens[..seq.prompt_len], &seq.hashes, &seq.kv);
            for h in seq.claimed.drain(..) {
                self.in_flight.remove(&h);
            }
        }
    }

    /// Hands finished sequences to their jobs. A panic while handing one
    /// over fails that sequence's job alone.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if !self.active[i].done() {
                i += 1;
                continue;
            }
            let seq = self.active.swap_remove(i);
            for h in &seq.claimed {
                self.in_flight.remove(h);
            }
            let job = seq.job;
            if let Err(reason) = guarded(|| self.retire_one(seq)) {
                tracing::error!("the engine recovered from an internal error: {reason}");
                self.fail_job(job, internal_error(&reason));
            }
        }
    }

    fn retire_one(&mut self, seq: Seq) {
        {
            let job = seq.job;
            let tokenizer = &self.model.tokenizer;
            let Some(pending) = self.jobs.get_mut(&job) else {
                return;
            };
            pending.usage.prompt_tokens += seq.prompt_len;
            pending.usage.prompt_tokens_reused += seq.reused;
            self.stats.prompt_tokens_reused += seq.reused;
            let output = match seq.generation {
                Some(g) => {
                    pending.usage.completion_tokens += g.generated.len();
                    let mut text = tokenizer.decode(&g.generated);
                    if let Some(at) = g.stop_at {
                        text.truncate(at);
                    }
                    SeqOutput::Completion(Completion {
                        text,
                        token_ids: g.generated,
                        finish_reason: g.finish.unwrap_or(FinishReason::Length),
                        logprobs: g.top_logprobs.map(|_| g.logprobs),
                    })
                }
                None => SeqOutput::Logprobs(seq.results),
            };
            match (&mut pending.state, output) {
                (JobState::Generate { completions, .. }, SeqOutput::Completion(c)) => {
                    if let Some(slot) = completions.get_mut(seq.tag) {
                        *slot = Some(c);
                    }
                }
                (JobState::Choose { scored, .. }, SeqOutput::Logprobs(rows)) => {
                    if seq.tag == PROMPT_TAG {
                        if let Some(first) = rows.first() {
                            for (o, lp) in scored.iter_mut().zip(first) {
                                o.logprobs[0] = *lp as f64;
                            }
                        }
                    } else if let Some(o) = scored.get_mut(seq.tag) {
                        for (slot, r) in o.logprobs.iter_mut().skip(1).zip(&rows) {
                            *slot = r[0] as f64;
                        }
                    }
                }
                (JobState::Score { logprobs, .. }, SeqOutput::Logprobs(rows)) => {
                    *logprobs = rows.iter().map(|r| r[0]).collect();
                }
                _ => {}
            }
            pending.remaining -= 1;
            self.finish_if_done(job);
        }
    }

    fn finish_if_done(&mut self, job: u64) {
        if self.jobs.get(&job).is_none_or(|p| p.remaining > 0) {
            return;
        }
        let Some(pending) = self.jobs.remove(&job) else {
            return;
        };
        match pending.state {
            JobState::Generate { reply, completions } => {
                let completions = completions.into_iter().flatten().collect();
                let _ = reply.send(Ok(GenerateResponse {
                    completions,
                    usage: pending.usage,
                }));
            }
            JobState::Choose {
                reply,
                options,
                scored,
                ..
            } => {
                let _ = reply.send(Ok(choose_response(&options, &scored, pending.usage)));
            }
            JobState::Score {
                reply,
                ids,
                first_unconditioned,
                logprobs,
            } => {
                let tokenizer = &self.model.tokenizer;
                let mut values = logprobs.into_iter();
                let mut total = 0f64;
                let tokens = ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| {
                        let logprob = if i == 0 && first_unconditioned {
                            None
                        } else {
                            values.next()
                        };
                        total += logprob.unwrap_or(0.0) as f64;
                        TokenLogprob {
                            id,
                            text: tokenizer.token_text(id),
                            logprob,
                            top: Vec::new(),
                        }
                    })
                    .collect();
                let _ = reply.send(Ok(ScoreResponse {
                    tokens,
                    total_logprob: total,
                    usage: pending.usage,
                }));
            }
        }
    }
}

/// What a forward pass did for one sequence.
struct Absorbed {
    prompt_computed: usize,
    generated: usize,
    prompt_completed: bool,
}

/// Uses the logits a sequence got from a forward pass: wanted log-probs for
/// scoring, or the next token for generation.
fn absorb(model: &LoadedModel, seq: &mut Seq, start: usize, rows: Vec<f32>) -> Absorbed {
    #[cfg(test)]
    if seq.fault == Some(Fault::Absorb) {
        panic!("injected fault while taking in logits");
    }
    let n_vocab = model.llama.config.n_vocab;
    let tokenizer = &model.tokenizer;
    let context = model.llama.config.context_length;
    let end = seq.kv.len;
    let n_rows = rows.len() / n_vocab;
    let first_row = end - n_rows;
    let was_prefill = start < seq.prompt_len;
    let mut outcome = Absorbed {
        prompt_computed: if was_prefill {
            end.min(seq.prompt_len) - start
        } else {
            0
        },
        generated: 0,
        prompt_completed: was_prefill && end >= seq.prompt_len,
    };
    if seq.generation.is_none() {
        for (r, row) in rows.chunks_exact(n_vocab).enumerate() {
            let abs = first_row + r;
            if !seq.wants.iter().any(|w| w.0 == abs) {
                continue;
            }
            let lsm = log_softmax(row);
            for (_, ids) in seq.wants.iter().filter(|w| w.0 == abs) {
                seq.results
                    .push(ids.iter().map(|&id| lsm[id as usize]).collect());
            }
        }
        return outcome;
    }
    if end != seq.tokens.len() || n_rows == 0 {
        return outcome;
    }
    let row = &rows[(n_rows - 1) * n_vocab..];
    let Some(g) = seq.generation.as_mut() else {
        return outcome;
    };
    let token = sample(row, &g.params, &mut g.rng);
    if tokenizer.is_end_of_generation(token) && !g.params.ignore_eos {
        g.finish = Some(FinishReason::Eos);
        return outcome;
    }
    if let Some(k) = g.top_logprobs {
        let lsm = log_softmax(row);
        let top = top_k_indices(&lsm, k)
            .into_iter()
            .map(|id| TopLogprob {
                id: id as u32,
                text: tokenizer.token_text(id as u32),
                logprob: lsm[id],
            })
            .collect();
        g.logprobs.push(TokenLogprob {
            id: token,
            text: tokenizer.token_text(token),
            logprob: Some(lsm[token as usize]),
            top,
        });
    }
    g.generated.push(token);
    seq.tokens.push(token);
    outcome.generated = 1;
    if !g.params.stop.is_empty() {
        let text = tokenizer.decode(&g.generated);
        if let Some(at) = g
            .params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            g.stop_at = Some(at);
            g.finish = Some(FinishReason::Stop);
        }
    }
    if g.finish.is_none()
        && (g.generated.len() >= g.params.max_tokens || seq.tokens.len() >= context)
    {
        g.finish = Some(FinishReason::Length);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Arc<LoadedModel> {
        use std::sync::OnceLock;
        static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
        MODEL
            .get_or_init(|| {
                let path = crate::fetch::default_model_path();
                Arc::new(LoadedModel::load(&path).expect("the default model (`qstar model fetch`)"))
            })
            .clone()
    }

    fn greedy(prompt: &str) -> GenerateRequest {
        GenerateRequest::new(
            prompt,
            SamplingParams {
                max_tokens: 6,
                ignore_eos: true,
                ..Default::default()
            },
        )
    }

    type Answer = oneshot::Receiver<Result<GenerateResponse, ModelError>>;

    /// Hands the requests to an actor driven on this thread and serves them
    /// to the end (bounded, so a lost job fails the test instead of hanging).
    fn serve(actor: &mut Actor, requests: Vec<GenerateRequest>) -> Vec<Answer> {
        let answers = requests
            .into_iter()
            .map(|r| {
                let (tx, rx) = oneshot::channel();
                actor.intake(Job::Generate(r, Reply::new(tx)));
                rx
            })
            .collect();
        for _ in 0..10_000 {
            if actor.jobs.is_empty() && actor.waiting.is_empty() && actor.active.is_empty() {
                return answers;
            }
            actor.admit();
            actor.step();
        }
        panic!("the actor did not finish its jobs");
    }

    fn tokens_alone(prompt: &str) -> Vec<u32> {
        let mut actor = Actor::new(model(), EngineOptions::default());
        let mut answers = serve(&mut actor, vec![greedy(prompt)]);
        answers[0]
            .try_recv()
            .expect("answered")
            .expect("generated")
            .completions[0]
            .token_ids
            .clone()
    }

    /// A request that panics inside the engine, batched between two good
    /// ones: it alone fails, with the panic's message; the good ones get the
    /// answers they get when served alone; and the actor serves more.
    #[test]
    fn a_panicking_request_fails_alone() {
        let good = ["The capital of France is", "1, 2, 3, 4,"];
        let expected: Vec<Vec<u32>> = good.iter().map(|p| tokens_alone(p)).collect();
        for (marker, fault) in Fault::MARKERS {
            let mut actor = Actor::new(model(), EngineOptions::default());
            let bad = format!("Tell me a story.{marker}");
            let mut answers = serve(
                &mut actor,
                vec![greedy(good[0]), greedy(&bad), greedy(good[1])],
            );
            let err = answers[1]
                .try_recv()
                .expect("answered")
                .expect_err("the bad request fails");
            assert!(
                !err.is_input_error() && err.to_string().contains("injected fault"),
                "{fault:?}: {err}"
            );
            for (k, a) in [0, 2].into_iter().enumerate() {
                let got = answers[a]
                    .try_recv()
                    .expect("answered")
                    .unwrap_or_else(|e| panic!("{fault:?}: good request failed: {e}"));
                assert_eq!(got.completions[0].token_ids, expected[k], "{fault:?}");
            }
            assert!(actor.in_flight.is_empty(), "{fault:?}: claims left behind");
            let mut later = serve(&mut actor, vec![greedy(good[0])]);
            let later = later[0]
                .try_recv()
                .expect("answered")
                .expect("later request");
            assert_eq!(later.completions[0].token_ids, expected[0], "{fault:?}");
        }
    }

    /// The same through the engine's own thread: after a panic the thread is
    /// alive and answers.
    #[test]
    fn the_engine_thread_survives_a_panic() {
        let engine = Engine::start(model(), EngineOptions::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for (marker, _) in Fault::MARKERS {
            let bad = rt.block_on(engine.generate(vec![greedy(&format!("Hi{marker}"))]));
            assert!(bad.is_err_and(|e| e.to_string().contains("injected fault")));
            let good = rt.block_on(engine.generate(vec![greedy("Hello")]));
            assert_eq!(good.expect("served")[0].completions[0].token_ids.len(), 6);
        }
    }

    #[test]
    fn a_dropped_reply_still_answers() {
        let (tx, mut rx) = oneshot::channel::<Result<(), ModelError>>();
        drop(Reply::new(tx));
        let err = rx.try_recv().expect("answered").expect_err("an error");
        assert!(err.to_string().contains("internal error"), "{err}");
    }
}
