//! Jobs: what callers ask for, where the answer goes, and how a failure
//! inside the engine becomes one job's error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use qstar_core::{
    ChooseRequest, ChooseResponse, Completion, GenerateRequest, GenerateResponse, ModelError,
    ScoreRequest, ScoreResponse, ScoredOption, TopLogprob, Usage,
};
use tokio::sync::oneshot;

use super::{Embedding, EngineStats, TokenSink};

/// Where a job's answer goes. Dropped without an answer (the actor lost the
/// job to a bug it recovered from), it still answers: with an error, so a
/// caller never waits forever.
pub(super) struct Reply<T>(Option<oneshot::Sender<Result<T, ModelError>>>);

impl<T> Reply<T> {
    pub(super) fn new(tx: oneshot::Sender<Result<T, ModelError>>) -> Self {
        Reply(Some(tx))
    }

    #[allow(clippy::result_large_err)]
    pub(super) fn send(
        mut self,
        answer: Result<T, ModelError>,
    ) -> Result<(), Result<T, ModelError>> {
        match self.0.take() {
            Some(tx) => tx.send(answer),
            None => Ok(()),
        }
    }

    /// Whether the caller stopped waiting (its future was dropped: a client
    /// that disconnected), so the work would go nowhere.
    pub(super) fn is_abandoned(&self) -> bool {
        self.0.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(internal_error(
                "the request was lost after an internal error",
            )));
        }
    }
}

/// An error of the engine itself (a bug), not of the request.
pub(super) fn internal_error(reason: &str) -> ModelError {
    ModelError::Backend {
        backend: "embedded".into(),
        message: format!("internal error while serving this request: {reason}"),
    }
}

/// The message a panic carried.
pub(super) fn panic_reason(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Runs `f`; a panic inside becomes an error carrying its message. The actor
/// state `f` touches must be left consistent by the caller's recovery.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_reason(p.as_ref()))
}

pub(super) enum Job {
    Generate(GenerateRequest, Reply<GenerateResponse>),
    /// A generation whose tokens also go to the sink as they are sampled.
    GenerateWithProgress(GenerateRequest, Reply<GenerateResponse>, TokenSink),
    /// Scoring, with this many alternatives per scored token (0: none).
    Score(ScoreRequest, usize, Reply<ScoreResponse>),
    Choose(ChooseRequest, Reply<ChooseResponse>),
    /// The final hidden state of a text's last token.
    Embed(String, Reply<Embedding>),
    Stats(oneshot::Sender<EngineStats>),
    SetPrefixCache(bool, oneshot::Sender<()>),
}

pub(super) enum JobState {
    Generate {
        reply: Reply<GenerateResponse>,
        completions: Vec<Option<Completion>>,
    },
    Score {
        reply: Reply<ScoreResponse>,
        ids: Vec<u32>,
        /// Whether the first continuation token has nothing before it.
        first_unconditioned: bool,
        /// Log-prob of each conditioned token, filled when the sequence ends.
        logprobs: Vec<f32>,
        /// The own token's rank and the most likely tokens at each
        /// conditioned position, when asked.
        tops: Vec<(u32, Vec<TopLogprob>)>,
    },
    Embed {
        reply: Reply<Embedding>,
        hidden: Vec<f32>,
    },
    Choose {
        reply: Reply<ChooseResponse>,
        options: Vec<String>,
        /// Each option's tokens and their log-probs, filled in as the
        /// prompt's sequence (first tokens) and the options' sequences finish.
        scored: Vec<ScoredOption<u32>>,
    },
}

impl JobState {
    /// Whether nobody waits for this job's answer any more.
    pub(super) fn is_abandoned(&self) -> bool {
        match self {
            JobState::Generate { reply, .. } => reply.is_abandoned(),
            JobState::Score { reply, .. } => reply.is_abandoned(),
            JobState::Choose { reply, .. } => reply.is_abandoned(),
            JobState::Embed { reply, .. } => reply.is_abandoned(),
        }
    }

    /// Answers the job with an error instead of its result.
    pub(super) fn fail(self, error: ModelError) {
        let _ = match self {
            JobState::Generate { reply, .. } => reply.send(Err(error)).map_err(drop),
            JobState::Score { reply, .. } => reply.send(Err(error)).map_err(drop),
            JobState::Choose { reply, .. } => reply.send(Err(error)).map_err(drop),
            JobState::Embed { reply, .. } => reply.send(Err(error)).map_err(drop),
        };
    }
}

pub(super) struct PendingJob {
    pub(super) state: JobState,
    pub(super) remaining: usize,
    pub(super) usage: Usage,
}

/// Tag of a choose job's prompt-only sequence (options use their index).
pub(super) const PROMPT_TAG: usize = usize::MAX;
