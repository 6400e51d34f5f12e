//! The shape of a trainable llama: read from a GGUF model, or written by
//! hand for a tiny model trained from scratch.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Dimensions of each head that RoPE rotates (the first `n_rot`).
    pub n_rot: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    /// Longest sequence the RoPE table covers.
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// The output projection is the embedding (SmolLM2) or a matrix of its own.
    pub tied_output: bool,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim()
    }

    /// A config's numbers must fit together before any buffer is sized by them.
    pub fn check(&self) -> Result<(), String> {
        let c = self;
        if c.n_layer == 0 || c.n_embd == 0 || c.n_head == 0 || c.n_head_kv == 0 || c.n_ff == 0 {
            return Err("layers, width, heads and feed-forward width must be positive".into());
        }
        if c.n_vocab < 2 || c.context_length < 2 {
            return Err("the vocabulary and the context need at least 2 entries".into());
        }
        if !c.n_embd.is_multiple_of(c.n_head) || !c.n_head.is_multiple_of(c.n_head_kv) {
            return Err(format!(
                "{} heads must divide the width {} and be a multiple of {} KV heads",
                c.n_head, c.n_embd, c.n_head_kv
            ));
        }
        if !c.n_rot.is_multiple_of(2) || c.n_rot > c.head_dim() {
            return Err(format!(
                "RoPE must rotate an even number of dimensions, at most the head width {} (got {})",
                c.head_dim(),
                c.n_rot
            ));
        }
        let finite_positive = |x: f32| x.is_finite() && x > 0.0;
        if !finite_positive(c.rope_base - 1.0) || !finite_positive(c.rms_eps) {
            return Err("rope_base must exceed 1 and rms_eps be positive".into());
        }
        Ok(())
    }

    /// Parameters of the model (the tied output counted once).
    pub fn parameter_count(&self) -> usize {
        let (d, kv, ff) = (self.n_embd, self.kv_dim(), self.n_ff);
        let per_layer = 2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d;
        let output = if self.tied_output {
            0
        } else {
            self.n_vocab * d
        };
        self.n_layer * per_layer + self.n_vocab * d + d + output
    }

    /// From the engine's view of a GGUF model.
    pub fn from_engine(c: &qstar_engine::llama::LlamaConfig, tied_output: bool) -> Self {
        ModelConfig {
            n_layer: c.n_layer,
            n_embd: c.n_embd,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            n_rot: c.n_rot,
            n_ff: c.n_ff,
            n_vocab: c.n_vocab,
            context_length: c.context_length,
            rope_base: c.rope_base,
            rms_eps: c.rms_eps,
            tied_output,
        }
    }
}
