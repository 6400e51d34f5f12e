//! The operations of a llama block, each forward pass next to its backward
//! pass. Activations are row-major `rows × width`; a backward function takes
//! the gradient of the output and adds into the gradients of its inputs
//! (`+=`), so a tensor read by several operations sums their contributions.

use rayon::prelude::*;

use crate::gemm::{matmul, matmul_serial};
use crate::real::Real;

// ---------------------------------------------------------------- linear

/// y (t × n) = x (t × k) · Wᵀ, W n × k (a GGUF matrix: one row per output).
pub fn linear_forward<T: Real>(y: &mut [T], x: &[T], w: &[T], t: usize, n: usize, k: usize) {
    matmul(y, x, w, t, n, k, false, true, false);
}

/// dx += dy · W; dW += dyᵀ · x (when asked for).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Real>(
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    t: usize,
    n: usize,
    k: usize,
) {
    if let Some(dx) = dx {
        matmul(dx, dy, w, t, k, n, false, false, true);
    }
    if let Some(dw) = dw {
        matmul(dw, dy, x, n, k, t, true, false, true);
    }
}

/// The column blocks of a t-row matrix whose rows are the blocks side by
/// side (a stacked projection's output), each as a matrix of its own.
pub fn split_columns<T: Real, const N: usize>(
    m: &[T],
    t: usize,
    widths: [usize; N],
) -> [Vec<T>; N] {
    let total: usize = widths.iter().sum();
    let mut offset = 0;
    widths.map(|w| {
        let mut out = Vec::with_capacity(t * w);
        for r in 0..t {
            out.extend_from_slice(&m[r * total + offset..r * total + offset + w]);
        }
        offset += w;
        out
    })
}

/// The inverse of [`split_columns`]: t-row matrices side by side.
pub fn join_columns<T: Real>(parts: &[&[T]], t: usize) -> Vec<T> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total);
    for r in 0..t {
        for p in parts {
            let w = p.len() / t;
            out.extend_from_slice(&p[r * w..(r + 1) * w]);
        }
    }
    out
}

// ---------------------------------------------------------------- RMSNorm

/// y = x / rms(x) · w per row; returns 1 / rms of each row for the backward.
pub fn rms_norm_forward<T: Real>(y: &mut [T], x: &[T], w: &[T], eps: f32) -> Vec<T> {
    let d = w.len();
    let eps = T::from_f32(eps);
    let mut rstd = vec![T::ZERO; x.len() / d];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter_mut())
        .for_each(|((y, x), r)| {
            let ms = x.iter().map(|&v| v * v).sum::<T>() / T::from_f64(d as f64);
            *r = T::ONE / (ms + eps).sqrt();
            for i in 0..d {
                y[i] = x[i] * *r * w[i];
            }
        });
    rstd
}

/// With g = dy · w: dx = r · g − x · r³ · (g · x) / d, dw = Σ_rows dy · x · r.
pub fn rms_norm_backward<T: Real>(
    dx: &mut [T],
    dw: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
) {
    let d = w.len();
    let inv_d = T::ONE / T::from_f64(d as f64);
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter())
        .for_each(|(((dx, dy), x), &r)| {
            let dot: T = (0..d).map(|i| dy[i] * w[i] * x[i]).sum();
            let c = r * r * r * dot * inv_d;
            for i in 0..d {
                dx[i] += r * dy[i] * w[i] - x[i] * c;
            }
        });
    if let Some(dw) = dw {
        // Columns summed over rows: split the columns between threads.
        let rows = rstd.len();
        let chunk = d.div_ceil(rayon::current_num_threads().max(1)).max(16);
        dw.par_chunks_mut(chunk).enumerate().for_each(|(c, dw)| {
            let from = c * chunk;
            for r in 0..rows {
                let (dy, x) = (&dy[r * d..(r + 1) * d], &x[r * d..(r + 1) * d]);
                for (j, g) in dw.iter_mut().enumerate() {
                    *g += dy[from + j] * x[from + j] * rstd[r];
                }
            }
        });
    }
}

// ---------------------------------------------------------------- RoPE

/// cos and sin of position · frequency, `positions × n_rot/2` each, built as
/// ggml builds them (repeated f32 multiplication), so the trainer rotates
/// exactly as the engine does.
pub struct RopeTable<T> {
    pub half: usize,
    pub cos: Vec<T>,
    pub sin: Vec<T>,
}

impl<T: Real> RopeTable<T> {
    pub fn new(positions: usize, n_rot: usize, base: f32) -> Self {
        let half = n_rot / 2;
        let scale = base.powf(-2.0 / n_rot as f32);
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions * half),
            Vec::with_capacity(positions * half),
        );
        for pos in 0..positions {
            let mut theta = pos as f32;
            for _ in 0..half {
                cos.push(T::from_f32(theta.cos()));
                sin.push(T::from_f32(theta.sin()));
                theta *= scale;
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Rotates adjacent pairs (GGUF's llama layout) of every head of one row;
    /// `inverse` rotates back, which is the backward pass of a rotation.
    pub fn rotate(&self, row: &mut [T], head_dim: usize, pos: usize, inverse: bool) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..self.half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                let s = if inverse { -sin[i] } else { sin[i] };
                head[2 * i] = a * cos[i] - b * s;
                head[2 * i + 1] = a * s + b * cos[i];
            }
        }
    }
}

// ---------------------------------------------------------------- attention

/// Shapes of causal grouped-query attention over a batch of sequences whose
/// rows are stacked: sequence s owns rows `starts[s] .. starts[s] + lens[s]`.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    fn group(&self) -> usize {
        self.n_head / self.n_head_kv
    }
}

/// Copies head h's columns of rows `from .. from + len` into a dense len × hd block.
fn gather_head<T: Real>(
    src: &[T],
    width: usize,
    from: usize,
    len: usize,
    col: usize,
    hd: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len * hd);
    for r in from..from + len {
        out.extend_from_slice(&src[r * width + col..r * width + col + hd]);
    }
    out
}

/// out = softmax(q kᵀ / √hd, causal) v per sequence and head. Returns the
/// probabilities, one `len × len` block per (sequence, head), for the backward.
pub fn attention_forward<T: Real>(
    out: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    seqs: &[(usize, usize)],
    shape: AttnShape,
) -> Vec<Vec<T>> {
    let (hd, qd, kvd) = (shape.head_dim, shape.q_dim(), shape.kv_dim());
    let scale = T::ONE / T::from_f64(hd as f64).sqrt();
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..shape.n_head).map(move |h| (s, h)))
        .collect();
    let results: Vec<(Vec<T>, Vec<T>)> = tasks
        .par_iter()
        .map(|&(s, h)| {
            let (from, len) = seqs[s];
            let g = h / shape.group();
            let qh = gather_head(q, qd, from, len, h * hd, hd);
            let kh = gather_head(k, kvd, from, len, g * hd, hd);
            let vh = gather_head(v, kvd, from, len, g * hd, hd);
            let mut p = vec![T::ZERO; len * len];
            matmul_serial(&mut p, &qh, &kh, len, len, hd, false, true, false);
            for i in 0..len {
                let row = &mut p[i * len..(i + 1) * len];
                let mut max = row[0] * scale;
                for x in row[..=i].iter_mut() {
                    *x *= scale;
                    max = max.max(*x);
                }
                let mut sum = T::ZERO;
                for x in row[..=i].iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = T::ONE / sum;
                for x in row[..=i].iter_mut() {
                    *x *= inv;
                }
                row[i + 1..].fill(T::ZERO);
            }
            let mut o = vec![T::ZERO; len * hd];
            matmul_serial(&mut o, &p, &vh, len, hd, len, false, false, false);
            (p, o)
        })
        .collect();
    let mut probs = Vec::with_capacity(tasks.len());
    for (&(s, h), (p, o)) in tasks.iter().zip(results) {
        let (from, len) = seqs[s];
        for i in 0..len {
            out[(from + i) * qd + h * hd..(from + i) * qd + (h + 1) * hd]
                .copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
        probs.push(p);
    }
    probs
}

/// dP = dO vᵀ; dS = P ⊙ (dP − rowsum(P ⊙ dP)); dq = dS k / √hd;
/// dk = dSᵀ q / √hd; dv = Pᵀ dO. Query heads of one group add into the
/// same key and value heads.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    probs: &[Vec<T>],
    seqs: &[(usize, usize)],
    shape: AttnShape,
) {
    let (hd, qd, kvd) = (shape.head_dim, shape.q_dim(), shape.kv_dim());
    let scale = T::ONE / T::from_f64(hd as f64).sqrt();
    let tasks: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..shape.n_head).map(move |h| (s, h)))
        .collect();
    let results: Vec<(Vec<T>, Vec<T>, Vec<T>)> = tasks
        .par_iter()
        .zip(probs.par_iter())
        .map(|(&(s, h), p)| {
            let (from, len) = seqs[s];
            let g = h / shape.group();
            let qh = gather_head(q, qd, from, len, h * hd, hd);
            let kh = gather_head(k, kvd, from, len, g * hd, hd);
            let vh = gather_head(v, kvd, from, len, g * hd, hd);
            let doh = gather_head(dout, qd, from, len, h * hd, hd);
            let mut dvh = vec![T::ZERO; len * hd];
            matmul_serial(&mut dvh, p, &doh, len, hd, len, true, false, false);
            let mut ds = vec![T::ZERO; len * len];
            matmul_serial(&mut ds, &doh, &vh, len, len, hd, false, true, false);
            for i in 0..len {
                let (pr, dr) = (&p[i * len..(i + 1) * len], &mut ds[i * len..(i + 1) * len]);
                let dot: T = (0..=i).map(|j| pr[j] * dr[j]).sum();
                for j in 0..=i {
                    dr[j] = pr[j] * (dr[j] - dot) * scale;
                }
                dr[i + 1..].fill(T::ZERO);
            }
            let mut dqh = vec![T::ZERO; len * hd];
            matmul_serial(&mut dqh, &ds, &kh, len, hd, len, false, false, false);
            let mut dkh = vec![T::ZERO; len * hd];
            matmul_serial(&mut dkh, &ds, &qh, len, hd, len, true, false, false);
            (dqh, dkh, dvh)
        })
        .collect();
    for (&(s, h), (dqh, dkh, dvh)) in tasks.iter().zip(results) {
        let (from, len) = seqs[s];
        let g = h / shape.group();
        for i in 0..len {
            let r = from + i;
            for (x, &d) in dq[r * qd + h * hd..r * qd + (h + 1) * hd]
                .iter_mut()
                .zip(&dqh[i * hd..])
            {
                *x += d;
            }
            for (x, &d) in dk[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                .iter_mut()
                .zip(&dkh[i * hd..])
            {
                *x += d;
            }
            for (x, &d) in dv[r * kvd + g * hd..r * kvd + (g + 1) * hd]
                .iter_mut()
                .zip(&dvh[i * hd..])
            {
                *x += d;
            }
        }
    }
}

// ---------------------------------------------------------------- SwiGLU

#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// a = silu(gate) · up.
pub fn swiglu_forward<T: Real>(a: &mut [T], gate: &[T], up: &[T]) {
    a.par_iter_mut()
        .zip(gate.par_iter().zip(up.par_iter()))
        .for_each(|(a, (&g, &u))| *a = g * sigmoid(g) * u);
}

/// dgate = da · up · σ(g)(1 + g(1 − σ(g))); dup = da · silu(g). Overwrites.
pub fn swiglu_backward<T: Real>(dgate: &mut [T], dup: &mut [T], da: &[T], gate: &[T], up: &[T]) {
    dgate
        .par_iter_mut()
        .zip(dup.par_iter_mut())
        .zip(da.par_iter().zip(gate.par_iter().zip(up.par_iter())))
        .for_each(|((dg, du), (&d, (&g, &u)))| {
            let s = sigmoid(g);
            *dg = d * u * s * (T::ONE + g * (T::ONE - s));
            *du = d * g * s;
        });
}

// ---------------------------------------------------------------- log-softmax

/// Turns each row of logits into probabilities in place and returns
/// log p(target) of each row.
pub fn log_softmax_pick<T: Real>(logits: &mut [T], targets: &[u32], vocab: usize) -> Vec<T> {
    let mut picked = vec![T::ZERO; targets.len()];
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .zip(picked.par_iter_mut())
        .for_each(|((row, &t), out)| {
            let max = row.iter().fold(row[0], |m, &x| m.max(x));
            let shifted = (row[t as usize] - max).to_f64();
            // The sum runs in f64: in f32, most of a large vocabulary's terms
            // fall below half an ulp of the running sum and are lost, which
            // raises every log p by ~1e-4 nats for a 49152-token vocabulary.
            let mut sum = 0.0f64;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += x.to_f64();
            }
            let inv = 1.0 / sum;
            for x in row.iter_mut() {
                *x = T::from_f64(x.to_f64() * inv);
            }
            // From the logit, not ln(p): p underflows to 0 far below the max.
            *out = T::from_f64(shifted - sum.ln());
        });
    picked
}

/// From probabilities (in place) to d(loss)/d(logits), given d(loss)/d(log p(target)):
/// dz = g · (onehot(target) − p).
pub fn log_softmax_pick_backward<T: Real>(
    probs: &mut [T],
    targets: &[u32],
    grad: &[T],
    vocab: usize,
) {
    probs
        .par_chunks_mut(vocab)
        .zip(targets.par_iter().zip(grad.par_iter()))
        .for_each(|(row, (&t, &g))| {
            for x in row.iter_mut() {
                *x = -g * *x;
            }
            row[t as usize] += g;
        });
}

#[cfg(test)]
mod tests {
    use super::log_softmax_pick;

    /// log p of every target of one row, in f64 from the logits.
    fn reference(row: &[f32], t: usize) -> f64 {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row[t] as f64 - max - sum.ln()
    }

    #[test]
    fn log_softmax_keeps_the_mass_of_many_small_terms() {
        // One logit at 0 and 49151 at -17: each e^-17 ≈ 4.1e-8 is below half
        // an ulp of 1, so a plain f32 sum drops them all (2e-3 of the mass).
        let vocab = 49152;
        let mut row = vec![-17.0f32; vocab];
        row[0] = 0.0;
        for t in [0usize, 1, vocab - 1] {
            let want = reference(&row, t);
            let mut logits = row.clone();
            let got = log_softmax_pick(&mut logits, &[t as u32], vocab)[0] as f64;
            assert!((got - want).abs() < 1e-6, "target {t}: {got} vs {want}");
            let total: f64 = logits.iter().map(|&p| p as f64).sum();
            assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
        }
    }

    #[test]
    fn log_softmax_of_a_very_unlikely_target_is_finite() {
        // e^-200 underflows in f32; log p must still be -200 - ln(1 + e^-200).
        let mut logits = vec![0.0f32, -200.0];
        let got = log_softmax_pick(&mut logits, &[1], 2)[0];
        assert!(
            got.is_finite() && (got as f64 + 200.0).abs() < 1e-4,
            "{got}"
        );
    }
}
