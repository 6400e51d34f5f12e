//! The [`LanguageModel`] interface over OpenAI-compatible servers (vLLM,
//! SGLang, llama.cpp's llama-server, …): `/v1/completions` and
//! `/v1/chat/completions` with log-probs, spread over several base URLs,
//! with retries, backoff and a concurrency limit.
//!
//! What a server cannot do is reported, never emulated: scoring needs prompt
//! log-probs (`echo` with `logprobs`); without them `choose` still works when
//! every option is a single token among the first position's top log-probs.
//!
//! Every call reports the usage the servers sent (summed over the requests
//! it made); the parameter count for FLOP estimates comes from the model
//! card at `/v1/models` where the server puts it there
//! ([`OpenAiBackend::model_parameters`]).

mod finish;
mod wire;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use qstar_core::{
    choose_response, Capabilities, ChooseRequest, ChooseResponse, Completion, FinishReason,
    GenerateRequest, GenerateResponse, LanguageModel, Message, ModelError, ScoreRequest,
    ScoreResponse, ScoredOption, TokenLogprob, Usage,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::wire::{byte_offsets, parse_logprobs, WireToken};

/// How to reach the servers.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub base_urls: Vec<String>,
    /// Model name sent in every request.
    pub model: String,
    pub api_key: Option<String>,
    /// Requests in flight at once, over all servers.
    pub concurrency: usize,
    /// Retries after a 429, a 5xx, a timeout or a refused connection.
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub timeout: Duration,
    /// Top log-probs asked for when choosing among single-token options.
    pub choose_top_logprobs: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_urls: Vec::new(),
            model: "default".into(),
            api_key: None,
            concurrency: 8,
            max_retries: 4,
            initial_backoff: Duration::from_millis(250),
            timeout: Duration::from_secs(300),
            choose_top_logprobs: 20,
        }
    }
}

pub struct OpenAiBackend {
    client: reqwest::Client,
    config: OpenAiConfig,
    next_url: AtomicUsize,
    permits: Arc<Semaphore>,
}

impl OpenAiBackend {
    pub fn new(config: OpenAiConfig) -> Result<Self, ModelError> {
        if config.base_urls.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the OpenAI backend needs at least one base URL".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| ModelError::Backend {
                backend: "openai".into(),
                message: e.to_string(),
            })?;
        Ok(OpenAiBackend {
            client,
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            next_url: AtomicUsize::new(0),
        })
    }

    fn name(&self) -> String {
        format!("openai ({})", self.config.base_urls.join(", "))
    }

    fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Backend {
            backend: self.name(),
            message: message.into(),
        }
    }

    fn unsupported(&self, capability: &str) -> ModelError {
        ModelError::Unsupported {
            backend: self.name(),
            capability: capability.into(),
        }
    }

    /// POSTs a JSON body, retrying transient failures with exponential
    /// backoff and moving to the next server on each attempt.
    async fn post(&self, path: &str, body: &Value) -> Result<Value, ModelError> {
        self.send(path, Some(body)).await
    }

    /// A POST of `body`, or a GET without one.
    async fn send(&self, path: &str, body: Option<&Value>) -> Result<Value, ModelError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| self.error("the request limiter closed"))?;
        let mut backoff = self.config.initial_backoff;
        let mut last_error = String::new();
        for attempt in 0..=self.config.max_retries {
            if attempt > 0 {
                tracing::warn!("retrying after: {last_error}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            let i = self.next_url.fetch_add(1, Ordering::Relaxed) % self.config.base_urls.len();
            let url = format!("{}{path}", self.config.base_urls[i].trim_end_matches('/'));
            let mut request = match body {
                Some(body) => self.client.post(&url).json(body),
                None => self.client.get(&url),
            };
            if let Some(key) = &self.config.api_key {
                request = request.bearer_auth(key);
            }
            match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text)
                            .map_err(|e| self.error(format!("{url} sent invalid JSON: {e}")));
                    }
                    last_error = format!("{url} answered {status}: {}", truncate(&text, 300));
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        return Err(self.error(last_error));
                    }
                }
                Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                    last_error = format!("{url}: {e}");
                }
                Err(e) => return Err(self.error(format!("{url}: {e}"))),
            }
        }
        Err(self.error(format!(
            "gave up after {} retries; last error: {last_error}",
            self.config.max_retries
        )))
    }

    /// The model's parameter count from the first server's model card
    /// (`GET /v1/models`), when it has one: llama-server puts it in
    /// `meta.n_params`; vLLM and SGLang do not say. The entry named like
    /// the configured model is used, or the only entry. `None` when the
    /// card is missing, does not say, or cannot be fetched.
    pub async fn model_parameters(&self) -> Option<u64> {
        let card = match self.send("/v1/models", None).await {
            Ok(card) => card,
            Err(e) => {
                tracing::debug!("no model card: {e}");
                return None;
            }
        };
        let entries = card["data"].as_array()?;
        let entry = entries
            .iter()
            .find(|e| e["id"].as_str() == Some(self.config.model.as_str()))
            .or(match entries.as_slice() {
                [only] => Some(only),
                _ => None,
            })?;
        entry["meta"]["n_params"].as_u64().filter(|&n| n > 0)
    }

    async fn generate_one(
        &self,
        req: &GenerateRequest,
        index: usize,
    ) -> Result<(Completion, Usage), ModelError> {
        let p = &req.params;
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": p.seed.wrapping_add(index as u64),
            "n": 1,
        });
        if p.top_k > 0 {
            body["top_k"] = json!(p.top_k);
        }
        if !p.stop.is_empty() {
            body["stop"] = json!(p.stop);
        }
        let chat = req.messages.is_some();
        let path = match &req.messages {
            Some(messages) => {
                body["messages"] = json!(messages);
                if let Some(k) = req.top_logprobs {
                    body["logprobs"] = json!(true);
                    body["top_logprobs"] = json!(k);
                }
                "/v1/chat/completions"
            }
            None => {
                body["prompt"] = json!(req.prompt);
                // Log-probs carry the token ids on servers that report them.
                body["logprobs"] = json!(req.top_logprobs.unwrap_or(1).max(1));
                "/v1/completions"
            }
        };
        let v = self.post(path, &body).await?;
        let choice = &v["choices"][0];
        let text = if chat {
            choice["message"]["content"].as_str()
        } else {
            choice["text"].as_str()
        }
        .ok_or_else(|| self.error("the answer has no text"))?
        .to_string();
        let parsed = parse_logprobs(&choice["logprobs"]);
        let finish_reason: FinishReason =
            finish::classify(&v, choice, !p.stop.is_empty(), parsed.as_deref());
        let mut token_ids: Vec<u32> = parsed
            .as_ref()
            .map(|tokens| tokens.iter().filter_map(|t| t.id).collect())
            .unwrap_or_default();
        // Servers that list the ids beside the text (vLLM's
        // `return_token_ids`, qstar serve) when the log-probs carry none.
        if token_ids.is_empty() {
            if let Some(ids) = choice["token_ids"].as_array() {
                token_ids = ids
                    .iter()
                    .filter_map(|i| i.as_u64().and_then(|i| u32::try_from(i).ok()))
                    .collect();
            }
        }
        let logprobs = match (req.top_logprobs, parsed) {
            (None, _) => None,
            (Some(_), Some(tokens)) => Some(
                tokens
                    .into_iter()
                    .map(WireToken::into_token_logprob)
                    .collect(),
            ),
            (Some(_), None) => return Err(self.unsupported("log-probs of generated tokens")),
        };
        let usage = usage_of(&v);
        Ok((
            Completion {
                text,
                token_ids,
                finish_reason,
                logprobs,
            },
            usage,
        ))
    }

    async fn generate_request(
        &self,
        req: &GenerateRequest,
    ) -> Result<GenerateResponse, ModelError> {
        // One request per sample with its own seed: portable across servers
        // (not all honour `n`) and reproducible sample by sample.
        let samples = try_join_all((0..req.n).map(|i| self.generate_one(req, i))).await?;
        let mut usage = Usage::default();
        let completions = samples
            .into_iter()
            .map(|(c, u)| {
                usage.add(&u);
                c
            })
            .collect();
        Ok(GenerateResponse { completions, usage })
    }

    /// Prompt log-probs through `echo`: the tokens of `prompt + continuation`
    /// with their byte offsets in the text, and what the request used.
    async fn echo_logprobs(&self, text: &str) -> Result<(Vec<WireToken>, Usage), ModelError> {
        let body = json!({
            "model": self.config.model,
            "prompt": text,
            "max_tokens": 0,
            "echo": true,
            "logprobs": 1,
            "temperature": 0.0,
        });
        let v = self.post("/v1/completions", &body).await?;
        let mut tokens = parse_logprobs(&v["choices"][0]["logprobs"]).unwrap_or_default();
        byte_offsets(&mut tokens, text);
        let covers_prompt = tokens.iter().any(|t| t.offset.is_some())
            && tokens.iter().map(|t| t.text.len()).sum::<usize>() >= text.len();
        if !covers_prompt {
            return Err(
                self.unsupported("prompt log-probs (`echo` with `logprobs` on /v1/completions)")
            );
        }
        Ok((tokens, usage_of(&v)))
    }

    async fn score_one(&self, req: &ScoreRequest) -> Result<ScoreResponse, ModelError> {
        let full = format!("{}{}", req.prompt, req.continuation);
        let (tokens, usage) = self.echo_logprobs(&full).await?;
        let start = req.prompt.len();
        if let Some(t) = straddling(&tokens, start) {
            return Err(ModelError::InvalidRequest(format!(
                "the server tokenizes the end of the prompt and the start of the continuation \
                 as one token ({:?}), so the continuation's log-prob cannot be told apart from \
                 the prompt's (the embedded engine tokenizes them separately); end the prompt \
                 where a token ends, e.g. without a trailing space",
                t.text
            )));
        }
        let mut out = Vec::new();
        let mut total = 0.0;
        for t in tokens {
            if t.offset.is_some_and(|o| o >= start) {
                total += t.logprob.unwrap_or(0.0) as f64;
                out.push(t.into_token_logprob());
            }
        }
        if out.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the server's echo shows no token of the continuation".into(),
            ));
        }
        Ok(ScoreResponse {
            tokens: out,
            total_logprob: total,
            usage,
        })
    }

    async fn choose_one(&self, req: &ChooseRequest) -> Result<ChooseResponse, ModelError> {
        req.validate()?;
        // First try: the next-token distribution, exact for single tokens.
        let body = json!({
            "model": self.config.model,
            "prompt": req.prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self.config.choose_top_logprobs,
        });
        let v = self.post("/v1/completions", &body).await?;
        let mut usage = usage_of(&v);
        let logprobs = &v["choices"][0]["logprobs"];
        let tokens = parse_logprobs(logprobs);
        if tokens.is_none() && !logprobs.is_object() {
            return Err(self.unsupported("log-probs on /v1/completions"));
        }
        // No token at all: the server stopped at once (end of generation)
        // without reporting that token; the options are then scored in full.
        let first = tokens.and_then(|t| t.into_iter().next());
        let from_top: Option<Vec<ScoredOption<String>>> = req
            .options
            .iter()
            .map(|o| {
                first
                    .as_ref()?
                    .top
                    .iter()
                    .find(|a| &a.text == o)
                    .map(|a| ScoredOption {
                        tokens: vec![a.text.clone()],
                        logprobs: vec![a.logprob as f64],
                    })
            })
            .collect();
        if let Some(scored) = from_top {
            return Ok(choose_response(&req.options, &scored, usage));
        }
        // Otherwise every option is scored in full, which needs echo.
        let requests: Vec<ScoreRequest> = req
            .options
            .iter()
            .map(|o| ScoreRequest {
                prompt: req.prompt.clone(),
                continuation: o.clone(),
            })
            .collect();
        let scored = try_join_all(requests.iter().map(|r| self.score_one(r)))
            .await
            .map_err(|e| match e {
                ModelError::Unsupported { backend, .. } => ModelError::Unsupported {
                    backend,
                    capability: format!(
                        "exact choice among options that are not all single tokens in the top {} \
                     (it needs prompt log-probs, `echo` with `logprobs`)",
                        self.config.choose_top_logprobs
                    ),
                },
                other => other,
            })?;
        for s in &scored {
            usage.add(&s.usage);
        }
        // Token texts stand in for ids (servers need not send ids); they
        // decide which option's tokens extend another's.
        let scored: Vec<ScoredOption<String>> = scored
            .into_iter()
            .map(|s| ScoredOption {
                logprobs: s
                    .tokens
                    .iter()
                    .map(|t| t.logprob.unwrap_or(0.0) as f64)
                    .collect(),
                tokens: s.tokens.into_iter().map(|t| t.text).collect(),
            })
            .collect();
        Ok(choose_response(&req.options, &scored, usage))
    }
}

/// A token of an echoed text that starts before `start` and ends after it:
/// the server merged the two sides of the boundary into one token.
fn straddling(tokens: &[WireToken], start: usize) -> Option<&WireToken> {
    tokens.iter().find(|t| {
        t.offset
            .is_some_and(|o| o < start && o + t.text.len() > start)
    })
}

/// The usage a server reported: `usage` with OpenAI's
/// `prompt_tokens_details.cached_tokens` (vLLM, recent llama-server), or
/// llama-server's `timings.cache_n` for the prompt tokens taken from its
/// cache. Missing counts are 0.
fn usage_of(v: &Value) -> Usage {
    let count = |x: &Value| x.as_u64().map(|n| n as usize);
    let u = &v["usage"];
    Usage {
        prompt_tokens: count(&u["prompt_tokens"]).unwrap_or(0),
        prompt_tokens_reused: count(&u["prompt_tokens_details"]["cached_tokens"])
            .or_else(|| count(&v["timings"]["cache_n"]))
            .unwrap_or(0),
        completion_tokens: count(&u["completion_tokens"]).unwrap_or(0),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[async_trait]
impl LanguageModel for OpenAiBackend {
    fn backend_name(&self) -> String {
        self.name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: true,
            // Known only when a server is asked; calls report it if missing.
            score: true,
            choose: true,
            max_top_logprobs: self.config.choose_top_logprobs,
            chat_template: false,
        }
    }

    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError> {
        try_join_all(requests.iter().map(|r| self.generate_request(r))).await
    }

    async fn score(&self, requests: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError> {
        try_join_all(requests.iter().map(|r| self.score_one(r))).await
    }

    async fn choose(
        &self,
        requests: Vec<ChooseRequest>,
    ) -> Result<Vec<ChooseResponse>, ModelError> {
        try_join_all(requests.iter().map(|r| self.choose_one(r))).await
    }

    fn render_chat(
        &self,
        _messages: &[Message],
        _add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        Err(self.unsupported(
            "rendering the chat template locally (send messages with GenerateRequest::chat)",
        ))
    }
}

impl WireToken {
    /// A token as the rest of qstar sees it; an id the server did not send
    /// is 0, and then only the text tells tokens apart.
    fn into_token_logprob(self) -> TokenLogprob {
        TokenLogprob {
            id: self.id.unwrap_or(0),
            rank: None,
            text: self.text,
            logprob: self.logprob,
            top: self
                .top
                .into_iter()
                .map(|a| qstar_core::TopLogprob {
                    id: a.id.unwrap_or(0),
                    text: a.text,
                    logprob: a.logprob,
                })
                .collect(),
        }
    }
}
