//! The actor: admission, scheduling of forward passes, and retirement of
//! finished sequences, with recovery from panics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;

use qstar_core::{
    choose_response, ChooseRequest, Completion, FinishReason, GenerateRequest, GenerateResponse,
    ModelError, ScoreRequest, ScoreResponse, ScoredOption, TokenLogprob, Usage,
};
use rayon::prelude::*;

use super::handle::*;
use super::job::*;
use super::seq::*;
use super::{Embedding, EngineOptions, EngineStats, TokenSink};
use crate::error::EngineError;
use crate::llama::{KvCache, RowOutput, SeqStep};
use crate::model::LoadedModel;
use crate::prefix_cache::{block_hashes, PrefixCache, BLOCK_TOKENS};
use crate::sampling::Rng;

pub(super) struct Actor {
    pub(super) model: Arc<LoadedModel>,
    pub(super) options: EngineOptions,
    pub(super) cache: PrefixCache,
    pub(super) jobs: HashMap<u64, PendingJob>,
    pub(super) waiting: VecDeque<Seq>,
    pub(super) active: Vec<Seq>,
    /// Blocks being computed by active sequences, not yet in the cache.
    pub(super) in_flight: HashSet<u64>,
    pub(super) next_job: u64,
    pub(super) stats: EngineStats,
}

impl Actor {
    pub(super) fn new(model: Arc<LoadedModel>, options: EngineOptions) -> Self {
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
    pub(super) fn run(&mut self, rx: mpsc::Receiver<Job>) {
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
            self.drop_abandoned();
            if let Err(reason) = guarded(|| self.admit()) {
                self.recover(&reason);
            }
            self.step();
        }
    }

    /// Fails a job: answers it with the error and drops its sequences.
    pub(super) fn fail_job(&mut self, job: u64, error: ModelError) {
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

    /// Drops the jobs whose callers stopped waiting (a client that
    /// disconnected), with their sequences, so no pass computes for nobody.
    pub(super) fn drop_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, p)| p.state.is_abandoned())
            .map(|(&id, _)| id)
            .collect();
        for job in gone {
            self.stats.jobs_cancelled += 1;
            self.fail_job(job, internal_error("the caller stopped waiting"));
        }
    }

    /// After a panic whose jobs are unknown: every job that lost a sequence
    /// (it has fewer queued or active than it waits for) fails.
    pub(super) fn recover(&mut self, reason: &str) {
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

    pub(super) fn new_seq(&self, job: u64, tag: usize, tokens: Vec<u32>) -> Seq {
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
            top_k: 0,
            top: Vec::new(),
            generation: None,
            hidden_state: false,
            reused: 0,
            claimed: Vec::new(),
            #[cfg(test)]
            fault: None,
        }
    }

    pub(super) fn check_length(&self, tokens: usize, room: usize) -> Result<(), ModelError> {
        let context = self.model.llama.config.context_length;
        if tokens + room > context {
            return Err(ModelError::InvalidRequest(
                EngineError::PromptTooLong { tokens, context }.to_string(),
            ));
        }
        Ok(())
    }

    pub(super) fn intake(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        match job {
            Job::Stats(tx) => {
                let mut s = self.stats;
                s.prefix_cache_bytes = self.cache.bytes();
                s.sequences_active = self.active.len();
                s.sequences_waiting = self.waiting.len();
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
            Job::Generate(req, reply) => self.start_generate(id, req, reply, None),
            Job::GenerateWithProgress(req, reply, sink) => {
                self.start_generate(id, req, reply, Some(sink))
            }
            Job::Score(req, top, reply) => {
                match self.guarded_intake(id, |a| a.intake_score(id, &req, top)) {
                    Ok(state) => {
                        let state = JobState::Score {
                            reply,
                            ids: state.0,
                            first_unconditioned: state.1,
                            logprobs: Vec::new(),
                            tops: Vec::new(),
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
                }
            }
            Job::Embed(text, reply) => match self.guarded_intake(id, |a| a.intake_embed(id, &text))
            {
                Ok(()) => {
                    self.jobs.insert(
                        id,
                        PendingJob {
                            state: JobState::Embed {
                                reply,
                                hidden: Vec::new(),
                            },
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
    pub(super) fn guarded_intake<T>(
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

    /// Takes in a generate job, whose tokens also go to `progress` as they
    /// are sampled when it is given.
    fn start_generate(
        &mut self,
        id: u64,
        req: GenerateRequest,
        reply: Reply<GenerateResponse>,
        progress: Option<TokenSink>,
    ) {
        let n = match self.guarded_intake(id, |a| a.intake_generate(id, req, progress)) {
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

    /// Queues one sequence per sample and returns how many.
    pub(super) fn intake_generate(
        &mut self,
        id: u64,
        req: GenerateRequest,
        progress: Option<TokenSink>,
    ) -> Result<usize, ModelError> {
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
                progress: progress.clone(),
            });
            self.waiting.push_back(seq);
        }
        Ok(req.n)
    }

    pub(super) fn intake_score(
        &mut self,
        id: u64,
        req: &ScoreRequest,
        top: usize,
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
        seq.top_k = top;
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

    /// Queues an embedding job: one sequence whose last row's final hidden
    /// state is the answer (its prefix is shared through the cache).
    pub(super) fn intake_embed(&mut self, id: u64, text: &str) -> Result<(), ModelError> {
        let tokens = self.model.tokenizer.encode(text, true);
        if tokens.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the text to embed has no tokens".into(),
            ));
        }
        self.check_length(tokens.len(), 0)?;
        let mut seq = self.new_seq(id, 0, tokens);
        seq.hidden_state = true;
        self.waiting.push_back(seq);
        Ok(())
    }

    /// Queues a choose job: one sequence for the prompt (its last row gives
    /// every option's first token) and one per option of several tokens.
    /// Returns the number of sequences and each option's token ids.
    pub(super) fn intake_choose(
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
    pub(super) fn admit(&mut self) {
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

    pub(super) fn step(&mut self) {
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
    pub(super) fn plan(&self) -> Vec<(usize, usize)> {
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
    pub(super) fn run_chunks(
        &mut self,
        chunks: &[(usize, usize)],
    ) -> Result<Vec<(u64, String)>, String> {
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
    pub(super) fn forward(&mut self, chunks: &[(usize, usize)]) -> Vec<Vec<f32>> {
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
                output: if s.hidden_state {
                    RowOutput::Hidden
                } else {
                    RowOutput::Logits
                },
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
    pub(super) fn record(&mut self, i: usize, outcome: Absorbed) {
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
    pub(super) fn retire(&mut self) {
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

    pub(super) fn retire_one(&mut self, seq: Seq) {
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
                None => SeqOutput::Logprobs(seq.results, seq.top),
            };
            match (&mut pending.state, output) {
                (JobState::Generate { completions, .. }, SeqOutput::Completion(c)) => {
                    if let Some(slot) = completions.get_mut(seq.tag) {
                        *slot = Some(c);
                    }
                }
                (JobState::Choose { scored, .. }, SeqOutput::Logprobs(rows, _)) => {
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
                (JobState::Score { logprobs, tops, .. }, SeqOutput::Logprobs(rows, top)) => {
                    *logprobs = rows.iter().map(|r| r[0]).collect();
                    *tops = top;
                }
                (JobState::Embed { hidden, .. }, SeqOutput::Logprobs(mut rows, _)) => {
                    *hidden = rows.pop().unwrap_or_default();
                }
                _ => {}
            }
            pending.remaining -= 1;
            self.finish_if_done(job);
        }
    }

    pub(super) fn finish_if_done(&mut self, job: u64) {
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
            JobState::Embed { reply, hidden } => {
                let answer = if hidden.is_empty() {
                    Err(internal_error("the hidden state was not computed"))
                } else {
                    Ok(Embedding {
                        hidden,
                        usage: pending.usage,
                    })
                };
                let _ = reply.send(answer);
            }
            JobState::Score {
                reply,
                ids,
                first_unconditioned,
                logprobs,
                tops,
            } => {
                let tokenizer = &self.model.tokenizer;
                let mut values = logprobs.into_iter();
                let mut alternatives = tops.into_iter();
                let mut total = 0f64;
                let tokens = ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| {
                        let (logprob, (rank, top)) = if i == 0 && first_unconditioned {
                            (None, (None, Vec::new()))
                        } else {
                            let alt = alternatives.next().map(|(r, t)| (Some(r), t));
                            (values.next(), alt.unwrap_or_default())
                        };
                        total += logprob.unwrap_or(0.0) as f64;
                        TokenLogprob {
                            id,
                            rank,
                            text: tokenizer.token_text(id),
                            logprob,
                            top,
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
