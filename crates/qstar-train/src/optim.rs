//! AdamW with decoupled weight decay, the learning-rate schedule, and
//! gradient clipping by global norm.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

/// Linear warm-up from 0 to `lr` over `warmup` steps, then `decay` down to
/// `lr · min_ratio` at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
    pub min_ratio: f64,
}

impl Schedule {
    /// The rate of step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let done = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let factor = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - done,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * done).cos()),
        };
        self.lr * (self.min_ratio + (1.0 - self.min_ratio) * factor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The moments of every trainable tensor, in the order the model lists them.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far (the bias correction's t).
    pub steps: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        AdamW {
            config,
            steps: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update. `decay[i]` says whether tensor i takes weight decay
    /// (matrices do, norms do not).
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], decay: &[bool], lr: f64) {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let step = (lr / bc1) as f32;
        let inv_bc2 = (1.0 / bc2) as f32;
        let eps = c.eps as f32;
        for (i, p) in params.iter_mut().enumerate() {
            let wd = if decay[i] {
                (lr * c.weight_decay) as f32
            } else {
                0.0
            };
            p.par_chunks_mut(1 << 14)
                .zip(grads[i].par_chunks(1 << 14))
                .zip(self.m[i].par_chunks_mut(1 << 14))
                .zip(self.v[i].par_chunks_mut(1 << 14))
                .for_each(|(((p, g), m), v)| {
                    for j in 0..p.len() {
                        m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                        v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                        let denom = (v[j] * inv_bc2).sqrt() + eps;
                        p[j] -= step * m[j] / denom + wd * p[j];
                    }
                });
        }
    }
}

/// The global L2 norm of the gradients, summed in a fixed order so a run
/// repeats to the bit.
pub fn global_norm(grads: &[&[f32]]) -> f64 {
    grads
        .iter()
        .map(|g| {
            let parts: Vec<f64> = g
                .par_chunks(1 << 16)
                .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
                .collect();
            parts.iter().sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

/// Scales the gradients down to `max_norm` when their norm exceeds it;
/// returns the norm before clipping.
pub fn clip(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let norm = global_norm(&grads.iter().map(|g| &g[..]).collect::<Vec<_>>());
    if max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / norm) as f32;
        for g in grads.iter_mut() {
            g.par_iter_mut().for_each(|x| *x *= s);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_its_floor() {
        let s = Schedule {
            lr: 1.0,
            warmup: 4,
            total: 14,
            decay: Decay::Cosine,
            min_ratio: 0.1,
        };
        assert!((s.at(0) - 0.25).abs() < 1e-12);
        assert!((s.at(3) - 1.0).abs() < 1e-12);
        assert!((s.at(4) - 1.0).abs() < 1e-12);
        assert!((s.at(9) - 0.55).abs() < 1e-12, "halfway down the cosine");
        assert!((s.at(14) - 0.1).abs() < 1e-12);
        assert!((s.at(100) - 0.1).abs() < 1e-12);
        let l = Schedule {
            decay: Decay::Linear,
            min_ratio: 0.0,
            ..s
        };
        assert!((l.at(9) - 0.5).abs() < 1e-12);
    }

    /// AdamW against a float64 transcription of its definition.
    #[test]
    fn adamw_matches_its_definition_in_f64() {
        let config = AdamWConfig {
            beta1: 0.8,
            beta2: 0.95,
            eps: 1e-6,
            weight_decay: 0.1,
        };
        let mut p = vec![0.5f32, -1.0, 2.0];
        let mut q = vec![1.0f32];
        let mut opt = AdamW::new(config, &[3, 1]);
        let (mut rp, mut rm, mut rv) = (vec![0.5f64, -1.0, 2.0], [0.0f64; 3], [0.0f64; 3]);
        for t in 1..=5 {
            let g: Vec<f32> = p.iter().map(|x| x * x - 0.3 * t as f32).collect();
            let gq = vec![0.7f32];
            let lr = 0.01 * t as f64;
            opt.step(&mut [&mut p, &mut q], &[&g, &gq], &[true, false], lr);
            for j in 0..3 {
                let g = rp[j] * rp[j] - 0.3 * t as f64;
                rm[j] = 0.8 * rm[j] + 0.2 * g;
                rv[j] = 0.95 * rv[j] + 0.05 * g * g;
                let mh = rm[j] / (1.0 - 0.8f64.powi(t));
                let vh = rv[j] / (1.0 - 0.95f64.powi(t));
                rp[j] -= lr * (mh / (vh.sqrt() + 1e-6) + 0.1 * rp[j]);
            }
        }
        for j in 0..3 {
            assert!((p[j] as f64 - rp[j]).abs() < 1e-5, "{} vs {}", p[j], rp[j]);
        }
        // No decay on the second tensor: five steps of a constant gradient
        // move it by five learning rates' worth of sign(g).
        assert!((q[0] as f64 - (1.0 - 0.01 * 15.0)).abs() < 1e-4, "{}", q[0]);
    }

    #[test]
    fn clipping_scales_to_the_bound_and_reports_the_norm_before() {
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]);
        let norm = clip(&mut [&mut a, &mut b], 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
    }
}
