//! LoRA adapters: the low-rank updates a training run produces, in memory.
//!
//! A projection W (n × k, GGUF row order) becomes W + (alpha / rank) · B · A,
//! with A of shape rank × k and B of shape n × rank, both row-major f32.
//!
//! Rows are kept in the order of the GGUF file the engine and the trainer
//! read. llama.cpp's converter permutes the rows of the query and key
//! projections so that RoPE rotates adjacent pairs; Hugging Face checkpoints
//! (and so PEFT adapters) rotate the two halves of each head instead. The
//! PEFT reader and writer translate between the two orders; nothing else
//! needs to know.

use std::collections::BTreeMap;

/// The seven projections of a llama block that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// The module's name in Hugging Face's Llama (PEFT's `target_modules`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::Down => "down_proj",
        }
    }

    /// The tensor's name in a GGUF file, without `blk.{i}.` and `.weight`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Projection::Q => "attn_q",
            Projection::K => "attn_k",
            Projection::V => "attn_v",
            Projection::O => "attn_output",
            Projection::Gate => "ffn_gate",
            Projection::Up => "ffn_up",
            Projection::Down => "ffn_down",
        }
    }

    pub fn from_hf_name(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.hf_name() == name)
    }
}

/// One adapted projection: `a` is rank × k, `b` is n × rank (GGUF row order).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    pub n: usize,
    pub k: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    pub rank: usize,
    pub alpha: f32,
    /// Dropout used in training (kept for the PEFT config; inference ignores it).
    pub dropout: f32,
    /// What PEFT's `base_model_name_or_path` says.
    pub base_model: String,
    /// Keyed by (layer, projection).
    pub pairs: BTreeMap<(usize, Projection), LoraPair>,
}

impl LoraAdapter {
    /// The factor in front of B · A.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}
