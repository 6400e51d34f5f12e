//! Reward models as a scalar head on the backbone's last hidden state, and
//! the pairwise losses that train them.
//!
//! A pair is (chosen state, rejected state, p) with p the probability that
//! the chosen reply is the better one: 1 for a human or hard AI label, the
//! soft label of an AI labeler otherwise. With d = r(chosen) − r(rejected):
//!
//! - Bradley–Terry on hard labels: −log σ(d − m), with an optional margin m;
//! - cross-entropy on soft labels (RLAIF's "reward model as distillation"):
//!   −[p·log σ(d) + (1 − p)·log σ(−d)], which is Bradley–Terry at p = 1 and
//!   is minimised where σ(d) = p;
//! - either with reward centring, + c·(r(chosen) + r(rejected))², which pins
//!   the rewards' scale to zero mean (the pairwise terms leave it free).
//!
//! The head standardizes each feature with the training set's mean and
//! spread before its dot product: the final norm leaves a few dimensions
//! hundreds of times larger than the rest, which would otherwise set the
//! step size of all of them.

use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::checkpoint::{load_into, read_tensors, write_tensors};
use crate::error::TrainError;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::SplitMix;

/// One preference pair as features.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturePair {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    /// P(chosen is better), in [0, 1].
    pub target: f64,
}

/// Which pairwise loss trains the head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PairLoss {
    /// −log σ(d − margin), on hard labels (the target is ignored).
    BradleyTerry { margin: f64 },
    /// −[p·log σ(d) + (1 − p)·log σ(−d)], with p the pair's target.
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadTraining {
    pub loss: PairLoss,
    /// Weight of the reward-centring term (0: none).
    pub center_coef: f64,
    pub epochs: usize,
    pub batch_pairs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for HeadTraining {
    fn default() -> Self {
        HeadTraining {
            loss: PairLoss::BradleyTerry { margin: 0.0 },
            center_coef: 0.0,
            epochs: 30,
            batch_pairs: 32,
            lr: 1e-3,
            weight_decay: 1e-2,
            seed: 0,
        }
    }
}

impl HeadTraining {
    pub fn check(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_pairs == 0 {
            return Err("epochs and pairs per batch must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!(
                "the learning rate must be positive, not {}",
                self.lr
            ));
        }
        if !(self.weight_decay >= 0.0 && self.center_coef >= 0.0) {
            return Err("weight decay and the centring coefficient must be ≥ 0".into());
        }
        if let PairLoss::BradleyTerry { margin } = self.loss {
            if !margin.is_finite() {
                return Err("the margin must be a finite number".into());
            }
        }
        Ok(())
    }
}

/// r(h) = w · ((h − mean) ⊙ inv_std) + b.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardHead {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub weight: Vec<f32>,
    pub bias: f32,
}

impl RewardHead {
    /// A zero head whose standardization comes from the training states.
    pub fn standardized_on(pairs: &[FeaturePair]) -> Result<Self, String> {
        let d = feature_width(pairs)?;
        Ok(Self::standardized_over(
            d,
            pairs
                .iter()
                .flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()]),
        ))
    }

    /// A zero head standardizing with the mean and spread of `states`,
    /// each `d` wide (checked by the caller).
    pub(crate) fn standardized_over<'a>(d: usize, states: impl Iterator<Item = &'a [f32]>) -> Self {
        let mut n = 0f64;
        let mut sum = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for h in states {
            n += 1.0;
            for i in 0..d {
                sum[i] += h[i] as f64;
                sq[i] += (h[i] as f64).powi(2);
            }
        }
        let n = n.max(1.0);
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let inv_std = (0..d)
            .map(|i| {
                let var = (sq[i] / n - mean[i] * mean[i]).max(0.0);
                // A constant feature carries nothing: it is switched off.
                if var > 1e-12 {
                    (1.0 / var.sqrt()) as f32
                } else {
                    0.0
                }
            })
            .collect();
        RewardHead {
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv_std,
            weight: vec![0.0; d],
            bias: 0.0,
        }
    }

    pub fn width(&self) -> usize {
        self.weight.len()
    }

    /// The standardized features the weights multiply.
    pub(crate) fn standardize(&self, h: &[f32], out: &mut [f64]) {
        for i in 0..self.width() {
            out[i] = (h[i] - self.mean[i]) as f64 * self.inv_std[i] as f64;
        }
    }

    pub fn reward(&self, h: &[f32]) -> f64 {
        let mut x = vec![0f64; self.width()];
        self.standardize(h, &mut x);
        dot(&self.weight, &x) + self.bias as f64
    }

    pub fn check_width(&self, h: &[f32]) -> Result<(), String> {
        if h.len() != self.width() {
            return Err(format!(
                "the head reads {} features, the model gives {}",
                self.width(),
                h.len()
            ));
        }
        Ok(())
    }
}

/// The head's file in a reward model's directory.
pub const HEAD_FILE: &str = "reward_head.safetensors";

impl RewardHead {
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let d = self.width();
        let bias = [self.bias];
        write_tensors(
            &dir.join(HEAD_FILE),
            &[
                ("score.mean".into(), vec![d], &self.mean),
                ("score.inv_std".into(), vec![d], &self.inv_std),
                ("score.weight".into(), vec![1, d], &self.weight),
                ("score.bias".into(), vec![1], &bias),
            ],
        )
    }

    pub fn load(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(HEAD_FILE);
        let mut tensors = read_tensors(&path)?;
        let d = tensors
            .get("score.weight")
            .map(|(_, v)| v.len())
            .ok_or_else(|| TrainError::Format {
                path: path.clone(),
                reason: "tensor `score.weight` is missing".into(),
            })?;
        let mut head = RewardHead {
            mean: vec![0.0; d],
            inv_std: vec![0.0; d],
            weight: vec![0.0; d],
            bias: 0.0,
        };
        let mut bias = [0f32];
        load_into(
            &path,
            &mut tensors,
            vec![
                ("score.mean".into(), vec![d], &mut head.mean),
                ("score.inv_std".into(), vec![d], &mut head.inv_std),
                ("score.weight".into(), vec![1, d], &mut head.weight),
                ("score.bias".into(), vec![1], &mut bias),
            ],
        )?;
        head.bias = bias[0];
        if head
            .mean
            .iter()
            .chain(&head.inv_std)
            .chain(&head.weight)
            .chain(&bias)
            .any(|v| !v.is_finite())
        {
            return Err(TrainError::Format {
                path,
                reason: "the head holds a value that is not a finite number".into(),
            });
        }
        Ok(head)
    }
}

pub(crate) fn dot(w: &[f32], x: &[f64]) -> f64 {
    w.iter().zip(x).map(|(a, b)| *a as f64 * b).sum()
}

fn feature_width(pairs: &[FeaturePair]) -> Result<usize, String> {
    let d = pairs
        .first()
        .map(|p| p.chosen.len())
        .ok_or("no pairs to train on")?;
    if d == 0 {
        return Err("the features are empty".into());
    }
    for (i, p) in pairs.iter().enumerate() {
        if p.chosen.len() != d || p.rejected.len() != d {
            return Err(format!("pair {i} has features of another width than {d}"));
        }
        if !(0.0..=1.0).contains(&p.target) {
            return Err(format!("pair {i} has target {} outside [0, 1]", p.target));
        }
        if p.chosen.iter().chain(&p.rejected).any(|v| !v.is_finite()) {
            return Err(format!(
                "pair {i} has a feature that is not a finite number"
            ));
        }
    }
    Ok(d)
}

/// log σ(z), stable for large |z|.
pub fn log_sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        -(-z).exp().ln_1p()
    } else {
        z - z.exp().ln_1p()
    }
}

pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// One pair's loss given its two rewards, and d(loss)/d(r_chosen),
/// d(loss)/d(r_rejected).
pub fn pair_loss(
    r_chosen: f64,
    r_rejected: f64,
    target: f64,
    loss: PairLoss,
    center_coef: f64,
) -> (f64, f64, f64) {
    let d = r_chosen - r_rejected;
    let (value, dd) = match loss {
        PairLoss::BradleyTerry { margin } => {
            let z = d - margin;
            (-log_sigmoid(z), sigmoid(z) - 1.0)
        }
        PairLoss::Soft => (
            -(target * log_sigmoid(d) + (1.0 - target) * log_sigmoid(-d)),
            sigmoid(d) - target,
        ),
    };
    let s = r_chosen + r_rejected;
    let value = value + center_coef * s * s;
    let ds = 2.0 * center_coef * s;
    (value, dd + ds, -dd + ds)
}

/// Mean loss over `pairs` and its gradient with respect to the weights and
/// the bias (in f64: the head is small, and the gradient check reads it).
pub fn batch_loss(
    head: &RewardHead,
    pairs: &[&FeaturePair],
    loss: PairLoss,
    center_coef: f64,
) -> (f64, Vec<f64>, f64) {
    let width = head.width();
    let mut grad = vec![0f64; width];
    let mut grad_bias = 0f64;
    let mut total = 0f64;
    let (mut xc, mut xr) = (vec![0f64; width], vec![0f64; width]);
    let n = pairs.len().max(1) as f64;
    for p in pairs {
        head.standardize(&p.chosen, &mut xc);
        head.standardize(&p.rejected, &mut xr);
        let rc = dot(&head.weight, &xc) + head.bias as f64;
        let rr = dot(&head.weight, &xr) + head.bias as f64;
        let (value, dc, dr) = pair_loss(rc, rr, p.target, loss, center_coef);
        total += value;
        for i in 0..width {
            grad[i] += (dc * xc[i] + dr * xr[i]) / n;
        }
        grad_bias += (dc + dr) / n;
    }
    (total / n, grad, grad_bias)
}

/// What one epoch of head training measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// On the evaluation pairs, when there are any.
    pub eval_loss: Option<f64>,
    pub eval_accuracy: Option<f64>,
}

/// Trains a head with AdamW on shuffled mini-batches (seeded), reporting each
/// epoch's loss and accuracy on the training and evaluation pairs.
pub fn train_head(
    train: &[FeaturePair],
    eval: &[FeaturePair],
    config: &HeadTraining,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<(RewardHead, Vec<EpochRecord>), String> {
    config.check()?;
    let mut head = RewardHead::standardized_on(train)?;
    if !eval.is_empty() {
        let d = feature_width(eval)?;
        if d != head.width() {
            return Err(format!(
                "the evaluation pairs have {d} features, the training pairs {}",
                head.width()
            ));
        }
    }
    let records = fit(
        &mut head,
        train,
        eval,
        config,
        |h, batch| batch_loss(h, batch, config.loss, config.center_coef),
        |h, pairs| loss_and_accuracy(h, pairs, config),
        &mut on_epoch,
    );
    Ok((head, records))
}

/// The optimizer loop every head shares: seeded shuffled mini-batches,
/// AdamW on the weights (decayed) and the bias (not), and after each epoch
/// the loss and accuracy on the training and evaluation items.
pub(crate) fn fit<T>(
    head: &mut RewardHead,
    train: &[T],
    eval: &[T],
    config: &HeadTraining,
    gradient: impl Fn(&RewardHead, &[&T]) -> (f64, Vec<f64>, f64),
    measure: impl Fn(&RewardHead, &[T]) -> (f64, f64),
    on_epoch: &mut impl FnMut(&EpochRecord),
) -> Vec<EpochRecord> {
    let mut adam = AdamW::new(
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
        &[head.width(), 1],
    );
    let mut rng = SplitMix::new(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut records = Vec::with_capacity(config.epochs);
    for epoch in 1..=config.epochs {
        rng.shuffle(&mut order);
        for batch in order.chunks(config.batch_pairs) {
            let items: Vec<&T> = batch.iter().map(|&i| &train[i]).collect();
            let (_, grad, grad_bias) = gradient(head, &items);
            let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
            let grad_bias = [grad_bias as f32];
            let mut bias = [head.bias];
            adam.step(
                &mut [&mut head.weight, &mut bias],
                &[&grad, &grad_bias],
                &[true, false],
                config.lr,
            );
            head.bias = bias[0];
        }
        let (train_loss, train_accuracy) = measure(head, train);
        let (eval_loss, eval_accuracy) = if eval.is_empty() {
            (None, None)
        } else {
            let (l, a) = measure(head, eval);
            (Some(l), Some(a))
        };
        let record = EpochRecord {
            epoch,
            train_loss,
            train_accuracy,
            eval_loss,
            eval_accuracy,
        };
        on_epoch(&record);
        records.push(record);
    }
    records
}

/// Mean loss and the fraction of pairs ranked as their label says (the
/// chosen reply above, or for a soft target below 1/2, below; ties count
/// half).
fn loss_and_accuracy(
    head: &RewardHead,
    pairs: &[FeaturePair],
    config: &HeadTraining,
) -> (f64, f64) {
    let refs: Vec<&FeaturePair> = pairs.iter().collect();
    let (loss, _, _) = batch_loss(head, &refs, config.loss, config.center_coef);
    let right: f64 = pairs
        .iter()
        .map(|p| {
            let d = head.reward(&p.chosen) - head.reward(&p.rejected);
            let want_positive = p.target >= 0.5;
            if d == 0.0 {
                0.5
            } else if (d > 0.0) == want_positive {
                1.0
            } else {
                0.0
            }
        })
        .sum();
    (loss, right / pairs.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_pairs(n: usize, d: usize, seed: u64, truth: &[f64]) -> Vec<FeaturePair> {
        let mut rng = SplitMix::new(seed);
        let mut gauss = move || rng.normal();
        (0..n)
            .map(|_| {
                let a: Vec<f32> = (0..d)
                    .map(|i| (gauss() * (1.0 + i as f64)) as f32)
                    .collect();
                let b: Vec<f32> = (0..d)
                    .map(|i| (gauss() * (1.0 + i as f64)) as f32)
                    .collect();
                let r =
                    |h: &[f32]| -> f64 { h.iter().zip(truth).map(|(x, w)| *x as f64 * w).sum() };
                let p = sigmoid(r(&a) - r(&b));
                // The better one by the true reward is "chosen".
                if p >= 0.5 {
                    FeaturePair {
                        chosen: a,
                        rejected: b,
                        target: p,
                    }
                } else {
                    FeaturePair {
                        chosen: b,
                        rejected: a,
                        target: 1.0 - p,
                    }
                }
            })
            .collect()
    }

    #[test]
    fn gradients_match_finite_differences_for_every_loss() {
        let truth = [0.5, -0.3, 0.2, 0.0];
        let pairs = random_pairs(12, 4, 7, &truth);
        let mut head = RewardHead::standardized_on(&pairs).unwrap();
        head.weight = vec![0.3, -0.2, 0.1, 0.4];
        head.bias = 0.25;
        let refs: Vec<&FeaturePair> = pairs.iter().collect();
        for (loss, center) in [
            (PairLoss::BradleyTerry { margin: 0.0 }, 0.0),
            (PairLoss::BradleyTerry { margin: 0.7 }, 0.05),
            (PairLoss::Soft, 0.0),
            (PairLoss::Soft, 0.1),
        ] {
            let (_, grad, grad_bias) = batch_loss(&head, &refs, loss, center);
            // Central differences of the loss in f64, stepping each weight.
            let at = |w: &[f32], b: f32| {
                let h = RewardHead {
                    weight: w.to_vec(),
                    bias: b,
                    ..head.clone()
                };
                batch_loss(&h, &refs, loss, center).0
            };
            let eps = 1e-3f32;
            for i in 0..4 {
                let (mut up, mut down) = (head.weight.clone(), head.weight.clone());
                up[i] += eps;
                down[i] -= eps;
                let numeric =
                    (at(&up, head.bias) - at(&down, head.bias)) / ((up[i] - down[i]) as f64);
                let rel = (numeric - grad[i]).abs() / numeric.abs().max(1e-6);
                assert!(
                    rel < 1e-3,
                    "{loss:?} c={center} w{i}: {numeric} vs {}",
                    grad[i]
                );
            }
            let numeric = (at(&head.weight, head.bias + eps) - at(&head.weight, head.bias - eps))
                / ((head.bias + eps) as f64 - (head.bias - eps) as f64);
            if center == 0.0 {
                // Pairwise terms do not see a shared offset.
                assert!(grad_bias.abs() < 1e-12 && numeric.abs() < 1e-6);
            } else {
                let rel = (numeric - grad_bias).abs() / numeric.abs().max(1e-6);
                assert!(rel < 1e-3, "{loss:?} bias: {numeric} vs {grad_bias}");
            }
        }
    }

    #[test]
    fn the_losses_have_their_known_values() {
        let ln2 = std::f64::consts::LN_2;
        let bt = PairLoss::BradleyTerry { margin: 0.0 };
        // At d = 0 both losses are ln 2; soft at p = 1 is Bradley–Terry.
        assert!((pair_loss(1.0, 1.0, 0.8, bt, 0.0).0 - ln2).abs() < 1e-12);
        assert!((pair_loss(1.0, 1.0, 0.8, PairLoss::Soft, 0.0).0 - ln2).abs() < 1e-12);
        for d in [-3.0, -0.5, 0.0, 2.0, 40.0] {
            let a = pair_loss(d, 0.0, 1.0, bt, 0.0);
            let b = pair_loss(d, 0.0, 1.0, PairLoss::Soft, 0.0);
            assert!((a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12);
            assert!(a.0.is_finite());
        }
        // −log σ(−40) is 40 to double precision: no overflow on the way.
        assert!((pair_loss(-40.0, 0.0, 1.0, bt, 0.0).0 - 40.0).abs() < 1e-9);
        // The soft loss's minimum in d sits where σ(d) = p.
        for p in [0.55f64, 0.7, 0.9] {
            let (_, g, _) = pair_loss((p / (1.0 - p)).ln(), 0.0, p, PairLoss::Soft, 0.0);
            assert!(g.abs() < 1e-12, "p={p}: slope {g}");
        }
        // A margin asks for a bigger gap before the loss falls to ln 2.
        let m = PairLoss::BradleyTerry { margin: 1.0 };
        assert!((pair_loss(1.0, 0.0, 1.0, m, 0.0).0 - ln2).abs() < 1e-12);
        // Centring adds c·(r₁ + r₂)².
        let (v, _, _) = pair_loss(2.0, 1.0, 1.0, bt, 0.5);
        assert!((v - (-log_sigmoid(1.0) + 0.5 * 9.0)).abs() < 1e-12);
    }

    #[test]
    fn a_head_recovers_a_known_reward_from_its_comparisons() {
        let truth = [1.0, -0.5, 0.0, 0.25, 0.0, 0.0];
        let train = random_pairs(600, 6, 1, &truth);
        let eval = random_pairs(300, 6, 2, &truth);
        let config = HeadTraining {
            epochs: 40,
            lr: 3e-2,
            weight_decay: 0.0,
            ..Default::default()
        };
        let (head, records) = train_head(&train, &eval, &config, |_| {}).unwrap();
        let last = records.last().unwrap();
        // The labels follow the true reward, so a head that learnt it ranks
        // nearly every unseen pair right.
        assert!(last.eval_accuracy.unwrap() > 0.93, "{last:?}");
        assert!(last.train_loss < records[0].train_loss);
        // Its weights, mapped back to raw features, point like the truth.
        let raw: Vec<f64> = head
            .weight
            .iter()
            .zip(&head.inv_std)
            .map(|(w, s)| *w as f64 * *s as f64)
            .collect();
        let cos = raw.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>()
            / (raw.iter().map(|a| a * a).sum::<f64>().sqrt()
                * truth.iter().map(|b| b * b).sum::<f64>().sqrt());
        assert!(cos > 0.95, "direction cosine {cos}");
    }

    #[test]
    fn soft_labels_are_matched_in_probability() {
        // One feature; each pair's target is σ of the true gap, so the soft
        // loss's optimum is the true reward itself: σ(d) tracks p.
        let truth = [0.8];
        let train = random_pairs(800, 1, 3, &truth);
        let config = HeadTraining {
            loss: PairLoss::Soft,
            epochs: 60,
            lr: 3e-2,
            weight_decay: 0.0,
            ..Default::default()
        };
        let (head, _) = train_head(&train, &[], &config, |_| {}).unwrap();
        let w = head.weight[0] as f64 * head.inv_std[0] as f64;
        assert!((w - 0.8).abs() < 0.05, "learnt {w}, truth 0.8");
    }

    #[test]
    fn a_saved_head_reads_back_the_same_and_a_broken_one_is_refused() {
        let pairs = random_pairs(20, 3, 5, &[1.0, 0.0, -1.0]);
        let mut head = RewardHead::standardized_on(&pairs).unwrap();
        head.weight = vec![0.5, -1.5, 2.0];
        head.bias = -0.125;
        let dir = tempfile::tempdir().unwrap();
        head.save(dir.path()).unwrap();
        assert_eq!(RewardHead::load(dir.path()).unwrap(), head);
        std::fs::write(dir.path().join(HEAD_FILE), b"not safetensors").unwrap();
        let err = RewardHead::load(dir.path()).unwrap_err();
        assert!(
            err.is_input_error() && err.to_string().contains(HEAD_FILE),
            "{err}"
        );
    }

    #[test]
    fn bad_pairs_are_refused_with_their_index() {
        let ok = FeaturePair {
            chosen: vec![1.0, 2.0],
            rejected: vec![0.0, 1.0],
            target: 1.0,
        };
        let short = FeaturePair {
            chosen: vec![1.0],
            ..ok.clone()
        };
        let nan = FeaturePair {
            rejected: vec![f32::NAN, 0.0],
            ..ok.clone()
        };
        let p = FeaturePair {
            target: 1.5,
            ..ok.clone()
        };
        for (bad, needle) in [(short, "pair 1"), (nan, "pair 1"), (p, "pair 1")] {
            let err =
                train_head(&[ok.clone(), bad], &[], &HeadTraining::default(), |_| {}).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        assert!(train_head(&[], &[], &HeadTraining::default(), |_| {}).is_err());
        let zero = HeadTraining {
            epochs: 0,
            ..Default::default()
        };
        assert!(train_head(&[ok], &[], &zero, |_| {}).is_err());
    }
}
