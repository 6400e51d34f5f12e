//! Critique → revision (the supervised stage of Constitutional AI): sample a
//! reply, then for each round draw a critique/revision request pair, let the
//! model critique its reply and rewrite it. The final revision becomes an
//! SFT example; the whole chain is kept for inspection.

use qstar_core::{GenerateRequest, LanguageModel, Message, ModelError, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::mix;

use crate::constitution::Constitution;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviseConfig {
    pub rounds: usize,
    pub seed: u64,
    pub temperature: f32,
    pub max_tokens: usize,
}

impl Default for ReviseConfig {
    fn default() -> Self {
        ReviseConfig {
            rounds: 1,
            seed: 0,
            temperature: 0.7,
            max_tokens: 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub critique_request: String,
    pub critique: String,
    pub revision_request: String,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub prompt: String,
    pub initial: String,
    pub rounds: Vec<Round>,
}

impl Revision {
    pub fn final_reply(&self) -> &str {
        self.rounds.last().map_or(&self.initial, |r| &r.revision)
    }
}

/// Runs critique→revision for a batch of prompts; each step of all prompts
/// goes to the model together. `keys` seed each prompt's draws.
pub async fn critique_and_revise(
    model: &dyn LanguageModel,
    constitution: &Constitution,
    config: &ReviseConfig,
    prompts: &[(u64, String)],
) -> Result<Vec<Revision>, ModelError> {
    if constitution.critiques.is_empty() {
        return Err(ModelError::InvalidRequest(
            "the constitution has no critique/revision pairs".into(),
        ));
    }
    let params = |key: u64, step: u64| SamplingParams {
        temperature: config.temperature,
        top_p: 0.95,
        seed: mix(config.seed ^ mix(key) ^ step),
        max_tokens: config.max_tokens,
        ..Default::default()
    };
    let ask = |conversations: Vec<Vec<Message>>, step: u64| {
        let requests: Vec<GenerateRequest> = conversations
            .into_iter()
            .zip(prompts)
            .map(|(c, (key, _))| GenerateRequest::chat(c, params(*key, step)))
            .collect();
        async move {
            let answers = model.generate(requests).await?;
            Ok::<Vec<String>, ModelError>(
                answers
                    .into_iter()
                    .map(|a| a.into_first_text().trim().to_string())
                    .collect(),
            )
        }
    };
    let initial = ask(
        prompts
            .iter()
            .map(|(_, p)| vec![Message::user(p.clone())])
            .collect(),
        0,
    )
    .await?;
    let mut revisions: Vec<Revision> = prompts
        .iter()
        .zip(initial)
        .map(|((_, p), r)| Revision {
            prompt: p.clone(),
            initial: r,
            rounds: Vec::new(),
        })
        .collect();
    for round in 0..config.rounds {
        let picks: Vec<usize> = prompts
            .iter()
            .map(|(key, _)| {
                (mix(config.seed ^ mix(*key) ^ (round as u64 + 1) << 32)
                    % constitution.critiques.len() as u64) as usize
            })
            .collect();
        let base = |r: &Revision| {
            vec![
                Message::user(r.prompt.clone()),
                Message::assistant(r.final_reply().to_string()),
            ]
        };
        let critique_convs: Vec<Vec<Message>> = revisions
            .iter()
            .zip(&picks)
            .map(|(r, &k)| {
                let mut c = base(r);
                c.push(Message::user(constitution.critiques[k].critique.clone()));
                c
            })
            .collect();
        let critiques = ask(critique_convs.clone(), 2 * round as u64 + 1).await?;
        let revision_convs: Vec<Vec<Message>> = critique_convs
            .into_iter()
            .zip(&critiques)
            .zip(&picks)
            .map(|((mut c, crit), &k)| {
                c.push(Message::assistant(crit.clone()));
                c.push(Message::user(constitution.critiques[k].revision.clone()));
                c
            })
            .collect();
        let rewrites = ask(revision_convs, 2 * round as u64 + 2).await?;
        for (((rev, crit), rewrite), &k) in revisions
            .iter_mut()
            .zip(critiques)
            .zip(rewrites)
            .zip(&picks)
        {
            rev.rounds.push(Round {
                critique_request: constitution.critiques[k].critique.clone(),
                critique: crit,
                revision_request: constitution.critiques[k].revision.clone(),
                revision: rewrite,
            });
        }
    }
    Ok(revisions)
}
