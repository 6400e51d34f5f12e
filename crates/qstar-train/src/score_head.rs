//! The score head a reward or process-reward model puts on the backbone,
//! in the trainer's own precision so that it learns together with the
//! adapters (or every weight): r(h) = w · ((h − mean) ⊙ inv_std) + b, on
//! the final-normed state h. It is the head of [`crate::reward::RewardHead`]
//! (same standardization, same file), which the head-only training fits on
//! cached states; a backbone run starts from that fit and converts back.

use crate::real::Real;
use crate::reward::RewardHead;

/// What learns in the head: its weights and bias.
pub struct HeadParams<T> {
    pub weight: Vec<T>,
    /// One value (a tensor, so the optimizer and checkpoints treat it like
    /// every other).
    pub bias: Vec<T>,
}

impl<T: Real> HeadParams<T> {
    pub fn fill_zero(&mut self) {
        self.weight.iter_mut().for_each(|v| *v = T::ZERO);
        self.bias.iter_mut().for_each(|v| *v = T::ZERO);
    }

    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        vec![
            (
                "score.weight".into(),
                vec![1, self.weight.len()],
                &self.weight,
            ),
            ("score.bias".into(), vec![1], &self.bias),
        ]
    }

    pub fn tensors_mut(&mut self) -> Vec<(String, Vec<usize>, &mut [T])> {
        let d = self.weight.len();
        vec![
            ("score.weight".into(), vec![1, d], &mut self.weight),
            ("score.bias".into(), vec![1], &mut self.bias),
        ]
    }
}

/// The head: a fixed standardization, then the learned dot product.
pub struct ScoreHead<T> {
    pub mean: Vec<T>,
    pub inv_std: Vec<T>,
    pub params: HeadParams<T>,
}

impl<T: Real> ScoreHead<T> {
    pub fn from_reward_head(h: &RewardHead) -> Self {
        let conv = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
        ScoreHead {
            mean: conv(&h.mean),
            inv_std: conv(&h.inv_std),
            params: HeadParams {
                weight: conv(&h.weight),
                bias: vec![T::from_f32(h.bias)],
            },
        }
    }

    pub fn to_reward_head(&self) -> RewardHead {
        let conv = |v: &[T]| v.iter().map(|x| x.to_f64() as f32).collect::<Vec<f32>>();
        RewardHead {
            mean: conv(&self.mean),
            inv_std: conv(&self.inv_std),
            weight: conv(&self.params.weight),
            bias: self.params.bias[0].to_f64() as f32,
        }
    }

    pub fn width(&self) -> usize {
        self.params.weight.len()
    }

    /// Zero gradients shaped like the learned part.
    pub fn zero_params(&self) -> HeadParams<T> {
        HeadParams {
            weight: vec![T::ZERO; self.width()],
            bias: vec![T::ZERO],
        }
    }

    /// r(h), summed in f64.
    pub fn score(&self, h: &[T]) -> f64 {
        let mut r = self.params.bias[0].to_f64();
        for i in 0..self.width() {
            let x = (h[i] - self.mean[i]).to_f64() * self.inv_std[i].to_f64();
            r += self.params.weight[i].to_f64() * x;
        }
        r
    }

    /// Given dr = d(loss)/d(r(h)): dh += dr · w ⊙ inv_std, and the head's
    /// own gradients dw += dr · standardized h, db += dr.
    pub fn backward(&self, h: &[T], dr: f64, dh: &mut [T], grads: &mut HeadParams<T>) {
        for i in 0..self.width() {
            let inv = self.inv_std[i].to_f64();
            dh[i] += T::from_f64(dr * self.params.weight[i].to_f64() * inv);
            let x = (h[i] - self.mean[i]).to_f64() * inv;
            grads.weight[i] += T::from_f64(dr * x);
        }
        grads.bias[0] += T::from_f64(dr);
    }
}
