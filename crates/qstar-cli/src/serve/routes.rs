//! The endpoints: OpenAI's completions, chat completions and models, and
//! qstar's own (`/v1/choose`, `/v1/rate`, `/v1/judge`, OpenRLHF's
//! `/get_reward`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qstar_core::{
    ChooseRequest, Completion, FinishReason, GenerateRequest, LanguageModel, Message, PromptFormat,
    SamplingParams, ScoreRequest, TokenLogprob, Usage,
};
use qstar_feedback::Rater;
use serde_json::{json, Map, Value};

use super::limits::QueueSlot;
use super::metrics::Tokens;
use super::stream::{live, Head};
use super::tally::Tally;
use super::wire::{
    message_text, usage_json, ApiError, ApiJson, ChatMessage, ChatRequest, ChooseBody,
    CompletionRequest, JudgeBody, RateBody, RewardBody, Sampling,
};
use super::AppState;
use crate::commands::MAX_SAMPLES;

/// The most prompts (or reward queries) one request may carry.
const MAX_BATCH: usize = 256;
/// The most alternatives per token the engine reports.
const MAX_TOP_LOGPROBS: u64 = 20;

/// A JSON answer that carries its token counts for the log and metrics.
fn answer(body: Value, usage: &Usage) -> Response {
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(Tokens {
        prompt: usage.prompt_tokens,
        generated: usage.completion_tokens,
    });
    response
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn response_id(state: &AppState, prefix: &str) -> String {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:016x}", qstar_core::mix(state.id_salt ^ n))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
    .with_code("not_found")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "this endpoint does not take that method",
    )
    .with_code("method_not_allowed")
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let info = state.engine.info();
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.started,
            "owned_by": "qstar",
            "meta": {
                "n_params": info.parameters,
                "n_ctx_train": info.context_length,
                "n_vocab": info.vocab_size,
                "size": info.file_bytes,
            },
        }],
    }))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.engine.stats().await;
    let in_flight = state.max_queue - state.queue.available_permits();
    let text = state.metrics.render(in_flight, state.max_queue, &stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Sampling parameters and sample count from a request, checked against
/// the server's limits.
fn sampling(
    state: &AppState,
    s: &Sampling,
    default_max_tokens: usize,
) -> Result<(SamplingParams, usize), ApiError> {
    let max_tokens = match s.max_tokens.or(s.max_completion_tokens) {
        None => default_max_tokens.min(state.max_tokens_limit),
        Some(m) if m as usize <= state.max_tokens_limit => m as usize,
        Some(m) => {
            return Err(ApiError::bad_param(
                "max_tokens",
                format!(
                    "max_tokens is {m}; this server allows at most {}",
                    state.max_tokens_limit
                ),
            ))
        }
    };
    let temperature = s.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ApiError::bad_param(
            "temperature",
            "temperature must be a number ≥ 0",
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_param("top_p", "top_p must be in (0, 1]"));
    }
    let top_k = match s.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => k as usize,
        _ => {
            return Err(ApiError::bad_param(
                "top_k",
                "top_k must be a positive count, or 0 or -1 for all tokens",
            ))
        }
    };
    let n = s.n.unwrap_or(1);
    if n == 0 || n as usize > MAX_SAMPLES {
        return Err(ApiError::bad_param(
            "n",
            format!("n must be from 1 to {MAX_SAMPLES}"),
        ));
    }
    let stop = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_param(
            "stop",
            "stop strings must not be empty",
        ));
    }
    if stop.len() > 16 {
        return Err(ApiError::bad_param("stop", "at most 16 stop strings"));
    }
    // Without a seed every request draws fresh samples.
    let seed = s.seed.unwrap_or_else(|| {
        qstar_core::mix(state.id_salt ^ state.next_id.fetch_add(1, Ordering::Relaxed))
    });
    Ok((
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
            max_tokens,
            stop,
            ignore_eos: s.ignore_eos.unwrap_or(false),
        },
        n as usize,
    ))
}

pub(super) fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// vLLM's `stop_reason`: the stop string that ended the text, or null for
/// the end of generation and the length limit.
fn stop_reason(c: &Completion, stop: &[String]) -> Value {
    match c.finish_reason {
        FinishReason::Stop => stop.first().map_or(Value::Null, |s| json!(s)),
        _ => Value::Null,
    }
}

/// The legacy completions log-prob layout, built token by token.
#[derive(Default)]
struct LegacyLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    /// Characters so far.
    chars: usize,
}

impl LegacyLogprobs {
    fn push(&mut self, t: &TokenLogprob, k: usize) {
        self.tokens.push(json!(t.text));
        self.token_logprobs.push(json!(t.logprob));
        self.text_offset.push(self.chars);
        self.chars += t.text.chars().count();
        let top = match t.logprob {
            None => Value::Null,
            Some(lp) => {
                let mut m = Map::new();
                for a in t.top.iter().take(k) {
                    m.entry(a.text.clone()).or_insert(json!(a.logprob));
                }
                // The token itself is always listed, as vLLM does.
                m.entry(t.text.clone()).or_insert(json!(lp));
                Value::Object(m)
            }
        };
        self.top_logprobs.push(top);
    }

    fn into_json(self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

/// The prompt's tokens with their log-probs and `top` alternatives, first
/// one unconditioned (`None`), as `echo` and `prompt_logprobs` report them;
/// and what scoring them used.
async fn prompt_logprobs(
    state: &AppState,
    prompt: &str,
    top: usize,
) -> Result<(Vec<TokenLogprob>, Usage), ApiError> {
    if prompt.is_empty() {
        return Ok((Vec::new(), Usage::default()));
    }
    let request = ScoreRequest {
        prompt: String::new(),
        continuation: prompt.to_string(),
    };
    let scored = state
        .engine
        .score_with_top(vec![request], top)
        .await?
        .pop()
        .ok_or_else(|| ApiError::from(super::no_answer()))?;
    let mut tokens = scored.tokens;
    // A BOS token the engine put first is part of what the model saw.
    let all = state.engine.tokenize(prompt, true);
    if all.len() == tokens.len() + 1 {
        tokens.insert(
            0,
            TokenLogprob {
                id: all[0],
                rank: None,
                text: String::new(),
                logprob: None,
                top: Vec::new(),
            },
        );
    }
    Ok((tokens, scored.usage))
}

/// vLLM's `prompt_logprobs`: per prompt token, null for the first, else a
/// map from token id to `{logprob, rank, decoded_token}` holding the token
/// itself and the `k` most likely tokens there.
fn vllm_prompt_logprobs(tokens: &[TokenLogprob], k: usize) -> Value {
    let entry = |logprob: f32, rank: Option<u32>, text: &str| json!({"logprob": logprob, "rank": rank, "decoded_token": text});
    let rows: Vec<Value> = tokens
        .iter()
        .map(|t| match t.logprob {
            None => Value::Null,
            Some(lp) => {
                let mut m = Map::new();
                m.insert(t.id.to_string(), entry(lp, t.rank, &t.text));
                for (r, a) in t.top.iter().take(k).enumerate() {
                    m.entry(a.id.to_string())
                        .or_insert_with(|| entry(a.logprob, Some(r as u32 + 1), &a.text));
                }
                Value::Object(m)
            }
        })
        .collect();
    Value::Array(rows)
}

/// The head of a live stream's chunks.
fn stream_head(state: &AppState, chat: bool) -> Head {
    Head {
        id: response_id(state, if chat { "chatcmpl" } else { "cmpl" }),
        created: now(),
        model: state.model_id.clone(),
        chat,
    }
}

fn slot_of(slot: Option<Extension<QueueSlot>>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    slot.and_then(|Extension(s)| s.take())
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<QueueSlot>>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (params, n) = sampling(&state, &body.sampling, 16)?;
    let stream = body.sampling.stream.unwrap_or(false);
    let prompts = body.prompt.into_vec();
    if prompts.is_empty() || prompts.len() > MAX_BATCH {
        return Err(ApiError::bad_param(
            "prompt",
            format!("prompt must be a string or a list of 1 to {MAX_BATCH} strings"),
        ));
    }
    if prompts.len() * n > MAX_SAMPLES {
        return Err(ApiError::bad_param(
            "n",
            format!(
                "{} prompts × n = {n} asks for {} samples; at most {MAX_SAMPLES} per request",
                prompts.len(),
                prompts.len() * n
            ),
        ));
    }
    let logprobs = match body.logprobs {
        Some(k) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::bad_param(
                "logprobs",
                format!("logprobs must be from 0 to {MAX_TOP_LOGPROBS}"),
            ))
        }
        other => other.map(|k| k as usize),
    };
    let prompt_top = match body.prompt_logprobs {
        Some(k) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::bad_param(
                "prompt_logprobs",
                format!("prompt_logprobs must be from 0 to {MAX_TOP_LOGPROBS}"),
            ))
        }
        other => other.map(|k| k as usize),
    };
    let echo = body.echo.unwrap_or(false);
    let only_prompt = (echo || prompt_top.is_some()) && params.max_tokens == 0;
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .map(|p| GenerateRequest {
            prompt: p.clone(),
            n,
            params: params.clone(),
            top_logprobs: logprobs,
            messages: None,
        })
        .collect();
    if stream && logprobs.is_none() && !echo && prompt_top.is_none() {
        let head = stream_head(&state, false);
        return Ok(live(state.clone(), requests, n, head, slot_of(slot)));
    }
    // One scoring pass serves both echo's alternatives and prompt_logprobs.
    let echo_top = if echo { logprobs.unwrap_or(0) } else { 0 };
    let top = echo_top.max(prompt_top.unwrap_or(0));
    let echoes = if echo || prompt_top.is_some() {
        let all = prompts.iter().map(|p| prompt_logprobs(&state, p, top));
        Some(futures::future::try_join_all(all).await?)
    } else {
        None
    };
    let generated = if only_prompt {
        None
    } else {
        Some(state.engine.generate(requests).await?)
    };
    let mut usage = Usage::default();
    let mut choices = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let echoed = echoes.as_ref().map(|e| &e[i]);
        let completions: Vec<Completion> = match &generated {
            Some(g) => {
                usage.add(&g[i].usage);
                g[i].completions.clone()
            }
            None => {
                if let Some((_, u)) = echoed {
                    usage.add(u);
                }
                (0..n)
                    .map(|_| Completion {
                        text: String::new(),
                        token_ids: Vec::new(),
                        finish_reason: FinishReason::Length,
                        logprobs: None,
                    })
                    .collect()
            }
        };
        for (j, c) in completions.iter().enumerate() {
            let mut text = String::new();
            let mut legacy = LegacyLogprobs::default();
            if let (true, Some((tokens, _))) = (echo, echoed) {
                text.push_str(prompt);
                for t in tokens {
                    legacy.push(t, echo_top);
                }
                // Generated text starts after the whole prompt.
                legacy.chars = prompt.chars().count();
            }
            text.push_str(&c.text);
            let lp = match logprobs {
                None => Value::Null,
                Some(k) => {
                    for t in c.logprobs.iter().flatten() {
                        legacy.push(t, k);
                    }
                    legacy.into_json()
                }
            };
            let mut choice = json!({
                "index": i * n + j,
                "text": text,
                "logprobs": lp,
                "finish_reason": finish_reason(c.finish_reason),
                "stop_reason": stop_reason(c, &params.stop),
                "token_ids": c.token_ids,
            });
            if let (Some(k), Some((tokens, _))) = (prompt_top, echoed) {
                choice["prompt_logprobs"] = vllm_prompt_logprobs(tokens, k);
            }
            choices.push(choice);
        }
    }
    let body = json!({
        "id": response_id(&state, "cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": state.model_id,
        "choices": choices,
        "usage": usage_json(&usage),
    });
    if stream {
        return Ok(super::stream::events(body, false, &usage));
    }
    Ok(answer(body, &usage))
}

fn messages_of(messages: &[ChatMessage]) -> Result<Vec<Message>, ApiError> {
    messages
        .iter()
        .map(|m| {
            if m.role.is_empty() {
                return Err(ApiError::bad_param("messages", "a message has no role"));
            }
            Ok(Message::new(m.role.clone(), message_text(&m.content)?))
        })
        .collect()
}

/// One token in the chat log-prob layout.
fn chat_token(id: u32, text: &str, logprob: f32) -> Value {
    json!({"id": id, "token": text, "logprob": logprob, "bytes": text.as_bytes()})
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<QueueSlot>>,
    ApiJson(body): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let (params, n) = sampling(&state, &body.sampling, 256)?;
    let stream = body.sampling.stream.unwrap_or(false);
    if body.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let messages = messages_of(&body.messages)?;
    let top = match (body.logprobs.unwrap_or(false), body.top_logprobs) {
        (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::bad_param(
                "top_logprobs",
                format!("top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}"),
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, _) => None,
    };
    let request = GenerateRequest {
        n,
        top_logprobs: top,
        ..GenerateRequest::chat(messages, params.clone())
    };
    if stream && top.is_none() {
        let head = stream_head(&state, true);
        return Ok(live(state.clone(), vec![request], n, head, slot_of(slot)));
    }
    let response = state
        .engine
        .generate(vec![request])
        .await?
        .pop()
        .ok_or_else(|| ApiError::from(super::no_answer()))?;
    let choices: Vec<Value> = response
        .completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match (top, &c.logprobs) {
                (Some(k), Some(tokens)) => {
                    let content: Vec<Value> = tokens
                        .iter()
                        .map(|t| {
                            let mut entry = chat_token(t.id, &t.text, t.logprob.unwrap_or(0.0));
                            entry["top_logprobs"] = t
                                .top
                                .iter()
                                .take(k)
                                .map(|a| chat_token(a.id, &a.text, a.logprob))
                                .collect();
                            entry
                        })
                        .collect();
                    json!({"content": content})
                }
                _ => Value::Null,
            };
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs,
                "finish_reason": finish_reason(c.finish_reason),
                "stop_reason": stop_reason(c, &params.stop),
                "token_ids": c.token_ids,
            })
        })
        .collect();
    let body = json!({
        "id": response_id(&state, "chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": state.model_id,
        "choices": choices,
        "usage": usage_json(&response.usage),
    });
    if stream {
        return Ok(super::stream::events(body, true, &response.usage));
    }
    Ok(answer(body, &response.usage))
}

pub async fn choose(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<ChooseBody>,
) -> Result<Response, ApiError> {
    let request = ChooseRequest {
        prompt: body.prompt,
        options: body.options,
    };
    request
        .validate()
        .map_err(|e| ApiError::bad_param("options", e.to_string()))?;
    let response = state
        .engine
        .choose(vec![request])
        .await?
        .pop()
        .ok_or_else(|| ApiError::from(super::no_answer()))?;
    let options: Vec<Value> = response
        .options
        .iter()
        .map(|o| json!({"text": o.text, "logprob": o.logprob, "prob": o.prob}))
        .collect();
    let body = json!({
        "options": options,
        "mass": response.mass,
        "usage": usage_json(&response.usage),
    });
    Ok(answer(body, &response.usage))
}

fn prompt_format(format: Option<&str>) -> Result<PromptFormat, ApiError> {
    match format.unwrap_or("chat") {
        "chat" => Ok(PromptFormat::Chat),
        "plain" => Ok(PromptFormat::Plain),
        other => Err(ApiError::bad_param(
            "format",
            format!("format is {other:?}; use \"chat\" or \"plain\""),
        )),
    }
}

/// The conversation of a request that gives it as `prompt` (one user turn)
/// or `messages`, never both.
fn conversation_of(
    prompt: &Option<String>,
    messages: &Option<Vec<ChatMessage>>,
) -> Result<Vec<Message>, ApiError> {
    match (prompt, messages) {
        (Some(p), None) => Ok(vec![Message::user(p.clone())]),
        (None, Some(m)) => messages_of(m),
        _ => Err(ApiError::bad_request(
            "give the conversation as either `prompt` (one user turn) or `messages`",
        )),
    }
}

fn server_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        e.to_string(),
    )
}

/// Constitutional-AI judgement of two replies, as `qstar label` makes it:
/// `p_a` is the probability that `response_a` is the better one, averaged
/// over the drawn principles and (by default) both orders.
pub async fn judge(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<JudgeBody>,
) -> Result<Response, ApiError> {
    use qstar_feedback::cai::{CaiConfig, CaiLabeler, Method, PrincipleChoice};
    let conversation = conversation_of(&body.prompt, &body.messages)?;
    let method = match body.method.as_deref().unwrap_or("cai") {
        "cai" => Method::Cai,
        "rlaif" => Method::Rlaif,
        "cot" => Method::Cot,
        other => {
            return Err(ApiError::bad_param(
                "method",
                format!("method is {other:?}; use \"cai\", \"rlaif\" or \"cot\""),
            ))
        }
    };
    let count = state.constitution.principles.len();
    let principles = match &body.principles {
        None => PrincipleChoice::Sample(1),
        Some(Value::String(s)) if s == "all" => PrincipleChoice::All,
        Some(v) => match v.as_u64() {
            Some(k) if k >= 1 && k as usize <= count => PrincipleChoice::Sample(k as usize),
            _ => {
                return Err(ApiError::bad_param(
                    "principles",
                    format!("principles must be \"all\" or a count from 1 to {count}"),
                ))
            }
        },
    };
    let config = CaiConfig {
        method,
        principles,
        debias: body.debias.unwrap_or(true),
        seed: body.seed.unwrap_or(0),
        format: prompt_format(body.format.as_deref())?,
        ..CaiConfig::default()
    };
    let tally = Tally::new(&state.engine);
    let model: &dyn LanguageModel = &tally;
    let labeler = CaiLabeler::new(model, &state.constitution, config)?;
    // Reply A plays the source's "chosen" reply, so P(chosen) is P(A).
    // Line 1, as the first pair of a file: the principles drawn for a seed
    // and the order asked first are `qstar label`'s for that pair.
    let pair = qstar_tasks::PreferencePair {
        line: 1,
        conversation,
        chosen: body.response_a,
        rejected: body.response_b,
        soft_label: None,
    };
    let label = labeler
        .label(std::slice::from_ref(&pair))
        .await?
        .pop()
        .ok_or_else(|| ApiError::from(super::no_answer()))?;
    let usage = tally.usage();
    let judgements: Vec<Value> = label
        .judgements
        .iter()
        .map(|j| {
            json!({
                "principle": j.principle,
                "principle_text": state.constitution.principles.get(j.principle),
                "a_first": j.human_chosen_first,
                "p_first": j.p_a,
                "p_a": j.p_human_chosen(),
                "option_mass": j.option_mass,
                "rationale": j.rationale,
            })
        })
        .collect();
    let body = json!({
        "p_a": label.p_human_chosen,
        "p_b": 1.0 - label.p_human_chosen,
        "judgements": judgements,
        "usage": usage_json(&usage),
    });
    Ok(answer(body, &usage))
}

pub async fn rate(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<RateBody>,
) -> Result<Response, ApiError> {
    let conversation = conversation_of(&body.prompt, &body.messages)?;
    let format = prompt_format(body.format.as_deref())?;
    let tally = Tally::new(&state.engine);
    let model: &dyn LanguageModel = &tally;
    let rater = Rater::new(model, format)?;
    let rating = rater
        .rate(&[(conversation.as_slice(), body.response.as_str())])
        .await?
        .pop()
        .ok_or_else(|| ApiError::from(super::no_answer()))?;
    let usage = tally.usage();
    let mut body = serde_json::to_value(&rating).map_err(server_error)?;
    body["usage"] = usage_json(&usage);
    Ok(answer(body, &usage))
}

/// OpenRLHF's remote reward model. Each query is a prompt and its
/// response in one text; the response is what follows the matching entry
/// of `prompts` (without one, the whole query is rated as a reply to an
/// empty conversation). With `--reward-model`, rewards are the trained
/// head's and scores their sigmoid; otherwise rewards are d-RLAIF's, in
/// [-1, 1], and scores the expected 1–10 rating rescaled to [0, 1].
pub async fn get_reward(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<RewardBody>,
) -> Result<Response, ApiError> {
    if body.query.len() > MAX_BATCH {
        return Err(ApiError::bad_param(
            "query",
            format!("at most {MAX_BATCH} queries per request"),
        ));
    }
    if let Some(p) = &body.prompts {
        if p.len() != body.query.len() {
            return Err(ApiError::bad_param(
                "prompts",
                format!(
                    "{} prompts for {} queries; give one prompt per query",
                    p.len(),
                    body.query.len()
                ),
            ));
        }
    }
    if let Some(l) = &body.labels {
        if l.len() != body.query.len() {
            return Err(ApiError::bad_param(
                "labels",
                format!("{} labels for {} queries", l.len(), body.query.len()),
            ));
        }
    }
    let split: Vec<(Vec<Message>, String)> = body
        .query
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let prompt = body.prompts.as_ref().map(|p| p[i].as_str());
            match prompt.and_then(|p| q.strip_prefix(p).map(|r| (p, r))) {
                Some((p, reply)) if !p.is_empty() => (vec![Message::user(p)], reply.to_string()),
                _ => (Vec::new(), q.clone()),
            }
        })
        .collect();
    let items: Vec<(&[Message], &str)> = split
        .iter()
        .map(|(c, r)| (c.as_slice(), r.as_str()))
        .collect();
    if let Some(rm) = &state.reward_model {
        let (rewards, usage) = if items.is_empty() {
            (Vec::new(), Usage::default())
        } else {
            rm.rewards(&items, None).await.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("{e:#}"),
                )
            })?
        };
        let scores: Vec<f64> = rewards.iter().map(|&r| 1.0 / (1.0 + (-r).exp())).collect();
        let body = json!({
            "rewards": rewards,
            "scores": scores,
            "extra_logs": {"reward_model": rm.config.labels},
        });
        return Ok(answer(body, &usage));
    }
    let tally = Tally::new(&state.engine);
    let model: &dyn LanguageModel = &tally;
    let rater = Rater::new(model, PromptFormat::Chat)?;
    let ratings = if items.is_empty() {
        Vec::new()
    } else {
        rater.rate(&items).await?
    };
    let rewards: Vec<f64> = ratings.iter().map(|r| r.reward).collect();
    let scores: Vec<f64> = ratings
        .iter()
        .map(|r| ((r.expected_score - 1.0) / 9.0).clamp(0.0, 1.0))
        .collect();
    let expected: Vec<f64> = ratings.iter().map(|r| r.expected_score).collect();
    let body = json!({
        "rewards": rewards,
        "scores": scores,
        "extra_logs": {"expected_rating": expected},
    });
    Ok(answer(body, &tally.usage()))
}
