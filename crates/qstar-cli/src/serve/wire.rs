//! What travels over the wire: request bodies as clients send them, errors
//! in OpenAI's shape, and the JSON body extractor that turns every bad body
//! into one of those errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use qstar_core::ModelError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// An error as OpenAI writes it: `{"error": {message, type, param, code}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// A bad value of one field.
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::bad_request(message)
        }
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        if e.is_input_error() {
            ApiError::bad_request(e.to_string())
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body whose every failure (too large, not JSON, wrong fields) is
/// an [`ApiError`] with the matching status.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "invalid_request_error",
                    "the request body is larger than the server accepts",
                )
                .with_code("request_too_large")
            } else {
                ApiError::new(status, "invalid_request_error", e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
    }
}

/// A string, or a list of them (`prompt`, `stop`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The sampling fields both completion endpoints share.
#[derive(Debug, Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The chat endpoint's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// 0 or -1 keeps every token.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// vLLM's: keep sampling past the end-of-generation token (fixed-length
    /// answers, for load tests).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// The number of alternatives reported per token.
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: Option<bool>,
    /// vLLM's: the prompt's tokens with this many alternatives each, as
    /// `choices[i].prompt_logprobs`.
    #[serde(default)]
    pub prompt_logprobs: Option<u64>,
}

/// A chat message; `content` is a string or a list of text parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct ChooseBody {
    pub prompt: String,
    pub options: Vec<String>,
}

/// `prompt` (one user turn) or `messages` (a conversation), and the reply.
#[derive(Debug, Deserialize)]
pub struct RateBody {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    pub response: String,
    /// "chat" (the model's template, the default) or "plain".
    #[serde(default)]
    pub format: Option<String>,
}

/// A pairwise judgement: the conversation (`prompt` or `messages`), the two
/// replies, and how the constitution's principles judge them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeBody {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    pub response_a: String,
    pub response_b: String,
    /// "cai" (the default), "rlaif" or "cot".
    #[serde(default)]
    pub method: Option<String>,
    /// How many principles to draw (seeded), or "all"; default 1.
    #[serde(default)]
    pub principles: Option<Value>,
    /// Ask in both orders and average (default true).
    #[serde(default)]
    pub debias: Option<bool>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// "chat" (the default) or "plain".
    #[serde(default)]
    pub format: Option<String>,
}

/// OpenRLHF's remote reward model request: `query` holds full
/// prompt+response texts, `prompts` the prompts they start with.
#[derive(Debug, Deserialize)]
pub struct RewardBody {
    pub query: Vec<String>,
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<Vec<Value>>,
}

/// Text of a message's `content`: a string, or the text parts of a list.
pub fn message_text(content: &Option<Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::bad_param(
                            "messages",
                            "only text content parts are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::bad_param(
            "messages",
            "a message's content must be a string or a list of text parts",
        )),
    }
}

/// The `usage` object every response carries.
pub fn usage_json(u: &qstar_core::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.prompt_tokens_reused},
    })
}
