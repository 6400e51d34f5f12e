//! LLM-as-judge for self-rewarding loops: sample N replies per prompt, have
//! the model grade each on an additive 0–5 rubric, parse the grade honestly
//! (an unreadable judgement is counted, never guessed), and pair the best
//! reply against the worst for DPO, skipping ties.

use qstar_core::{GenerateRequest, LanguageModel, Message, ModelError, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::mix;

use crate::prompts::Prompts;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    pub samples: usize,
    pub seed: u64,
    pub temperature: f32,
    pub max_tokens: usize,
    pub judge_tokens: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            samples: 4,
            seed: 0,
            temperature: 0.8,
            max_tokens: 128,
            judge_tokens: 160,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub response: String,
    pub judgement: String,
    /// `None` when the judgement has no readable "Score: N" with N in 0..=5.
    pub score: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedPrompt {
    pub prompt: String,
    pub samples: Vec<Judged>,
    /// Indices of the best and worst parsed samples, when they differ in score.
    pub pair: Option<(usize, usize)>,
}

/// The score a judgement ends with: the last "Score:" followed by a digit
/// 0–5. Anything else is unparsed.
pub fn parse_score(judgement: &str) -> Option<u32> {
    let at = judgement.rfind("Score:")?;
    let rest = judgement[at + "Score:".len()..].trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u32 = digits.parse().ok()?;
    (n <= 5).then_some(n)
}

pub async fn judge_prompts(
    model: &dyn LanguageModel,
    config: &JudgeConfig,
    prompts: &[(u64, String)],
) -> Result<Vec<JudgedPrompt>, ModelError> {
    judge_prompts_with(model, &Prompts::builtin(), config, prompts).await
}

/// [`judge_prompts`] with the rubric taken from the template `judge` of
/// `templates`.
pub async fn judge_prompts_with(
    model: &dyn LanguageModel,
    templates: &Prompts,
    config: &JudgeConfig,
    prompts: &[(u64, String)],
) -> Result<Vec<JudgedPrompt>, ModelError> {
    let env = templates.environment()?;
    let samples = model
        .generate(
            prompts
                .iter()
                .map(|(key, p)| {
                    let mut r = GenerateRequest::chat(
                        vec![Message::user(p.clone())],
                        SamplingParams {
                            temperature: config.temperature,
                            top_p: 0.95,
                            seed: mix(config.seed ^ mix(*key)),
                            max_tokens: config.max_tokens,
                            ..Default::default()
                        },
                    );
                    r.n = config.samples;
                    r
                })
                .collect(),
        )
        .await?;
    let cued = model.capabilities().chat_template;
    let mut requests = Vec::new();
    for ((_, p), s) in prompts.iter().zip(&samples) {
        for c in &s.completions {
            let question = env
                .get_template("judge")
                .and_then(|t| {
                    t.render(minijinja::context! { question => p, response => c.text.trim() })
                })
                .map_err(|e| ModelError::InvalidRequest(format!("judge template: {e}")))?;
            requests.push(GenerateRequest::chat(
                vec![Message::user(question)],
                SamplingParams {
                    max_tokens: config.judge_tokens,
                    // Stop where the number would come only when we cue it.
                    stop: if cued {
                        vec!["Score:".into()]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                },
            ));
        }
    }
    let mut explanations: Vec<String> = model
        .generate(requests.clone())
        .await?
        .into_iter()
        .map(|g| g.into_first_text())
        .collect();
    // With the chat template at hand, the explanation (cut at "Score:") is
    // followed by the cue "Score: " and the model writes the number itself;
    // the parse stays the same (a missing or out-of-range number is unparsed).
    if cued {
        let mut prompts = Vec::with_capacity(requests.len());
        for (r, e) in requests.iter().zip(&mut explanations) {
            e.truncate(e.trim_end().len());
            let messages = r.messages.as_deref().unwrap_or_default();
            prompts.push(GenerateRequest::new(
                model.render_chat(messages, true)? + e + "\nScore: ",
                SamplingParams {
                    max_tokens: 2,
                    ..Default::default()
                },
            ));
        }
        let numbers = model.generate(prompts).await?;
        for (e, n) in explanations.iter_mut().zip(numbers) {
            e.push_str("\nScore: ");
            e.push_str(&n.into_first_text());
        }
    }
    let mut judgements = explanations.into_iter();
    let mut out = Vec::new();
    for ((_, p), s) in prompts.iter().zip(samples) {
        let judged: Vec<Judged> = s
            .completions
            .into_iter()
            .map(|c| {
                let judgement = judgements.next().unwrap_or_default();
                Judged {
                    response: c.text.trim().to_string(),
                    score: parse_score(&judgement),
                    judgement,
                }
            })
            .collect();
        let scored: Vec<(usize, u32)> = judged
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.score.map(|s| (i, s)))
            .collect();
        let best = scored
            .iter()
            .max_by_key(|(i, s)| (*s, std::cmp::Reverse(*i)));
        let worst = scored.iter().min_by_key(|(i, s)| (*s, *i));
        let pair = match (best, worst) {
            (Some(&(b, bs)), Some(&(w, ws))) if bs > ws => Some((b, w)),
            _ => None,
        };
        out.push(JudgedPrompt {
            prompt: p.clone(),
            samples: judged,
            pair,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_parsed_honestly() {
        assert_eq!(parse_score("Good answer. Score: 4"), Some(4));
        assert_eq!(
            parse_score("Score: 2 ... on reflection, Score: 3/5"),
            Some(3)
        );
        assert_eq!(parse_score("Score: 7"), None);
        assert_eq!(parse_score("I would give it four points."), None);
        assert_eq!(parse_score("Score: five"), None);
    }
}
