//! A model that counts what passes through it, for the endpoints whose work
//! is several engine calls made by a library routine (`/v1/judge`,
//! `/v1/rate`, d-RLAIF `/get_reward`): their token counts then reach the
//! request log, the metrics and the answer's `usage`, as the completions'
//! do, instead of being reported as none.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use qstar_core::{
    Capabilities, ChooseRequest, ChooseResponse, GenerateRequest, GenerateResponse, LanguageModel,
    Message, ModelError, ScoreRequest, ScoreResponse, Usage,
};

pub struct Tally<'a> {
    inner: &'a dyn LanguageModel,
    usage: Mutex<Usage>,
}

impl<'a> Tally<'a> {
    pub fn new(inner: &'a dyn LanguageModel) -> Self {
        Tally {
            inner,
            usage: Mutex::new(Usage::default()),
        }
    }

    /// Everything counted so far.
    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add<'u>(&self, usages: impl Iterator<Item = &'u Usage>) {
        // A panic elsewhere while holding the lock leaves whole counts.
        let mut total = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        for u in usages {
            total.add(u);
        }
    }
}

#[async_trait]
impl LanguageModel for Tally<'_> {
    fn backend_name(&self) -> String {
        self.inner.backend_name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<Vec<GenerateResponse>, ModelError> {
        let answers = self.inner.generate(requests).await?;
        self.add(answers.iter().map(|a| &a.usage));
        Ok(answers)
    }

    async fn score(&self, requests: Vec<ScoreRequest>) -> Result<Vec<ScoreResponse>, ModelError> {
        let answers = self.inner.score(requests).await?;
        self.add(answers.iter().map(|a| &a.usage));
        Ok(answers)
    }

    async fn choose(
        &self,
        requests: Vec<ChooseRequest>,
    ) -> Result<Vec<ChooseResponse>, ModelError> {
        let answers = self.inner.choose(requests).await?;
        self.add(answers.iter().map(|a| &a.usage));
        Ok(answers)
    }

    fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.inner.render_chat(messages, add_generation_prompt)
    }
}
