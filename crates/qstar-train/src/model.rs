//! The trainable llama. `forward` runs a batch of sequences (their rows
//! stacked for every matrix product, as the engine does) and keeps on a tape
//! what the backward pass needs; `backward` walks the same steps in reverse.
//! The model's output is log p(next token) at the positions a batch asks
//! for, so cross-entropy, DPO and policy-gradient losses are all functions
//! of it, and each passes back d(loss)/d(log p).

use std::collections::BTreeMap;

use qstar_engine::adapter::Projection;

use crate::config::ModelConfig;
use crate::gemm::matmul;
use crate::ops::{self, AttnShape, RopeTable};
use crate::real::Real;
use crate::rng::SplitMix;
use crate::score_head::{HeadParams, ScoreHead};
use crate::weights::{projection_shape, Lora, Weights};

/// One training sequence. `predict[i]` asks for log p(tokens[i + 1]) at
/// position i (prompt tokens are masked by leaving it false).
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub predict: Vec<bool>,
}

impl Sequence {
    /// Every next token is predicted.
    pub fn all(tokens: Vec<u32>) -> Self {
        let mut predict = vec![true; tokens.len()];
        if let Some(last) = predict.last_mut() {
            *last = false;
        }
        Sequence { tokens, predict }
    }

    pub fn predicted(&self) -> usize {
        self.predict.iter().filter(|&&p| p).count()
    }
}

/// Which tensors learn: every weight of the model, or only the adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    Full,
    Lora,
}

pub struct Model<T> {
    pub config: ModelConfig,
    pub base: Weights<T>,
    pub lora: Option<Lora<T>>,
    /// A scalar head on the final-normed state (reward and process-reward
    /// models); when present it learns with whatever else trains.
    pub head: Option<ScoreHead<T>>,
    rope: RopeTable<T>,
}

/// Gradients of the trainable tensors, shaped like them.
pub struct Grads<T> {
    pub base: Option<Weights<T>>,
    pub lora: Option<Lora<T>>,
    pub head: Option<HeadParams<T>>,
}

impl<T: Real> Grads<T> {
    pub fn fill_zero(&mut self) {
        if let Some(b) = &mut self.base {
            b.fill_zero();
        }
        if let Some(l) = &mut self.lora {
            l.fill_zero();
        }
        if let Some(h) = &mut self.head {
            h.fill_zero();
        }
    }

    pub fn tensors_mut(&mut self) -> Vec<(String, Vec<usize>, &mut [T])> {
        let mut out = Vec::new();
        if let Some(b) = &mut self.base {
            out.extend(b.tensors_mut());
        }
        if let Some(l) = &mut self.lora {
            out.extend(l.tensors_mut());
        }
        if let Some(h) = &mut self.head {
            out.extend(h.tensors_mut());
        }
        out
    }

    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        let mut out = Vec::new();
        if let Some(b) = &self.base {
            out.extend(b.tensors());
        }
        if let Some(l) = &self.lora {
            out.extend(l.tensors());
        }
        if let Some(h) = &self.head {
            out.extend(h.tensors());
        }
        out
    }
}

/// What the LoRA path of one projection keeps: u = drop(x) · Aᵀ, and the
/// dropout's factors (0 or 1/(1 − p)) when there is dropout.
struct LoraTape<T> {
    u: Vec<T>,
    mask: Option<Vec<T>>,
}

struct LayerTape<T> {
    x_in: Vec<T>,
    rstd1: Vec<T>,
    h1: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    probs: Vec<Vec<T>>,
    att: Vec<T>,
    x_mid: Vec<T>,
    rstd2: Vec<T>,
    h2: Vec<T>,
    gate: Vec<T>,
    up: Vec<T>,
    act: Vec<T>,
    lora: BTreeMap<Projection, LoraTape<T>>,
}

/// Everything `backward` reads, produced by `forward`.
pub struct Tape<T> {
    seqs: Vec<(usize, usize)>,
    positions: Vec<usize>,
    tokens: Vec<u32>,
    layers: Vec<LayerTape<T>>,
    x_final: Vec<T>,
    rstd_final: Vec<T>,
    /// Stacked rows whose next token is predicted, and those tokens.
    rows: Vec<usize>,
    targets: Vec<u32>,
    h_rows: Vec<T>,
    /// The final-normed state of every stacked row.
    final_rows: Vec<T>,
    /// softmax of the logits of `rows`.
    probs: Vec<T>,
}

impl<T> Tape<T> {
    /// The final-normed hidden states of the predicted rows, in the order
    /// `forward` returned their log-probs (`n_embd` each).
    pub fn hidden_rows(&self) -> &[T] {
        &self.h_rows
    }

    /// Rows of the batch, every sequence's positions stacked.
    pub fn stacked_rows(&self) -> usize {
        self.tokens.len()
    }

    /// The stacked row of position `pos` of sequence `seq` of the batch.
    pub fn row(&self, seq: usize, pos: usize) -> Option<usize> {
        self.seqs
            .get(seq)
            .filter(|&&(_, len)| pos < len)
            .map(|&(from, _)| from + pos)
    }

    /// The final-normed state after position `pos` of sequence `seq`: what
    /// a score head reads (at a reply's last token, or at a step's end).
    pub fn final_state(&self, seq: usize, pos: usize) -> Option<&[T]> {
        let d = self.final_rows.len() / self.tokens.len().max(1);
        self.row(seq, pos)
            .map(|r| &self.final_rows[r * d..(r + 1) * d])
    }
}

impl<T: Real> Model<T> {
    pub fn new(
        config: ModelConfig,
        base: Weights<T>,
        lora: Option<Lora<T>>,
    ) -> Result<Self, String> {
        config.check()?;
        let expect = Weights::<T>::zeros(&config);
        for ((name, shape, t), (_, _, e)) in base.tensors().iter().zip(expect.tensors()) {
            if t.len() != e.len() {
                return Err(format!(
                    "`{name}` has {} values, the config gives {shape:?}",
                    t.len()
                ));
            }
        }
        if base.tensors().len() != expect.tensors().len() {
            return Err("the weights do not match the config's layers or output".into());
        }
        if let Some(l) = &lora {
            if l.layers.len() != config.n_layer {
                return Err("the adapter has another number of layers than the model".into());
            }
        }
        let rope = RopeTable::new(config.context_length, config.n_rot, config.rope_base);
        Ok(Model {
            config,
            base,
            lora,
            head: None,
            rope,
        })
    }

    /// The model with a score head on its final-normed state.
    pub fn with_head(mut self, head: ScoreHead<T>) -> Result<Self, String> {
        if head.width() != self.config.n_embd {
            return Err(format!(
                "the head reads {} features, the model's states have {}",
                head.width(),
                self.config.n_embd
            ));
        }
        self.head = Some(head);
        Ok(self)
    }

    /// Zero gradients for what `trainable` trains.
    pub fn grads(&self, trainable: Trainable) -> Grads<T> {
        match trainable {
            Trainable::Full => Grads {
                base: Some(Weights::zeros(&self.config)),
                lora: None,
                head: self.head.as_ref().map(ScoreHead::zero_params),
            },
            Trainable::Lora => Grads {
                base: None,
                lora: self.lora.as_ref().map(Lora::zeros_like),
                head: self.head.as_ref().map(ScoreHead::zero_params),
            },
        }
    }

    fn shape(&self) -> AttnShape {
        AttnShape {
            n_head: self.config.n_head,
            n_head_kv: self.config.n_head_kv,
            head_dim: self.config.head_dim(),
        }
    }

    fn output(&self) -> &[T] {
        self.base.output.as_deref().unwrap_or(&self.base.embed)
    }

    /// y += s · drop(x) Aᵀ Bᵀ when projection p of `layer` has an adapter
    /// (y already holds x Wᵀ).
    #[allow(clippy::too_many_arguments)]
    fn lora_forward(
        &self,
        layer: usize,
        p: Projection,
        x: &[T],
        t: usize,
        y: &mut [T],
        seed: Option<u64>,
        tape: &mut BTreeMap<Projection, LoraTape<T>>,
    ) {
        let (n, k) = projection_shape(&self.config, p);
        let Some((lora, pair)) = self
            .lora
            .as_ref()
            .and_then(|l| l.layers[layer].get(&p).map(|pair| (l, pair)))
        else {
            return;
        };
        let r = lora.config.rank;
        let s = T::from_f32(lora.config.scale());
        let drop = lora.config.dropout;
        let mask = seed.filter(|_| drop > 0.0).map(|seed| {
            let mut rng = SplitMix::new(
                seed ^ ((layer as u64) << 8 | p as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
            );
            let keep = T::from_f64(1.0 / (1.0 - drop as f64));
            (0..t * k)
                .map(|_| {
                    if rng.uniform() < drop as f64 {
                        T::ZERO
                    } else {
                        keep
                    }
                })
                .collect::<Vec<T>>()
        });
        let dropped;
        let xin: &[T] = match &mask {
            Some(m) => {
                dropped = x.iter().zip(m).map(|(&a, &b)| a * b).collect::<Vec<T>>();
                &dropped
            }
            None => x,
        };
        let mut u = vec![T::ZERO; t * r];
        matmul(&mut u, xin, &pair.a, t, r, k, false, true, false);
        let us: Vec<T> = u.iter().map(|&v| v * s).collect();
        matmul(y, &us, &pair.b, t, n, r, false, true, true);
        tape.insert(p, LoraTape { u, mask });
    }

    /// The backward pass of [`Model::lora_forward`]: dx += the adapter
    /// path's share, and the gradients of A and B.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        layer: usize,
        p: Projection,
        x: &[T],
        t: usize,
        dy: &[T],
        dx: Option<&mut [T]>,
        grads: &mut Grads<T>,
        tape: &BTreeMap<Projection, LoraTape<T>>,
    ) {
        let (n, k) = projection_shape(&self.config, p);
        let (Some(lora), Some(lt)) = (self.lora.as_ref(), tape.get(&p)) else {
            return;
        };
        let Some(pair) = lora.layers[layer].get(&p) else {
            return;
        };
        let r = lora.config.rank;
        let s = T::from_f32(lora.config.scale());
        // du = s · dy B (t × r).
        let mut du = vec![T::ZERO; t * r];
        matmul(&mut du, dy, &pair.b, t, r, n, false, false, false);
        for v in du.iter_mut() {
            *v *= s;
        }
        if let Some(g) = grads
            .lora
            .as_mut()
            .and_then(|g| g.layers[layer].get_mut(&p))
        {
            // dB += s · dyᵀ u; dA += duᵀ drop(x).
            let us: Vec<T> = lt.u.iter().map(|&v| v * s).collect();
            matmul(&mut g.b, dy, &us, n, r, t, true, false, true);
            match &lt.mask {
                Some(m) => {
                    let xin: Vec<T> = x.iter().zip(m).map(|(&a, &b)| a * b).collect();
                    matmul(&mut g.a, &du, &xin, r, k, t, true, false, true);
                }
                None => matmul(&mut g.a, &du, x, r, k, t, true, false, true),
            }
        }
        if let Some(dx) = dx {
            match &lt.mask {
                Some(m) => {
                    let mut dxin = vec![T::ZERO; t * k];
                    matmul(&mut dxin, &du, &pair.a, t, k, r, false, false, false);
                    for ((d, &g), &f) in dx.iter_mut().zip(&dxin).zip(m) {
                        *d += g * f;
                    }
                }
                None => matmul(dx, &du, &pair.a, t, k, r, false, false, true),
            }
        }
    }

    /// Log-probabilities of the predicted tokens, in batch order, and the
    /// tape; LoRA dropout (when the adapter has it) draws its masks from
    /// `seed`.
    pub fn forward(&self, batch: &[Sequence], seed: u64) -> Result<(Vec<T>, Tape<T>), String> {
        self.run_forward(batch, Some(seed))
    }

    /// The forward pass without dropout: what evaluation and reference
    /// log-probabilities need.
    pub fn forward_eval(&self, batch: &[Sequence]) -> Result<(Vec<T>, Tape<T>), String> {
        self.run_forward(batch, None)
    }

    fn run_forward(
        &self,
        batch: &[Sequence],
        seed: Option<u64>,
    ) -> Result<(Vec<T>, Tape<T>), String> {
        let c = &self.config;
        let (d, kvd, ff) = (c.n_embd, c.kv_dim(), c.n_ff);
        let mut seqs = Vec::with_capacity(batch.len());
        let mut positions = Vec::new();
        let mut tokens = Vec::new();
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() || s.predict.len() != s.tokens.len() {
                return Err(format!(
                    "sequence {i} is empty or its mask has another length"
                ));
            }
            if s.tokens.len() > c.context_length {
                return Err(format!(
                    "sequence {i} has {} tokens, more than the context of {}",
                    s.tokens.len(),
                    c.context_length
                ));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
                return Err(format!(
                    "sequence {i} has token {bad}, outside the vocabulary"
                ));
            }
            if s.predict.last() == Some(&true) {
                return Err(format!(
                    "sequence {i} asks for a prediction after its last token"
                ));
            }
            let from = tokens.len();
            for (j, &tok) in s.tokens.iter().enumerate() {
                if s.predict[j] {
                    rows.push(from + j);
                    targets.push(s.tokens[j + 1]);
                }
                positions.push(j);
                tokens.push(tok);
            }
            seqs.push((from, s.tokens.len()));
        }
        let t = tokens.len();
        let mut x = vec![T::ZERO; t * d];
        for (r, &tok) in tokens.iter().enumerate() {
            x[r * d..(r + 1) * d]
                .copy_from_slice(&self.base.embed[tok as usize * d..(tok as usize + 1) * d]);
        }
        let hd = c.head_dim();
        let mut layers = Vec::with_capacity(c.n_layer);
        for (li, lw) in self.base.layers.iter().enumerate() {
            let mut lora = BTreeMap::new();
            let seed = seed.map(|s| s.wrapping_add(li as u64));
            let mut h1 = vec![T::ZERO; t * d];
            let rstd1 = ops::rms_norm_forward(&mut h1, &x, &lw.attn_norm, c.rms_eps);
            // Query, key and value in one product, then each its adapter.
            let mut qkv = vec![T::ZERO; t * (d + 2 * kvd)];
            ops::linear_forward(&mut qkv, &h1, &lw.wqkv, t, d + 2 * kvd, d);
            let [mut q, mut k, mut v] = ops::split_columns(&qkv, t, [d, kvd, kvd]);
            drop(qkv);
            self.lora_forward(li, Projection::Q, &h1, t, &mut q, seed, &mut lora);
            self.lora_forward(li, Projection::K, &h1, t, &mut k, seed, &mut lora);
            self.lora_forward(li, Projection::V, &h1, t, &mut v, seed, &mut lora);
            for r in 0..t {
                self.rope
                    .rotate(&mut q[r * d..(r + 1) * d], hd, positions[r], false);
                self.rope
                    .rotate(&mut k[r * kvd..(r + 1) * kvd], hd, positions[r], false);
            }
            let mut att = vec![T::ZERO; t * d];
            let probs = ops::attention_forward(&mut att, &q, &k, &v, &seqs, self.shape());
            let mut o = vec![T::ZERO; t * d];
            ops::linear_forward(&mut o, &att, &lw.wo, t, d, d);
            self.lora_forward(li, Projection::O, &att, t, &mut o, seed, &mut lora);
            let x_in = x.clone();
            for (a, b) in x.iter_mut().zip(&o) {
                *a += *b;
            }
            let x_mid = x.clone();
            let mut h2 = vec![T::ZERO; t * d];
            let rstd2 = ops::rms_norm_forward(&mut h2, &x, &lw.ffn_norm, c.rms_eps);
            let mut gate_up = vec![T::ZERO; t * 2 * ff];
            ops::linear_forward(&mut gate_up, &h2, &lw.w_gate_up, t, 2 * ff, d);
            let [mut gate, mut up] = ops::split_columns(&gate_up, t, [ff, ff]);
            drop(gate_up);
            self.lora_forward(li, Projection::Gate, &h2, t, &mut gate, seed, &mut lora);
            self.lora_forward(li, Projection::Up, &h2, t, &mut up, seed, &mut lora);
            let mut act = vec![T::ZERO; t * ff];
            ops::swiglu_forward(&mut act, &gate, &up);
            let mut down = o;
            ops::linear_forward(&mut down, &act, &lw.w_down, t, d, ff);
            self.lora_forward(li, Projection::Down, &act, t, &mut down, seed, &mut lora);
            for (a, b) in x.iter_mut().zip(&down) {
                *a += *b;
            }
            layers.push(LayerTape {
                x_in,
                rstd1,
                h1,
                q,
                k,
                v,
                probs,
                att,
                x_mid,
                rstd2,
                h2,
                gate,
                up,
                act,
                lora,
            });
        }
        let mut hf = vec![T::ZERO; t * d];
        let rstd_final = ops::rms_norm_forward(&mut hf, &x, &self.base.output_norm, c.rms_eps);
        let mut h_rows = Vec::with_capacity(rows.len() * d);
        for &r in &rows {
            h_rows.extend_from_slice(&hf[r * d..(r + 1) * d]);
        }
        let final_rows = hf;
        let mut probs = vec![T::ZERO; rows.len() * c.n_vocab];
        matmul(
            &mut probs,
            &h_rows,
            self.output(),
            rows.len(),
            c.n_vocab,
            d,
            false,
            true,
            false,
        );
        let logps = ops::log_softmax_pick(&mut probs, &targets, c.n_vocab);
        Ok((
            logps,
            Tape {
                seqs,
                positions,
                tokens,
                layers,
                x_final: x,
                rstd_final,
                rows,
                targets,
                h_rows,
                final_rows,
                probs,
            },
        ))
    }

    /// Adds the gradients of the loss into `grads`, given d(loss)/d(log p) of
    /// each predicted token (in the order `forward` returned them).
    pub fn backward(&self, tape: Tape<T>, dlogp: &[T], grads: &mut Grads<T>) -> Result<(), String> {
        self.backward_with_states(tape, dlogp, None, grads)
    }

    /// [`Model::backward`] for a loss that also reads final-normed states:
    /// `dstates` is d(loss)/d(state) of every stacked row (t × n_embd, in
    /// the order of [`Tape::row`]).
    pub fn backward_with_states(
        &self,
        tape: Tape<T>,
        dlogp: &[T],
        dstates: Option<&[T]>,
        grads: &mut Grads<T>,
    ) -> Result<(), String> {
        if let Some(ds) = dstates {
            if ds.len() != tape.final_rows.len() {
                return Err(format!(
                    "{} state gradients for {} state values",
                    ds.len(),
                    tape.final_rows.len()
                ));
            }
        }
        if dlogp.len() != tape.rows.len() {
            return Err(format!(
                "{} gradients for {} predicted tokens",
                dlogp.len(),
                tape.rows.len()
            ));
        }
        let c = &self.config;
        let (d, kvd, ff, v) = (c.n_embd, c.kv_dim(), c.n_ff, c.n_vocab);
        let t = tape.tokens.len();
        let hd = c.head_dim();
        let Tape {
            seqs,
            positions,
            tokens,
            layers,
            x_final,
            rstd_final,
            rows,
            targets,
            h_rows,
            final_rows: _,
            mut probs,
        } = tape;
        let full = grads.base.is_some();

        // Logits → final norm.
        ops::log_softmax_pick_backward(&mut probs, &targets, dlogp, v);
        let dlogits = probs;
        let mut dh_rows = vec![T::ZERO; rows.len() * d];
        matmul(
            &mut dh_rows,
            &dlogits,
            self.output(),
            rows.len(),
            d,
            v,
            false,
            false,
            false,
        );
        // A batch that only reads states (a reward model's) predicts no
        // token: the output projection then has no gradient.
        if let Some(g) = grads.base.as_mut().filter(|_| !rows.is_empty()) {
            let dout = g.output.as_deref_mut().unwrap_or(&mut g.embed);
            matmul(dout, &dlogits, &h_rows, v, d, rows.len(), true, false, true);
        }
        drop(dlogits);
        let mut dhf = match dstates {
            Some(ds) => ds.to_vec(),
            None => vec![T::ZERO; t * d],
        };
        for (i, &r) in rows.iter().enumerate() {
            for (a, &b) in dhf[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&dh_rows[i * d..(i + 1) * d])
            {
                *a += b;
            }
        }
        let mut dx = vec![T::ZERO; t * d];
        ops::rms_norm_backward(
            &mut dx,
            grads.base.as_mut().map(|g| &mut g.output_norm[..]),
            &dhf,
            &x_final,
            &self.base.output_norm,
            &rstd_final,
        );

        for (li, lt) in layers.iter().enumerate().rev() {
            let lw = &self.base.layers[li];
            // x_out = x_mid + down(swiglu(gate(h2), up(h2))), h2 = norm(x_mid).
            let mut dact = vec![T::ZERO; t * ff];
            let dw = grads.base.as_mut().map(|g| &mut g.layers[li].w_down[..]);
            ops::linear_backward(Some(&mut dact), dw, &dx, &lt.act, &lw.w_down, t, d, ff);
            let down = Projection::Down;
            self.lora_backward(li, down, &lt.act, t, &dx, Some(&mut dact), grads, &lt.lora);
            let (mut dgate, mut dup) = (vec![T::ZERO; t * ff], vec![T::ZERO; t * ff]);
            ops::swiglu_backward(&mut dgate, &mut dup, &dact, &lt.gate, &lt.up);
            drop(dact);
            let mut dh2 = vec![T::ZERO; t * d];
            let dgate_up = ops::join_columns(&[&dgate, &dup], t);
            let dw = grads.base.as_mut().map(|g| &mut g.layers[li].w_gate_up[..]);
            ops::linear_backward(
                Some(&mut dh2),
                dw,
                &dgate_up,
                &lt.h2,
                &lw.w_gate_up,
                t,
                2 * ff,
                d,
            );
            drop(dgate_up);
            for (p, dy) in [(Projection::Gate, &dgate), (Projection::Up, &dup)] {
                self.lora_backward(li, p, &lt.h2, t, dy, Some(&mut dh2), grads, &lt.lora);
            }
            ops::rms_norm_backward(
                &mut dx,
                grads.base.as_mut().map(|g| &mut g.layers[li].ffn_norm[..]),
                &dh2,
                &lt.x_mid,
                &lw.ffn_norm,
                &lt.rstd2,
            );
            // x_mid = x_in + o(attention(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm(x_in).
            let mut datt = vec![T::ZERO; t * d];
            let dw = grads.base.as_mut().map(|g| &mut g.layers[li].wo[..]);
            ops::linear_backward(Some(&mut datt), dw, &dx, &lt.att, &lw.wo, t, d, d);
            let o = Projection::O;
            self.lora_backward(li, o, &lt.att, t, &dx, Some(&mut datt), grads, &lt.lora);
            let (mut dq, mut dk, mut dv) = (
                vec![T::ZERO; t * d],
                vec![T::ZERO; t * kvd],
                vec![T::ZERO; t * kvd],
            );
            ops::attention_backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &datt,
                &lt.q,
                &lt.k,
                &lt.v,
                &lt.probs,
                &seqs,
                self.shape(),
            );
            for r in 0..t {
                self.rope
                    .rotate(&mut dq[r * d..(r + 1) * d], hd, positions[r], true);
                self.rope
                    .rotate(&mut dk[r * kvd..(r + 1) * kvd], hd, positions[r], true);
            }
            // Below the first block only the embedding learns: with adapters
            // alone, nothing there needs d(h1).
            let need_input = full || li > 0;
            let mut dh1 = vec![T::ZERO; if need_input { t * d } else { 0 }];
            let dqkv = ops::join_columns(&[&dq, &dk, &dv], t);
            let dw = grads.base.as_mut().map(|g| &mut g.layers[li].wqkv[..]);
            let dxp = need_input.then_some(&mut dh1[..]);
            ops::linear_backward(dxp, dw, &dqkv, &lt.h1, &lw.wqkv, t, d + 2 * kvd, d);
            drop(dqkv);
            for (p, dy) in [
                (Projection::Q, &dq),
                (Projection::K, &dk),
                (Projection::V, &dv),
            ] {
                let dxp = need_input.then_some(&mut dh1[..]);
                self.lora_backward(li, p, &lt.h1, t, dy, dxp, grads, &lt.lora);
            }
            if need_input {
                ops::rms_norm_backward(
                    &mut dx,
                    grads.base.as_mut().map(|g| &mut g.layers[li].attn_norm[..]),
                    &dh1,
                    &lt.x_in,
                    &lw.attn_norm,
                    &lt.rstd1,
                );
            }
        }
        if let Some(g) = grads.base.as_mut() {
            for (r, &tok) in tokens.iter().enumerate() {
                let row = &mut g.embed[tok as usize * d..(tok as usize + 1) * d];
                for (a, &b) in row.iter_mut().zip(&dx[r * d..(r + 1) * d]) {
                    *a += b;
                }
            }
        }
        Ok(())
    }
}

/// Mean cross-entropy of the predicted tokens, and its d/d(log p).
pub fn cross_entropy<T: Real>(logps: &[T], count: usize) -> (f64, Vec<T>) {
    let n = count.max(1) as f64;
    let loss = -logps.iter().map(|l| l.to_f64()).sum::<f64>() / n;
    (loss, vec![T::from_f64(-1.0 / n); logps.len()])
}
