//! The tensors of a llama, named as in a GGUF file, and the LoRA adapters
//! that can sit on its projections. The same structs hold parameters and
//! their gradients.

use std::collections::BTreeMap;
use std::path::Path;

use qstar_engine::adapter::Projection;
use qstar_engine::gguf::GgufFile;
use qstar_engine::EngineError;

use crate::config::ModelConfig;
use crate::real::Real;
use crate::rng::SplitMix;

/// One block's tensors; matrices are n × k row-major, one row per output.
/// The projections that read the same input are stored stacked by rows
/// (query, key and value; gate and up), so each group is one matrix
/// product forward and one backward; `projection` gives each one's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights<T> {
    pub attn_norm: Vec<T>,
    /// [W_q; W_k; W_v]: (d + 2·kv) × d.
    pub wqkv: Vec<T>,
    pub wo: Vec<T>,
    pub ffn_norm: Vec<T>,
    /// [W_gate; W_up]: 2·ff × d.
    pub w_gate_up: Vec<T>,
    pub w_down: Vec<T>,
}

impl<T: Real> LayerWeights<T> {
    /// (d, kv, ff) from the tensors' sizes.
    fn widths(&self) -> (usize, usize, usize) {
        let d = self.attn_norm.len();
        let kv = (self.wqkv.len() / d - d) / 2;
        (d, kv, self.w_gate_up.len() / d / 2)
    }

    /// Where projection p's rows sit in its group's matrix.
    fn range(&self, p: Projection) -> std::ops::Range<usize> {
        let (d, kv, ff) = self.widths();
        match p {
            Projection::Q => 0..d * d,
            Projection::K => d * d..(d + kv) * d,
            Projection::V => (d + kv) * d..(d + 2 * kv) * d,
            Projection::Gate => 0..ff * d,
            Projection::Up => ff * d..2 * ff * d,
            Projection::O | Projection::Down => 0..self.group(p).len(),
        }
    }

    fn group(&self, p: Projection) -> &[T] {
        match p {
            Projection::Q | Projection::K | Projection::V => &self.wqkv,
            Projection::O => &self.wo,
            Projection::Gate | Projection::Up => &self.w_gate_up,
            Projection::Down => &self.w_down,
        }
    }

    pub fn projection(&self, p: Projection) -> &[T] {
        &self.group(p)[self.range(p)]
    }

    pub fn projection_mut(&mut self, p: Projection) -> &mut [T] {
        let range = self.range(p);
        match p {
            Projection::Q | Projection::K | Projection::V => &mut self.wqkv[range],
            Projection::O => &mut self.wo[range],
            Projection::Gate | Projection::Up => &mut self.w_gate_up[range],
            Projection::Down => &mut self.w_down[range],
        }
    }
}

/// (outputs n, inputs k) of a projection.
pub fn projection_shape(c: &ModelConfig, p: Projection) -> (usize, usize) {
    let (d, kv, ff) = (c.n_embd, c.kv_dim(), c.n_ff);
    match p {
        Projection::Q | Projection::O => (d, d),
        Projection::K | Projection::V => (kv, d),
        Projection::Gate | Projection::Up => (ff, d),
        Projection::Down => (d, ff),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Weights<T> {
    pub embed: Vec<T>,
    pub layers: Vec<LayerWeights<T>>,
    pub output_norm: Vec<T>,
    /// `None` when the output projection is the embedding.
    pub output: Option<Vec<T>>,
}

impl<T: Real> Weights<T> {
    pub fn zeros(c: &ModelConfig) -> Self {
        let z = |n: usize| vec![T::ZERO; n];
        let layer = |_| {
            let sized = |p| {
                let (n, k) = projection_shape(c, p);
                z(n * k)
            };
            LayerWeights {
                attn_norm: z(c.n_embd),
                wqkv: z((c.n_embd + 2 * c.kv_dim()) * c.n_embd),
                wo: sized(Projection::O),
                ffn_norm: z(c.n_embd),
                w_gate_up: z(2 * c.n_ff * c.n_embd),
                w_down: sized(Projection::Down),
            }
        };
        Weights {
            embed: z(c.n_vocab * c.n_embd),
            layers: (0..c.n_layer).map(layer).collect(),
            output_norm: z(c.n_embd),
            output: (!c.tied_output).then(|| z(c.n_vocab * c.n_embd)),
        }
    }

    /// A model to train from scratch: norms at 1, matrices N(0, 0.02²)
    /// (GPT-2's scheme, with the residual projections scaled by 1/√(2L)).
    pub fn init(c: &ModelConfig, seed: u64) -> Self {
        let mut w = Weights::zeros(c);
        let mut rng = SplitMix::new(seed);
        let residual = 0.02 / (2.0 * c.n_layer as f64).sqrt();
        for (name, _, t) in w.tensors_mut() {
            if name.ends_with("norm.weight") {
                t.fill(T::ONE);
            } else {
                let std =
                    if name.ends_with("attn_output.weight") || name.ends_with("ffn_down.weight") {
                        residual
                    } else {
                        0.02
                    };
                for x in t.iter_mut() {
                    *x = T::from_f64(rng.normal() * std);
                }
            }
        }
        w
    }

    /// Every tensor with its GGUF name and shape (rows, columns).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        let mut out = Vec::new();
        let d = self.output_norm.len();
        out.push((
            "token_embd.weight".to_string(),
            vec![self.embed.len() / d, d],
            &self.embed[..],
        ));
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            out.push((p("attn_norm"), vec![d], &l.attn_norm[..]));
            out.push((p("ffn_norm"), vec![d], &l.ffn_norm[..]));
            for proj in Projection::ALL {
                let m = l.projection(proj);
                let k = if proj == Projection::Down {
                    m.len() / d
                } else {
                    d
                };
                out.push((p(proj.gguf_name()), vec![m.len() / k, k], m));
            }
        }
        out.push((
            "output_norm.weight".to_string(),
            vec![d],
            &self.output_norm[..],
        ));
        if let Some(o) = &self.output {
            out.push(("output.weight".to_string(), vec![o.len() / d, d], &o[..]));
        }
        out
    }

    pub fn tensors_mut(&mut self) -> Vec<(String, Vec<usize>, &mut [T])> {
        let d = self.output_norm.len();
        let mut out = Vec::new();
        let rows = self.embed.len() / d;
        out.push((
            "token_embd.weight".to_string(),
            vec![rows, d],
            &mut self.embed[..],
        ));
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let (_, kv, ff) = l.widths();
            out.push((p("attn_norm"), vec![d], &mut l.attn_norm[..]));
            out.push((p("ffn_norm"), vec![d], &mut l.ffn_norm[..]));
            let (q, rest) = l.wqkv.split_at_mut(d * d);
            let (k, v) = rest.split_at_mut(kv * d);
            out.push((p("attn_q"), vec![d, d], q));
            out.push((p("attn_k"), vec![kv, d], k));
            out.push((p("attn_v"), vec![kv, d], v));
            out.push((p("attn_output"), vec![d, d], &mut l.wo[..]));
            let (gate, up) = l.w_gate_up.split_at_mut(ff * d);
            out.push((p("ffn_gate"), vec![ff, d], gate));
            out.push((p("ffn_up"), vec![ff, d], up));
            out.push((p("ffn_down"), vec![d, ff], &mut l.w_down[..]));
        }
        out.push((
            "output_norm.weight".to_string(),
            vec![d],
            &mut self.output_norm[..],
        ));
        if let Some(o) = &mut self.output {
            let rows = o.len() / d;
            out.push(("output.weight".to_string(), vec![rows, d], &mut o[..]));
        }
        out
    }

    pub fn fill_zero(&mut self) {
        for (_, _, t) in self.tensors_mut() {
            t.fill(T::ZERO);
        }
    }
}

impl Weights<f32> {
    /// The model of a GGUF file, every tensor dequantized to f32.
    pub fn from_gguf(path: &Path) -> Result<(ModelConfig, Self), EngineError> {
        let g = GgufFile::open(path).map_err(|e| e.in_file(path))?;
        let engine_config = qstar_engine::llama::LlamaConfig::from_gguf(&g)?;
        let tied = g.tensor_info("output.weight").is_none();
        let c = ModelConfig::from_engine(&engine_config, tied);
        c.check().map_err(EngineError::Metadata)?;
        let mut w = Weights::zeros(&c);
        for (name, shape, t) in w.tensors_mut() {
            let values = g.tensor_f32(&name)?;
            if values.len() != t.len() {
                return Err(EngineError::Metadata(format!(
                    "`{name}` has {} values, expected {:?}",
                    values.len(),
                    shape
                ))
                .in_file(path));
            }
            t.copy_from_slice(&values);
        }
        Ok((c, w))
    }
}

/// Which projections get adapters, and their rank, scale and dropout.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn projections(&self) -> Result<Vec<Projection>, String> {
        self.targets
            .iter()
            .map(|t| {
                Projection::from_hf_name(t)
                    .or_else(|| Projection::ALL.into_iter().find(|p| p.gguf_name() == t))
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            Projection::ALL.iter().map(|p| p.hf_name()).collect();
                        format!("unknown LoRA target {t:?}: use {}", names.join(", "))
                    })
            })
            .collect()
    }

    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// A (rank × k) and B (n × rank) of one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair<T> {
    pub a: Vec<T>,
    pub b: Vec<T>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lora<T> {
    pub config: LoraConfig,
    /// One map per layer.
    pub layers: Vec<BTreeMap<Projection, LoraPair<T>>>,
}

impl<T: Real> Lora<T> {
    /// PEFT's initialization: A uniform in ±1/√k (Kaiming with a = √5), B
    /// zero, so training starts from the base model exactly.
    pub fn init(c: &ModelConfig, config: LoraConfig, seed: u64) -> Result<Self, String> {
        if config.rank == 0 {
            return Err("the LoRA rank must be positive".into());
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err("LoRA dropout must be in [0, 1)".into());
        }
        let targets = config.projections()?;
        if targets.is_empty() {
            return Err("LoRA needs at least one target projection".into());
        }
        let mut rng = SplitMix::new(seed);
        let layers = (0..c.n_layer)
            .map(|_| {
                targets
                    .iter()
                    .map(|&p| {
                        let (n, k) = projection_shape(c, p);
                        let bound = 1.0 / (k as f64).sqrt();
                        let a = (0..config.rank * k)
                            .map(|_| T::from_f64((rng.uniform() * 2.0 - 1.0) * bound))
                            .collect();
                        (
                            p,
                            LoraPair {
                                a,
                                b: vec![T::ZERO; n * config.rank],
                            },
                        )
                    })
                    .collect()
            })
            .collect();
        Ok(Lora { config, layers })
    }

    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        z.fill_zero();
        z
    }

    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        let r = self.config.rank;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (p, pair) in l {
                let name = |m: &str| format!("blk.{i}.{}.lora_{m}", p.gguf_name());
                out.push((name("a"), vec![r, pair.a.len() / r], &pair.a[..]));
                out.push((name("b"), vec![pair.b.len() / r, r], &pair.b[..]));
            }
        }
        out
    }

    pub fn tensors_mut(&mut self) -> Vec<(String, Vec<usize>, &mut [T])> {
        let r = self.config.rank;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            for (p, pair) in l.iter_mut() {
                let (ka, nb) = (pair.a.len() / r, pair.b.len() / r);
                out.push((
                    format!("blk.{i}.{}.lora_a", p.gguf_name()),
                    vec![r, ka],
                    &mut pair.a[..],
                ));
                out.push((
                    format!("blk.{i}.{}.lora_b", p.gguf_name()),
                    vec![nb, r],
                    &mut pair.b[..],
                ));
            }
        }
        out
    }

    pub fn fill_zero(&mut self) {
        for (_, _, t) in self.tensors_mut() {
            t.fill(T::ZERO);
        }
    }
}

impl Lora<f32> {
    /// An adapter read from a file, to train further (its rank, alpha and
    /// targets are the adapter's; `dropout` is this run's).
    pub fn from_adapter(
        c: &ModelConfig,
        adapter: &qstar_engine::adapter::LoraAdapter,
        dropout: f32,
    ) -> Result<Self, String> {
        let mut targets: Vec<Projection> = adapter.pairs.keys().map(|&(_, p)| p).collect();
        targets.sort();
        targets.dedup();
        let config = LoraConfig {
            rank: adapter.rank,
            alpha: adapter.alpha,
            dropout,
            targets: targets.iter().map(|p| p.hf_name().to_string()).collect(),
        };
        let mut lora = Lora::<f32>::init(c, config, 0)?;
        for (i, layer) in lora.layers.iter_mut().enumerate() {
            for (p, pair) in layer.iter_mut() {
                let from = adapter
                    .pairs
                    .get(&(i, *p))
                    .ok_or_else(|| format!("the adapter has no {} in layer {i}", p.hf_name()))?;
                if from.a.len() != pair.a.len() || from.b.len() != pair.b.len() {
                    return Err(format!(
                        "the adapter's {} in layer {i} has another shape",
                        p.hf_name()
                    ));
                }
                pair.a.copy_from_slice(&from.a);
                pair.b.copy_from_slice(&from.b);
            }
        }
        Ok(lora)
    }

    /// The engine's form of the adapter (the file formats live there).
    pub fn to_adapter(
        &self,
        c: &ModelConfig,
        base_model: &str,
    ) -> qstar_engine::adapter::LoraAdapter {
        let mut pairs = BTreeMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (&p, pair) in l {
                let (n, k) = projection_shape(c, p);
                pairs.insert(
                    (i, p),
                    qstar_engine::adapter::LoraPair {
                        n,
                        k,
                        a: pair.a.clone(),
                        b: pair.b.clone(),
                    },
                );
            }
        }
        qstar_engine::adapter::LoraAdapter {
            rank: self.config.rank,
            alpha: self.config.alpha,
            dropout: self.config.dropout,
            base_model: base_model.to_string(),
            pairs,
        }
    }
}
