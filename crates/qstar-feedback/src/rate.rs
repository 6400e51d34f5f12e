//! Direct RLAIF (d-RLAIF): the model rates one reply from 1 to 10; the
//! exact distribution over the ten answers ("10" may span several tokens)
//! gives an expected score, mapped linearly to a reward in [-1, 1].

use minijinja::Environment;
use qstar_core::{ChooseRequest, LanguageModel, Message, ModelError};
use serde::{Deserialize, Serialize};

use qstar_core::PromptFormat;

use crate::prompts::Prompts;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// P(score = k) for k = 1..=10.
    pub distribution: Vec<f64>,
    pub expected_score: f64,
    /// (expected score − 5.5) / 4.5, in [-1, 1].
    pub reward: f64,
    /// Probability mass the model put on the ten answers before
    /// normalization (`None` when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_mass: Option<f64>,
}

pub struct Rater<'a> {
    model: &'a dyn LanguageModel,
    format: PromptFormat,
    env: Environment<'static>,
}

impl<'a> Rater<'a> {
    pub fn new(model: &'a dyn LanguageModel, format: PromptFormat) -> Result<Self, ModelError> {
        Self::with_prompts(model, format, &Prompts::builtin())
    }

    /// A rater whose question is the template `rate` of `prompts`.
    pub fn with_prompts(
        model: &'a dyn LanguageModel,
        format: PromptFormat,
        prompts: &Prompts,
    ) -> Result<Self, ModelError> {
        format.check(model, "rating")?;
        Ok(Rater {
            model,
            format,
            env: prompts.environment()?,
        })
    }

    /// The question for one reply, framed up to where the model answers.
    pub fn prompt(&self, conversation: &[Message], reply: &str) -> Result<String, ModelError> {
        let question = self
            .env
            .get_template("rate")
            .and_then(|t| {
                t.render(minijinja::context! { conversation => conversation, reply => reply })
            })
            .map_err(|e| ModelError::InvalidRequest(format!("rating template: {e}")))?;
        let cue = "Rating: ";
        self.format.frame(self.model, &question, cue)
    }

    /// Rates each (conversation, reply); all questions go to the model at once.
    pub async fn rate(&self, items: &[(&[Message], &str)]) -> Result<Vec<Rating>, ModelError> {
        let options: Vec<String> = (1..=10).map(|k| k.to_string()).collect();
        let requests = items
            .iter()
            .map(|(conv, reply)| {
                Ok(ChooseRequest {
                    prompt: self.prompt(conv, reply)?,
                    options: options.clone(),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let answers = self.model.choose(requests).await?;
        Ok(answers
            .into_iter()
            .map(|a| Rating {
                option_mass: Some(a.mass),
                ..rating_from(a.options.iter().map(|o| o.prob).collect())
            })
            .collect())
    }
}

/// Expected score and reward of a distribution over the scores 1..=10.
pub fn rating_from(distribution: Vec<f64>) -> Rating {
    let expected_score: f64 = distribution
        .iter()
        .enumerate()
        .map(|(i, p)| (i + 1) as f64 * p)
        .sum();
    Rating {
        reward: (expected_score - 5.5) / 4.5,
        expected_score,
        distribution,
        option_mass: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_span_minus_one_to_one() {
        let mut all_one = vec![0.0; 10];
        all_one[0] = 1.0;
        assert!((rating_from(all_one).reward + 1.0).abs() < 1e-12);
        let mut all_ten = vec![0.0; 10];
        all_ten[9] = 1.0;
        assert!((rating_from(all_ten).reward - 1.0).abs() < 1e-12);
        let uniform = rating_from(vec![0.1; 10]);
        assert!((uniform.expected_score - 5.5).abs() < 1e-12 && uniform.reward.abs() < 1e-12);
    }
}
