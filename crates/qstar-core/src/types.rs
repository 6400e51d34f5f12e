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
    /// 1 + how many tokens were more likely here, where it was computed
    /// (scoring with alternatives asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
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
    /// What `generate --json` prints: each completion's text, token ids and
    /// finish reason, and the usage.
    pub fn summary(&self) -> serde_json::Value {
        let completions: Vec<_> = self
            .completions
            .iter()
            .map(|c| {
                serde_json::json!({"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason})
            })
            .collect();
        serde_json::json!({"completions": completions, "usage": self.usage})
    }

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

impl ScoreResponse {
    /// What `score --json` prints: each token's id, text and log-prob, and
    /// the total.
    pub fn summary(&self) -> serde_json::Value {
        let tokens: Vec<_> = self
            .tokens
            .iter()
            .map(|t| serde_json::json!({"id": t.id, "text": t.text, "logprob": t.logprob}))
            .collect();
        serde_json::json!({"tokens": tokens, "total_logprob": self.total_logprob})
    }
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
        for (i, o) in self.options.iter().enumerate() {
            if let Some(j) = self.options[..i].iter().position(|p| p == o) {
                return Err(ModelError::InvalidRequest(format!(
                    "options {} and {} are the same text {o:?}; each answer must be listed once",
                    j + 1,
                    i + 1
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionScore {
    pub text: String,
    /// Log-probability that the continuation is exactly this option: its
    /// tokens, and then not the rest of a longer option that extends them
    /// (see [`exact_option_logprobs`]). For options that are no prefix of
    /// another this is the plain sum of the option's token log-probs.
    pub logprob: f64,
    /// `logprob` normalized over the options (they sum to 1).
    pub prob: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChooseResponse {
    pub options: Vec<OptionScore>,
    /// Probability mass the model put on the options before normalization
    /// (the sum of `exp(logprob)`): a distribution built on 0.1 % of the
    /// model's mass says little, and this makes that visible.
    #[serde(default)]
    pub mass: f64,
    pub usage: Usage,
}

impl ChooseResponse {
    /// What `choose --json` prints: each option's text, log-prob and
    /// probability, in the order asked.
    pub fn summary(&self) -> serde_json::Value {
        let options: Vec<_> = self
            .options
            .iter()
            .map(|o| serde_json::json!({"text": o.text, "logprob": o.logprob, "prob": o.prob}))
            .collect();
        serde_json::json!({"options": options})
    }
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

/// One option as a backend scored it: its tokens (ids, or texts where a
/// server gives no ids) and each token's log-probability given the prompt
/// and the option's tokens before it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredOption<K> {
    pub tokens: Vec<K>,
    pub logprobs: Vec<f64>,
}

/// The log-probability of each option as a *complete* answer.
///
/// The probability of an option's tokens includes every continuation that
/// goes on with more tokens, so when one option's tokens are a proper prefix
/// of another's ("1" and "10" tokenized digit by digit), the longer option's
/// mass would be counted twice. The rule: an option's mass excludes the mass
/// of the options that extend it,
///
/// `P(exactly o) = P(o) · (1 − Σ_e P(rest of e | o))`,
///
/// where `e` runs over the options that extend `o` *directly* (no other
/// option lies between them: with "1", "10" and "100", "100" is inside
/// "10" and only "10" is subtracted from "1"). The conditional `P(rest of e
/// | o)` comes from `e`'s own tokens after `o`'s, so it is exact even when a
/// server's numbers for the shared prefix differ slightly between requests.
/// Options with identical tokens are the same answer and each gets its mass.
/// A mass that rounding makes zero or negative becomes `-inf`.
pub fn exact_option_logprobs<K: PartialEq>(options: &[ScoredOption<K>]) -> Vec<f64> {
    let extends = |long: &ScoredOption<K>, short: &ScoredOption<K>| {
        long.tokens.len() > short.tokens.len() && long.tokens.starts_with(&short.tokens)
    };
    options
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let total: f64 = o.logprobs.iter().sum();
            let extensions: Vec<usize> = (0..options.len())
                .filter(|&j| j != i && extends(&options[j], o))
                .collect();
            // Only direct extensions: drop one that extends another extension.
            // Several options with the same tokens count once.
            let mut direct: Vec<usize> = Vec::new();
            for &j in &extensions {
                let inside_another = extensions
                    .iter()
                    .any(|&k| k != j && extends(&options[j], &options[k]));
                let duplicate = direct
                    .iter()
                    .any(|&d| options[d].tokens == options[j].tokens);
                if !inside_another && !duplicate {
                    direct.push(j);
                }
            }
            if direct.is_empty() {
                return total;
            }
            let extended: f64 = direct
                .iter()
                .map(|&j| {
                    options[j].logprobs[o.tokens.len()..]
                        .iter()
                        .sum::<f64>()
                        .exp()
                })
                .sum();
            if extended >= 1.0 {
                f64::NEG_INFINITY
            } else {
                total + (-extended).ln_1p()
            }
        })
        .collect()
}

/// Builds a [`ChooseResponse`] from each option's scored tokens, applying the
/// prefix rule of [`exact_option_logprobs`] and recording the mass.
pub fn choose_response<K: PartialEq>(
    options: &[String],
    scored: &[ScoredOption<K>],
    usage: Usage,
) -> ChooseResponse {
    let logprobs = exact_option_logprobs(scored);
    let mass = logprobs.iter().map(|l| l.exp()).sum();
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
        mass,
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

    /// A toy model of our own whose answers are known: it writes one of
    /// `answers` (strings of one-character tokens) with the given mass and
    /// then stops; the rest of its mass goes to answers outside the options.
    /// Token log-probs are the conditionals of that prefix tree, as a backend
    /// would report them.
    fn scored_by_toy(answers: &[(&str, f64)], options: &[&str]) -> Vec<ScoredOption<char>> {
        let mass_with_prefix = |prefix: &[char]| -> f64 {
            answers
                .iter()
                .filter(|(a, _)| a.chars().collect::<Vec<_>>().starts_with(prefix))
                .map(|(_, m)| m)
                .sum()
        };
        options
            .iter()
            .map(|o| {
                let tokens: Vec<char> = o.chars().collect();
                let logprobs = (0..tokens.len())
                    .map(|i| {
                        (mass_with_prefix(&tokens[..=i]) / mass_with_prefix(&tokens[..i])).ln()
                    })
                    .collect();
                ScoredOption { tokens, logprobs }
            })
            .collect()
    }

    #[test]
    fn options_that_prefix_others_get_only_their_own_mass() {
        // "1" is a prefix of "10" and "11"; "10" of "100"; "3" is no option.
        let answers = [
            ("1", 0.30),
            ("10", 0.20),
            ("100", 0.10),
            ("11", 0.15),
            ("2", 0.15),
            ("3", 0.10),
        ];
        let options = ["1", "10", "100", "11", "2"];
        let scored = scored_by_toy(&answers, &options);
        // Without the rule, P("1") would be 0.75: every path through "1".
        assert!((scored[0].logprobs[0].exp() - 0.75).abs() < 1e-12);
        let names: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        let answer = choose_response(&names, &scored, Usage::default());
        assert!((answer.mass - 0.90).abs() < 1e-12, "mass {}", answer.mass);
        for (o, (_, m)) in answer.options.iter().zip(&answers) {
            assert!(
                (o.logprob.exp() - m).abs() < 1e-12,
                "{}: {}",
                o.text,
                o.logprob.exp()
            );
            assert!((o.prob - m / 0.90).abs() < 1e-12, "{}: {}", o.text, o.prob);
        }
    }

    #[test]
    fn random_answer_sets_are_recovered_exactly() {
        let mut rng = crate::SplitMix::new(7);
        for _ in 0..500 {
            // Up to 8 answers of 1–3 tokens over a 3-letter alphabet.
            let mut answers: Vec<(String, f64)> = Vec::new();
            for _ in 0..1 + rng.next_u64() % 8 {
                let len = 1 + rng.next_u64() % 3;
                let a: String = (0..len)
                    .map(|_| (b'a' + (rng.next_u64() % 3) as u8) as char)
                    .collect();
                if !answers.iter().any(|(b, _)| *b == a) {
                    answers.push((a, 0.05 + (rng.next_u64() % 100) as f64 / 100.0));
                }
            }
            let total: f64 = answers.iter().map(|(_, m)| m).sum();
            let refs: Vec<(&str, f64)> = answers
                .iter()
                .map(|(a, m)| (a.as_str(), m / total))
                .collect();
            let options: Vec<&str> = refs.iter().map(|(a, _)| *a).collect();
            let exact = exact_option_logprobs(&scored_by_toy(&refs, &options));
            for (lp, (a, m)) in exact.iter().zip(&refs) {
                assert!(
                    (lp.exp() - m).abs() < 1e-9,
                    "{a}: {} vs {m} in {refs:?}",
                    lp.exp()
                );
            }
        }
    }

    #[test]
    fn options_without_prefixes_keep_their_plain_sums() {
        let scored = vec![
            ScoredOption {
                tokens: vec![1u32],
                logprobs: vec![-0.5],
            },
            ScoredOption {
                tokens: vec![2, 3],
                logprobs: vec![-1.0, -0.25],
            },
        ];
        assert_eq!(exact_option_logprobs(&scored), vec![-0.5, -1.25]);
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
