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

use crate::llama::LlamaConfig;

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

/// Why an adapter does not fit a model (the caller names the adapter).
pub type Mismatch = String;

impl Projection {
    /// (rows, columns) of this projection's weight in a model.
    pub fn shape(self, config: &LlamaConfig) -> (usize, usize) {
        let (d, q, kv, ff) = (
            config.n_embd,
            config.n_head * config.head_dim,
            config.kv_dim(),
            config.n_ff,
        );
        match self {
            Projection::Q => (q, d),
            Projection::K | Projection::V => (kv, d),
            Projection::O => (d, q),
            Projection::Gate | Projection::Up => (ff, d),
            Projection::Down => (d, ff),
        }
    }

    /// Index in [`Projection::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The block of its Hugging Face module: `self_attn` or `mlp`.
    pub fn hf_block(self) -> &'static str {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::O => "self_attn",
            Projection::Gate | Projection::Up | Projection::Down => "mlp",
        }
    }

    /// Heads whose rows llama.cpp's converter reorders (`None`: rows are
    /// stored as Hugging Face stores them).
    pub fn permuted_heads(self, config: &LlamaConfig) -> Option<usize> {
        match self {
            Projection::Q => Some(config.n_head),
            Projection::K => Some(config.n_head_kv),
            _ => None,
        }
    }
}

/// Hugging Face row of GGUF row `row` of a query or key projection with
/// heads of `head_dim` rows: within a head, GGUF row 2j + s holds HF row
/// s · head_dim/2 + j (adjacent pairs versus halves rotated by RoPE).
pub fn hf_row_of_gguf_row(row: usize, head_dim: usize) -> usize {
    let (head, within) = (row / head_dim, row % head_dim);
    let (j, s) = (within / 2, within % 2);
    head * head_dim + s * (head_dim / 2) + j
}

/// GGUF row of Hugging Face row `row` (the inverse of [`hf_row_of_gguf_row`]).
pub fn gguf_row_of_hf_row(row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (head, within) = (row / head_dim, row % head_dim);
    let (s, j) = (within / half, within % half);
    head * head_dim + 2 * j + s
}

/// `rows × cols` row-major `m` with its rows reordered: row r of the result
/// is row `source(r)` of `m`.
pub fn reorder_rows(m: &[f32], cols: usize, source: impl Fn(usize) -> usize) -> Vec<f32> {
    let rows = m.len() / cols.max(1);
    let mut out = Vec::with_capacity(m.len());
    for r in 0..rows {
        let s = source(r);
        out.extend_from_slice(&m[s * cols..(s + 1) * cols]);
    }
    out
}

impl LoraAdapter {
    /// An adapter as PEFT initializes one: A drawn uniformly from
    /// ±1/√k (seeded), B zero, so it starts as the identity update.
    pub fn init(
        config: &LlamaConfig,
        rank: usize,
        alpha: f32,
        targets: &[Projection],
        seed: u64,
    ) -> LoraAdapter {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut pairs = BTreeMap::new();
        for layer in 0..config.n_layer {
            for &p in targets {
                let (n, k) = p.shape(config);
                let bound = 1.0 / (k as f32).sqrt();
                let a = (0..rank * k).map(|_| next() * bound).collect();
                pairs.insert(
                    (layer, p),
                    LoraPair {
                        n,
                        k,
                        a,
                        b: vec![0.0; n * rank],
                    },
                );
            }
        }
        LoraAdapter {
            rank,
            alpha,
            dropout: 0.0,
            base_model: String::new(),
            pairs,
        }
    }

    /// The projections the adapter changes in some layer, in order.
    pub fn targets(&self) -> Vec<Projection> {
        let mut t: Vec<Projection> = self.pairs.keys().map(|&(_, p)| p).collect();
        t.sort();
        t.dedup();
        t
    }

    /// Checks rank, scale, layers and every pair's shapes against a model.
    pub fn check(&self, config: &LlamaConfig) -> Result<(), Mismatch> {
        if self.rank == 0 {
            return Err("its rank is 0".into());
        }
        if !self.alpha.is_finite() {
            return Err(format!("its alpha {} is not a finite number", self.alpha));
        }
        if self.pairs.is_empty() {
            return Err("it adapts no projection".into());
        }
        for (&(layer, p), pair) in &self.pairs {
            let name = format!("layer {layer} {}", p.hf_name());
            if layer >= config.n_layer {
                return Err(format!(
                    "it adapts {name}, but the model has {} layers",
                    config.n_layer
                ));
            }
            let (n, k) = p.shape(config);
            if (pair.n, pair.k) != (n, k) {
                return Err(format!(
                    "{name} is {}×{}, but the model's projection is {n}×{k}",
                    pair.n, pair.k
                ));
            }
            if pair.a.len() != self.rank * k || pair.b.len() != n * self.rank {
                return Err(format!(
                    "{name}: A has {} values and B {}, expected {}×{k} and {n}×{}",
                    pair.a.len(),
                    pair.b.len(),
                    self.rank,
                    self.rank
                ));
            }
            if !pair.a.iter().chain(&pair.b).all(|v| v.is_finite()) {
                return Err(format!("{name} holds a value that is not finite"));
            }
        }
        Ok(())
    }

    /// Adds scale · B · A to `w`, the n × k row-major weight (GGUF row order)
    /// of `p` in `layer`; false when the adapter leaves it unchanged.
    pub fn add_delta(&self, layer: usize, p: Projection, w: &mut [f32]) -> bool {
        let Some(pair) = self.pairs.get(&(layer, p)) else {
            return false;
        };
        let (r, k) = (self.rank, pair.k);
        let scale = self.scale() as f64;
        for (i, row) in w.chunks_exact_mut(k).take(pair.n).enumerate() {
            let b = &pair.b[i * r..(i + 1) * r];
            for (c, wv) in row.iter_mut().enumerate() {
                let mut sum = 0f64;
                for j in 0..r {
                    sum += b[j] as f64 * pair.a[j * k + c] as f64;
                }
                *wv = (*wv as f64 + scale * sum) as f32;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_orders_are_inverse_permutations() {
        for hd in [2, 8, 64] {
            let n = 3 * hd;
            let mut seen = vec![false; n];
            for r in 0..n {
                let h = hf_row_of_gguf_row(r, hd);
                assert_eq!(gguf_row_of_hf_row(h, hd), r);
                assert!(!seen[h]);
                seen[h] = true;
            }
        }
        // Head 1 of 8 rows: GGUF rows 8..16 are HF rows 8, 12, 9, 13, ….
        let got: Vec<usize> = (8..16).map(|r| hf_row_of_gguf_row(r, 8)).collect();
        assert_eq!(got, [8, 12, 9, 13, 10, 14, 11, 15]);
    }
}
