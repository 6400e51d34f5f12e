//! The engine actor: one thread owns the model and serves every caller.
//!
//! Callers send jobs over a channel and await their answers. Between forward
//! passes the actor takes in new jobs, so concurrent callers share batches
//! (continuous batching). Each job becomes one or more sequences; a step
//! stacks every sequence's pending tokens (a prompt chunk, or one token when
//! decoding) into one forward pass.
//!
//! Prefix reuse: when a sequence is admitted, the leading blocks of its tokens
//! that the prefix cache holds are copied in instead of computed. A sequence
//! whose next uncomputed block is being computed right now by another
//! sequence waits for it, so N samples of one prompt, the options of one
//! question, or prompts sharing an instruction compute the shared part once.

mod actor;
mod handle;
mod job;
mod seq;
#[cfg(test)]
mod tests;

use serde::Serialize;

pub use handle::Engine;

/// Receives `(sample index, token id)` for each token a generation samples,
/// as it is sampled (see [`Engine::generate_with_progress`]).
pub type TokenSink = tokio::sync::mpsc::UnboundedSender<(usize, u32)>;

/// How the engine runs. Defaults suit a laptop.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineOptions {
    /// Worker threads for the matrix products (0: one per core).
    pub threads: usize,
    pub prefix_cache: bool,
    /// Memory bound of the prefix cache.
    pub prefix_cache_mb: usize,
    /// Tokens per forward pass; longer prompts are processed in chunks.
    pub max_batch_tokens: usize,
    /// Sequences decoded together.
    pub max_sequences: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 0,
            prefix_cache: true,
            prefix_cache_mb: 512,
            max_batch_tokens: 512,
            max_sequences: 64,
        }
    }
}

/// A text's last hidden state: the row after the output norm at its last
/// token (`n_embd` values), which reward and value heads read.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub hidden: Vec<f32>,
    pub usage: qstar_core::Usage,
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EngineStats {
    pub prompt_tokens_computed: usize,
    pub prompt_tokens_reused: usize,
    pub tokens_generated: usize,
    pub forward_passes: usize,
    pub prefix_cache_bytes: usize,
    /// Jobs dropped because their caller stopped waiting.
    pub jobs_cancelled: usize,
    /// Sequences in the engine now (decoding or prefilling, and queued).
    pub sequences_active: usize,
    pub sequences_waiting: usize,
}
