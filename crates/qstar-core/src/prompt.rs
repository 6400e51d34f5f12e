//! How a question reaches a model: through its chat template, or as plain
//! "Human:/Assistant:" text for servers that do not apply one.

use serde::{Deserialize, Serialize};

use crate::{LanguageModel, Message, ModelError};

/// How the question reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// The model's chat template, then "The answer is (" as the reply.
    Chat,
    /// Plain "Human: … Assistant: The answer is (" text.
    Plain,
}

impl PromptFormat {
    /// Fails early when the backend cannot render this format.
    pub fn check(self, model: &dyn LanguageModel, purpose: &str) -> Result<(), ModelError> {
        if self == PromptFormat::Chat && !model.capabilities().chat_template {
            return Err(ModelError::Unsupported {
                backend: model.backend_name(),
                capability: format!(
                    "a chat template for {purpose} prompts (use the plain prompt format)"
                ),
            });
        }
        Ok(())
    }

    /// Puts a question to the model, with `cue` as the start of its reply.
    pub fn frame(
        self,
        model: &dyn LanguageModel,
        question: &str,
        cue: &str,
    ) -> Result<String, ModelError> {
        Ok(match self {
            PromptFormat::Chat => model.render_chat(&[Message::user(question)], true)? + cue,
            PromptFormat::Plain => format!("Human: {}\n\nAssistant: {cue}", question.trim_end()),
        })
    }
}
