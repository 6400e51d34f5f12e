use async_trait::async_trait;
use serde::Serialize;

use crate::error::ModelError;
use crate::types::{
    ChooseRequest, ChooseResponse, GenerateRequest, GenerateResponse, Message, ScoreRequest,
    ScoreResponse,
};

/// What a backend can do. Pipelines check this up front so that a missing
/// capability is one clear error at start-up rather than a failure mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub generate: bool,
    /// Teacher-forced log-probabilities of a given continuation.
    pub score: bool,
    /// Exact distribution over candidate continuations (needs `score`, or
    /// single-token options and top log-probs).
    pub choose: bool,
    /// How many alternatives per generated token the backend can report.
    pub max_top_logprobs: usize,
    /// The backend knows the model's chat template.
    pub chat_template: bool,
}

/// A language model as qstar's pipelines see it: batched and asynchronous.
///
/// Each method takes a batch of independent requests and answers them in the
/// same order. Backends are free to interleave and batch them with other
/// callers' requests; results never depend on that (sampling is seeded per
/// request).
#[async_trait]
pub trait LanguageModel: Send + Sync {
    /// A short human-readable name, used in error messages and reports.
    fn backend_name(&self) -> String;

    fn capabilities(&self) -> Capabilities;

    /// Samples `n` completions per request.
    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError>;

    /// Log-probability of each continuation token given the prompt and the
    /// continuation tokens before it.
    async fn score(&self, requests: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError>;

    /// Normalized distribution over a closed set of continuations.
    async fn choose(&self, requests: Vec<ChooseRequest>)
        -> Result<Vec<ChooseResponse>, ModelError>;

    /// Renders messages with the model's own chat template.
    fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError>;
}
