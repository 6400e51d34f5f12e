//! The handle callers hold: it sends jobs to the actor and implements
//! [`LanguageModel`].

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use async_trait::async_trait;
use qstar_core::{
    Capabilities, ChooseRequest, ChooseResponse, GenerateRequest, GenerateResponse, LanguageModel,
    Message, ModelError, ScoreRequest, ScoreResponse,
};
use tokio::sync::oneshot;

use super::actor::*;
use super::job::*;
use super::{Embedding, EngineOptions, EngineStats};
use crate::error::EngineError;
use crate::model::{LoadedModel, ModelInfo};

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

    /// A model with the PEFT LoRA adapter in `adapter` applied on top.
    pub fn load_with_adapter(
        path: &Path,
        adapter: Option<&Path>,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        let model = Arc::new(LoadedModel::load_with_adapter(path, adapter)?);
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

    /// The text of a sequence of tokens, as completions decode it.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.model.tokenizer.decode(ids)
    }

    /// One generation whose sampled tokens also reach `progress` as they
    /// come (`(sample index, token id)`), for streaming; the answer is the
    /// same as [`LanguageModel::generate`] gives.
    pub async fn generate_with_progress(
        &self,
        request: GenerateRequest,
        progress: super::TokenSink,
    ) -> Result<GenerateResponse, ModelError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::GenerateWithProgress(request, Reply::new(tx), progress))
            .map_err(|_| Self::stopped())?;
        rx.await.map_err(|_| Self::stopped())?
    }

    /// Scoring that also lists the `top` most likely tokens at every scored
    /// position (an echoed prompt's alternatives), most likely first.
    pub async fn score_with_top(
        &self,
        requests: Vec<ScoreRequest>,
        top: usize,
    ) -> Result<Vec<ScoreResponse>, ModelError> {
        self.submit(requests, |r, reply| Job::Score(r, top, reply))
            .await
    }

    /// Each text's last hidden state (see [`Embedding`]), computed together
    /// and sharing cached prefixes, like scoring.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, ModelError> {
        self.submit(texts, Job::Embed).await
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

    pub(super) fn stopped() -> ModelError {
        ModelError::Backend {
            backend: "embedded".into(),
            message: "the engine thread stopped".into(),
        }
    }

    pub(super) async fn submit<R, T>(
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
        self.submit(requests, |r, reply| Job::Score(r, 0, reply))
            .await
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
pub(super) fn render_chat(
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
