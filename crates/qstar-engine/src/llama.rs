//! The llama architecture (Llama 2/3, SmolLM, …), read top to bottom:
//! embedding → N × [RMSNorm → attention with RoPE and grouped KV heads →
//! residual → RMSNorm → SwiGLU MLP → residual] → RMSNorm → logits.
//!
//! One call runs several sequences at once: their new tokens are stacked into
//! one matrix for every linear layer, and only attention looks at each
//! sequence's own KV cache.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use crate::adapter::{LoraAdapter, LoraPair, Projection};
use crate::error::EngineError;
use crate::gguf::GgufFile;
use crate::kernels::{self, Activations, Linear, Weights};
use crate::numerics;

#[derive(Debug, Clone, serde::Serialize)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (the first `n_rot`).
    pub n_rot: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

impl LlamaConfig {
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Weights of the transformer layers alone (attention and MLP
    /// projections), without the embedding and the output projection: what
    /// a hidden state runs through.
    pub fn layer_parameters(&self) -> usize {
        let per_layer = 2 * self.n_embd * self.n_embd
            + 2 * self.n_embd * self.kv_dim()
            + 3 * self.n_embd * self.n_ff;
        self.n_layer * per_layer
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            return Err(EngineError::UnsupportedArchitecture(arch));
        }
        let u = |k: &str| g.uint(&format!("llama.{k}")).map(|v| v as usize);
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = if g.has("llama.attention.head_count_kv") {
            u("attention.head_count_kv")?
        } else {
            n_head
        };
        if n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(EngineError::Metadata(format!(
                "inconsistent heads: {n_head} heads, {n_head_kv} KV heads, width {n_embd}"
            )));
        }
        let head_dim = n_embd / n_head;
        let n_rot = if g.has("llama.rope.dimension_count") {
            u("rope.dimension_count")?.min(head_dim)
        } else {
            head_dim
        };
        let n_vocab = match g.tensor_info("token_embd.weight") {
            Some((_, dims)) if dims.len() == 2 => dims[0],
            _ => {
                return Err(EngineError::Metadata(
                    "missing tensor `token_embd.weight`".into(),
                ))
            }
        };
        Ok(LlamaConfig {
            n_layer: u("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            n_ff: u("feed_forward_length")?,
            n_vocab,
            context_length: u("context_length")?,
            rope_base: if g.has("llama.rope.freq_base") {
                g.float("llama.rope.freq_base")? as f32
            } else {
                10_000.0
            },
            rms_eps: if g.has("llama.attention.layer_norm_rms_epsilon") {
                g.float("llama.attention.layer_norm_rms_epsilon")? as f32
            } else {
                1e-5
            },
        })
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    /// LoRA side products, indexed by [`Projection::index`].
    lora: [Option<LoraSide>; 7],
}

/// One adapted projection: y += scale · B · (A · x), in f32, beside the
/// unchanged quantized product. A is rank × k; B is kept transposed
/// (rank × n) so each of its rows is added to y as one contiguous axpy.
struct LoraSide {
    rank: usize,
    k: usize,
    n: usize,
    scale: f32,
    a: Vec<f32>,
    b_t: Vec<f32>,
}

impl LoraSide {
    fn new(pair: &LoraPair, rank: usize, scale: f32) -> Self {
        let mut b_t = vec![0f32; rank * pair.n];
        for i in 0..pair.n {
            for j in 0..rank {
                b_t[j * pair.n + i] = pair.b[i * rank + j];
            }
        }
        LoraSide {
            rank,
            k: pair.k,
            n: pair.n,
            scale,
            a: pair.a.clone(),
            b_t,
        }
    }

    /// Rows of x (`rows × k`) into rows of y (`rows × n`): y += scale · B ·
    /// (A · x). A row of A is read once for a group of rows and Bᵀ once per
    /// row; every row sees the same operations in the same order whatever
    /// the batch.
    fn add_rows(&self, x: &[f32], y: &mut [f32]) {
        let rows = x.len() / self.k;
        let mut u = vec![0f32; rows * self.rank];
        for j in 0..self.rank {
            let a = &self.a[j * self.k..(j + 1) * self.k];
            for r in 0..rows {
                u[r * self.rank + j] = lora_dot(a, &x[r * self.k..(r + 1) * self.k]) * self.scale;
            }
        }
        for r in 0..rows {
            let ur = &u[r * self.rank..(r + 1) * self.rank];
            let yr = &mut y[r * self.n..(r + 1) * self.n];
            // 64 outputs at a time in registers, each summing B's columns
            // in order.
            let mut at = 0;
            for yc in yr.chunks_exact_mut(LORA_LANES) {
                let mut acc = [0f32; LORA_LANES];
                acc.copy_from_slice(yc);
                for (j, &uj) in ur.iter().enumerate() {
                    let b = &self.b_t[j * self.n + at..j * self.n + at + LORA_LANES];
                    for l in 0..LORA_LANES {
                        acc[l] = b[l].mul_add(uj, acc[l]);
                    }
                }
                yc.copy_from_slice(&acc);
                at += LORA_LANES;
            }
            for i in at..self.n {
                for (j, &uj) in ur.iter().enumerate() {
                    yr[i] = self.b_t[j * self.n + i].mul_add(uj, yr[i]);
                }
            }
        }
    }

    /// y (t × n) += scale · x (t × k) · Aᵀ · Bᵀ; groups of rows in parallel
    /// when there are several.
    fn add(&self, x: &[f32], t: usize, y: &mut [f32]) {
        if t < 4 {
            return self.add_rows(x, y);
        }
        let per_task = t.div_ceil(2 * rayon::current_num_threads()).clamp(2, 32);
        y.par_chunks_mut(per_task * self.n)
            .zip(x.par_chunks(per_task * self.k))
            .for_each(|(yc, xc)| self.add_rows(xc, yc));
    }
}

/// Values the LoRA products keep in flight (eight AVX2 registers).
const LORA_LANES: usize = 64;

/// A dot product with `LORA_LANES` independent sums (no reference to match:
/// the adapter's product is qstar's own).
#[inline]
fn lora_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LORA_LANES];
    let (ac, bc) = (a.chunks_exact(LORA_LANES), b.chunks_exact(LORA_LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LORA_LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut sum = 0f32;
    for chunk in acc.chunks_exact(8) {
        sum += chunk.iter().sum::<f32>();
    }
    for (x, y) in ar.iter().zip(br) {
        sum = x.mul_add(*y, sum);
    }
    sum
}

/// Adds the side product of projection `p`, when the layer has one.
#[inline]
fn lora_add(layer: &Layer, p: Projection, x: &[f32], t: usize, y: &mut [f32]) {
    if let Some(side) = &layer.lora[p.index()] {
        side.add(x, t, y);
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    embed: Linear,
    /// `None` when the output projection is tied to the embedding.
    output: Option<Linear>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos/sin of position · frequency, `context_length × n_rot/2` each.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// Keys and values of one sequence, per layer, `len × kv_dim` row-major.
#[derive(Clone, Default)]
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        KvCache {
            k: vec![Vec::new(); n_layer],
            v: vec![Vec::new(); n_layer],
            len: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.capacity() * 4).sum()
    }
}

/// One sequence's part of a forward pass.
pub struct SeqStep<'a> {
    pub kv: &'a mut KvCache,
    /// Tokens at positions `kv.len ..`.
    pub tokens: &'a [u32],
    /// Logits are returned for the new tokens from this index on.
    pub logits_from: usize,
    /// What those rows carry: logits, or the final-normed hidden states that
    /// a reward or value head reads (the vocabulary product is skipped).
    pub output: RowOutput,
}

/// What [`Llama::forward`] returns for a sequence's wanted rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowOutput {
    #[default]
    Logits,
    /// The last hidden state after the output norm, `n_embd` per row.
    Hidden,
}

fn load_linear(g: &GgufFile, name: &str) -> Result<Linear, EngineError> {
    let (dtype, dims) = g
        .tensor_info(name)
        .ok_or_else(|| EngineError::Metadata(format!("missing tensor `{name}`")))?;
    if dims.len() != 2 {
        return Err(EngineError::Metadata(format!("`{name}` is not a matrix")));
    }
    let (n, k) = (dims[0], dims[1]);
    let weights = match dtype {
        GgmlDType::Q4_1 if k % 32 == 0 => Weights::from_q4_1(&g.tensor_bytes(name)?, n, k),
        GgmlDType::Q8_0 if k % 32 == 0 => Weights::from_q8_0(&g.tensor_bytes(name)?, n, k),
        _ => Weights::Dense(g.tensor_f32(name)?),
    };
    Ok(Linear::new(n, k, weights))
}

fn load_vector(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
    let v = g.tensor_f32(name)?;
    if v.len() != len {
        return Err(EngineError::Metadata(format!(
            "`{name}` has {} values, expected {len}",
            v.len()
        )));
    }
    Ok(v)
}

impl Llama {
    pub fn load(g: &GgufFile) -> Result<Self, EngineError> {
        let config = LlamaConfig::from_gguf(g)?;
        let c = &config;
        let embed = load_linear(g, "token_embd.weight")?;
        let output = if g.tensor_info("output.weight").is_some() {
            Some(load_linear(g, "output.weight")?)
        } else {
            None
        };
        let layers = (0..c.n_layer)
            .map(|i| {
                let p = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(Layer {
                    attn_norm: load_vector(g, &p("attn_norm"), c.n_embd)?,
                    wq: load_linear(g, &p("attn_q"))?,
                    wk: load_linear(g, &p("attn_k"))?,
                    wv: load_linear(g, &p("attn_v"))?,
                    wo: load_linear(g, &p("attn_output"))?,
                    ffn_norm: load_vector(g, &p("ffn_norm"), c.n_embd)?,
                    w_gate: load_linear(g, &p("ffn_gate"))?,
                    w_up: load_linear(g, &p("ffn_up"))?,
                    w_down: load_linear(g, &p("ffn_down"))?,
                    lora: Default::default(),
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        for (i, l) in layers.iter().enumerate() {
            let ok = l.wq.n == c.n_embd
                && l.wk.n == c.kv_dim()
                && l.wv.n == c.kv_dim()
                && l.wo.n == c.n_embd
                && l.w_gate.n == c.n_ff
                && l.w_up.n == c.n_ff
                && l.w_down.k == c.n_ff;
            if !ok {
                return Err(EngineError::Metadata(format!(
                    "layer {i} has shapes that do not match the model's metadata"
                )));
            }
        }
        let output_norm = load_vector(g, "output_norm.weight", c.n_embd)?;

        let half = c.n_rot / 2;
        let mut rope_cos = Vec::with_capacity(c.context_length * half);
        let mut rope_sin = Vec::with_capacity(c.context_length * half);
        // As ggml computes it: θ_i = pos · base^(-2i/n_rot), built up by
        // repeated f32 multiplication.
        let theta_scale = c.rope_base.powf(-2.0 / c.n_rot as f32);
        for pos in 0..c.context_length {
            let mut theta = pos as f32;
            for _ in 0..half {
                rope_cos.push(theta.cos());
                rope_sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        Ok(Llama {
            config,
            embed,
            output,
            output_norm,
            layers,
            rope_cos,
            rope_sin,
        })
    }

    /// Applies a LoRA adapter as side products on top of the unchanged
    /// weights, replacing any adapter applied before (`None` removes it).
    /// Without an adapter the forward pass is exactly the base model's.
    pub fn set_adapter(&mut self, adapter: Option<&LoraAdapter>) -> Result<(), String> {
        if let Some(a) = adapter {
            a.check(&self.config)?;
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for p in Projection::ALL {
                layer.lora[p.index()] = adapter.and_then(|a| {
                    a.pairs
                        .get(&(i, p))
                        .map(|pair| LoraSide::new(pair, a.rank, a.scale()))
                });
            }
        }
        Ok(())
    }

    /// Whether an adapter is applied.
    pub fn has_adapter(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.lora.iter().any(Option::is_some))
    }

    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|w| w.bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.embed.bytes() + self.output.as_ref().map_or(0, |o| o.bytes())
    }

    /// Number of parameters (for FLOP estimates: 2 × params per token).
    pub fn parameter_count(&self) -> usize {
        let c = &self.config;
        c.layer_parameters() + c.n_vocab * c.n_embd * if self.output.is_some() { 2 } else { 1 }
    }

    /// Runs the new tokens of every sequence through the model, appending to
    /// their KV caches, and returns for each sequence the logits of the rows
    /// from `logits_from` on (`rows × n_vocab`, row-major), or their hidden
    /// states (`rows × n_embd`) when its `output` asks for those.
    pub fn forward(&self, seqs: &mut [SeqStep<'_>]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let d = c.n_embd;
        let kv_dim = c.kv_dim();
        // Which sequence and position each stacked row belongs to.
        let mut row_seq = Vec::new();
        let mut row_pos = Vec::new();
        for (s, step) in seqs.iter().enumerate() {
            for i in 0..step.tokens.len() {
                row_seq.push(s);
                row_pos.push(step.kv.len + i);
            }
        }
        let t = row_seq.len();
        let mut x = Vec::with_capacity(t * d);
        for step in seqs.iter() {
            for &tok in step.tokens {
                self.embed.row(tok as usize, &mut x);
            }
        }
        let mut h = vec![0f32; t * d];
        let mut q = vec![0f32; t * d];
        let mut k = vec![0f32; t * kv_dim];
        let mut v = vec![0f32; t * kv_dim];
        let mut att = vec![0f32; t * d];
        let mut gate = vec![0f32; t * c.n_ff];
        let mut up = vec![0f32; t * c.n_ff];

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            let input = Activations::new(&h, t);
            layer.wq.forward(&input, &mut q, false);
            layer.wk.forward(&input, &mut k, false);
            layer.wv.forward(&input, &mut v, false);
            lora_add(layer, Projection::Q, &h, t, &mut q);
            lora_add(layer, Projection::K, &h, t, &mut k);
            lora_add(layer, Projection::V, &h, t, &mut v);
            for r in 0..t {
                self.rope(&mut q[r * d..(r + 1) * d], row_pos[r]);
                self.rope(&mut k[r * kv_dim..(r + 1) * kv_dim], row_pos[r]);
            }
            let mut row = 0;
            for step in seqs.iter_mut() {
                let n = step.tokens.len();
                step.kv.k[li].extend_from_slice(&k[row * kv_dim..(row + n) * kv_dim]);
                step.kv.v[li].extend_from_slice(&v[row * kv_dim..(row + n) * kv_dim]);
                row += n;
            }
            let caches: Vec<(&[f32], &[f32])> = seqs
                .iter()
                .map(|s| (s.kv.k[li].as_slice(), s.kv.v[li].as_slice()))
                .collect();
            // One task per (row, KV head): decoding one token still uses
            // every core, and the query heads that share a KV head read its
            // cached rows once.
            let span = c.head_dim * (c.n_head / c.n_head_kv);
            att.par_chunks_mut(span).enumerate().for_each(|(i, out)| {
                let (r, kvh) = (i / c.n_head_kv, i % c.n_head_kv);
                let (kc, vc) = caches[row_seq[r]];
                let qs = &q[r * d + kvh * span..r * d + (kvh + 1) * span];
                self.attend_kv_head(qs, kvh, kc, vc, row_pos[r] + 1, out);
            });
            layer.wo.forward(&Activations::new(&att, t), &mut x, true);
            lora_add(layer, Projection::O, &att, t, &mut x);

            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            let input = Activations::new(&h, t);
            layer.w_gate.forward(&input, &mut gate, false);
            layer.w_up.forward(&input, &mut up, false);
            lora_add(layer, Projection::Gate, &h, t, &mut gate);
            lora_add(layer, Projection::Up, &h, t, &mut up);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = numerics::silu(*g) * u;
            }
            layer
                .w_down
                .forward(&Activations::new(&gate, t), &mut x, true);
            lora_add(layer, Projection::Down, &gate, t, &mut x);
        }
        for step in seqs.iter_mut() {
            step.kv.len += step.tokens.len();
        }

        // Final norm and logits only for the rows that need them; the rows
        // that want hidden states stop after the norm.
        let mut wanted = Vec::new();
        let mut per_seq_rows = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for step in seqs.iter() {
            let n = step.tokens.len();
            let from = step.logits_from.min(n);
            per_seq_rows.push((n - from, step.output));
            for r in row + from..row + n {
                wanted.extend_from_slice(&x[r * d..(r + 1) * d]);
            }
            row += n;
        }
        let mut normed = vec![0f32; wanted.len()];
        rms_norm(&wanted, &self.output_norm, c.rms_eps, &mut normed);
        // The rows that need logits, in order, through the vocabulary.
        let mut logit_input = Vec::new();
        let mut at = 0;
        for &(n, output) in &per_seq_rows {
            if output == RowOutput::Logits {
                logit_input.extend_from_slice(&normed[at * d..(at + n) * d]);
            }
            at += n;
        }
        let rows = logit_input.len() / d;
        let out = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; rows * out.n];
        if rows > 0 {
            out.forward(&Activations::new(&logit_input, rows), &mut logits, false);
        }
        let mut result = Vec::with_capacity(seqs.len());
        let (mut at_normed, mut at_logits) = (0, 0);
        for (n, output) in per_seq_rows {
            match output {
                RowOutput::Logits => {
                    result.push(logits[at_logits * out.n..(at_logits + n) * out.n].to_vec());
                    at_logits += n;
                }
                RowOutput::Hidden => {
                    result.push(normed[at_normed * d..(at_normed + n) * d].to_vec())
                }
            }
            at_normed += n;
        }
        result
    }

    /// Rotates adjacent pairs (GGUF's llama layout) of each head.
    fn rope(&self, v: &mut [f32], pos: usize) {
        let hd = self.config.head_dim;
        let half = self.config.n_rot / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in v.chunks_exact_mut(hd) {
            // ggml's x0·cos − x1·sin and x0·sin + x1·cos, with the first
            // product fused into the sum as GCC compiles them.
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a.mul_add(cos[i], -(b * sin[i]));
                head[2 * i + 1] = a.mul_add(sin[i], b * cos[i]);
            }
        }
    }

    /// Causal attention of the query heads that share KV head `kvh`
    /// (grouped-query attention), for one row over the first `len` cached
    /// positions. `qs` and `out` hold those heads one after the other. Each
    /// head's scores, softmax and weighted sum are computed exactly as for a
    /// head on its own; only the reads of the cache are shared.
    fn attend_kv_head(
        &self,
        qs: &[f32],
        kvh: usize,
        kc: &[f32],
        vc: &[f32],
        len: usize,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let kv_dim = c.kv_dim();
        let heads = qs.len() / hd;
        // Position j's slice of this KV head.
        let head = |j: usize| j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd;
        let mut scores = vec![0f32; heads * len];
        // Rows a few positions on are asked for early: each is a head's
        // slice of a longer cached row, a stride the prefetcher follows late.
        const AHEAD: usize = 4;
        for j in 0..len {
            for line in (0..hd).step_by(16) {
                let at = (j + AHEAD) * kv_dim + kvh * hd + line;
                kernels::prefetch(kc.as_ptr().wrapping_add(at));
                kernels::prefetch(vc.as_ptr().wrapping_add(at));
            }
            let k = &kc[head(j)];
            for (g, qh) in qs.chunks_exact(hd).enumerate() {
                scores[g * len + j] = numerics::dot(k, qh);
            }
        }
        for head_scores in scores.chunks_exact_mut(len) {
            numerics::softmax_scaled(head_scores, 1.0 / (hd as f32).sqrt());
        }
        numerics::weighted_sums(&scores, heads, |j| &vc[head(j)], out);
    }
}

/// RMSNorm with the mean of squares summed in f64, as ggml does.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let sum: f64 = xr.iter().map(|v| (v * v) as f64).sum();
        let inv = 1.0 / ((sum / d as f64 + eps as f64) as f32).sqrt();
        for ((o, xi), wi) in or.iter_mut().zip(xr).zip(w) {
            *o = xi * inv * wi;
        }
    }
}
