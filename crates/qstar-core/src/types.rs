use serde::{Deserialize, Serialize};

use crate::ModelError;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
    pub fn system(content: impl Into<String>) -> Self {
        Message::new("system", content)
    }
}

/// How to pick tokens. Temperature 0 is greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set whose mass reaches top_p.
    pub top_p: f32,
    /// Seed of the first sample; sample i of a request uses `seed + i`.
    pub seed: u64,
    pub max_tokens: usize,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_tokens: 128,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Raw prompt text; special tokens written in it (`<|im_start|>`) are
    /// parsed as special tokens.
    pub prompt: String,
    /// Number of independent samples.
    pub n: usize,
    pub params: SamplingParams,
    /// Report this many alternatives (with log-probs) per generated token.
    pub top_logprobs: Option<usize>,
    /// A conversation to continue instead of `prompt`: the backend applies
    /// the model's chat template (the embedded engine renders it; a server
    /// gets it at `/v1/chat/completions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            n: 1,
            params,
            top_logprobs: None,
            messages: None,
        }
    }

    /// A request that continues a conversation as the assistant.
    pub fn chat(messages: Vec<Message>, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt: String::new(),
            n: 1,
            params,
            top_logprobs: None,
            messages: Some(messages),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-generation token.
    Eos,
    /// A stop string was produced (it is not part of the text).
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// A token with its log-probability under the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub text: String,
    /// `None` for a token with no preceding token to condition on.
    pub logprob: Option<f32>,
    /// The most likely alternatives at this position, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Present when the request asked for `top_logprobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// Compute spent on a request, so strategies can be compared at equal cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens in the request(s).
    pub prompt_tokens: usize,
    /// Of those, how many were taken from a prefix cache instead of computed.
    pub prompt_tokens_reused: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.prompt_tokens_reused += other.prompt_tokens_reused;
        self.completion_tokens += other.completion_tokens;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub completions: Vec<Completion>,
    pub usage: Usage,
}

impl GenerateResponse {
    /// The text of the first completion (empty when there is none), for
    /// callers that asked for one sample.
    pub fn into_first_text(self) -> String {
        self.completions
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// May be empty; the continuation is then scored from the start.
    pub prompt: String,
    pub continuation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    /// The continuation's tokens (tokenized on their own, after the prompt).
    pub tokens: Vec<TokenLogprob>,
    /// Sum of the log-probs that exist (a first token with none adds 0).
    pub total_logprob: f64,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChooseRequest {
    pub prompt: String,
    pub options: Vec<String>,
}

impl ChooseRequest {
    /// Rejects requests no backend can answer.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.options.is_empty() {
            return Err(ModelError::InvalidRequest(
                "choose needs at least one option".into(),
            ));
        }
        if let Some(i) = self.options.iter().position(|o| o.is_empty()) {
            return Err(ModelError::InvalidRequest(format!(
                "option {} is empty; every option needs at least one token",
                i + 1
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionScore {
    pub text: String,
    /// Total log-probability of the option's tokens after the prompt.
    pub logprob: f64,
    /// `logprob` normalized over the options (they sum to 1).
    pub prob: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChooseResponse {
    pub options: Vec<OptionScore>,
    pub usage: Usage,
}

/// Normalizes log-probabilities over a closed set with log-sum-exp, so that
/// very negative values do not underflow to a 0/0.
pub fn normalize_logprobs(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        let n = logprobs.len().max(1) as f64;
        return vec![1.0 / n; logprobs.len()];
    }
    let weights: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Builds a [`ChooseResponse`] from per-option total log-probs.
pub fn choose_response(options: &[String], logprobs: Vec<f64>, usage: Usage) -> ChooseResponse {
    let probs = normalize_logprobs(&logprobs);
    ChooseResponse {
        options: options
            .iter()
            .zip(logprobs.iter().zip(probs))
            .map(|(text, (&logprob, prob))| OptionScore {
                text: text.clone(),
                logprob,
                prob,
            })
            .collect(),
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_sums_to_one_and_keeps_ratios() {
        let p = normalize_logprobs(&[-1000.0, -1000.0 - 2f64.ln()]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        assert!((p[0] / p[1] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn empty_options_are_rejected() {
        let r = ChooseRequest {
            prompt: "x".into(),
            options: vec![],
        };
        assert!(r.validate().unwrap_err().is_input_error());
    }
}
