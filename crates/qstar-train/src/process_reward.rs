//! A process reward model's head: a scalar on the backbone's state at the
//! end of each step, read as the logit of "this step still leads to the
//! right answer".
//!
//! Each step is one training item with a target in [0, 1]: Math-Shepherd's
//! soft label (the fraction of rollouts from the step that reach the right
//! answer) or its hard label (whether any does). The loss is the binary
//! cross-entropy −[t·log σ(z) + (1 − t)·log σ(−z)], z = r(h), minimised
//! where σ(z) = t, so the soft labels are distilled as probabilities. The
//! head is the reward model's (standardized features, one dot product), so
//! both kinds of model load and score alike.

use crate::reward::{dot, fit, log_sigmoid, sigmoid, EpochRecord, HeadTraining, RewardHead};

/// One step as features: the state at its end and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStep {
    pub state: Vec<f32>,
    /// P(the solution can still be finished right from here), in [0, 1].
    pub target: f64,
}

/// One step's loss given its logit, and d(loss)/d(logit).
pub fn step_loss(z: f64, target: f64) -> (f64, f64) {
    (
        -(target * log_sigmoid(z) + (1.0 - target) * log_sigmoid(-z)),
        sigmoid(z) - target,
    )
}

/// Mean loss over `steps` and its gradient with respect to the weights and
/// the bias.
pub fn step_batch_loss(head: &RewardHead, steps: &[&FeatureStep]) -> (f64, Vec<f64>, f64) {
    let width = head.width();
    let mut grad = vec![0f64; width];
    let mut grad_bias = 0f64;
    let mut total = 0f64;
    let mut x = vec![0f64; width];
    let n = steps.len().max(1) as f64;
    for s in steps {
        head.standardize(&s.state, &mut x);
        let z = dot(&head.weight, &x) + head.bias as f64;
        let (value, dz) = step_loss(z, s.target);
        total += value;
        for i in 0..width {
            grad[i] += dz * x[i] / n;
        }
        grad_bias += dz / n;
    }
    (total / n, grad, grad_bias)
}

/// Mean loss, and the share of steps on the side of 1/2 their label is on
/// (a logit of exactly 0 counts half).
fn loss_and_accuracy(head: &RewardHead, steps: &[FeatureStep]) -> (f64, f64) {
    let refs: Vec<&FeatureStep> = steps.iter().collect();
    let (loss, _, _) = step_batch_loss(head, &refs);
    let right: f64 = steps
        .iter()
        .map(|s| {
            let z = head.reward(&s.state);
            if z == 0.0 {
                0.5
            } else {
                f64::from(u8::from((z > 0.0) == (s.target >= 0.5)))
            }
        })
        .sum();
    (loss, right / steps.len().max(1) as f64)
}

fn step_width(steps: &[FeatureStep], what: &str) -> Result<usize, String> {
    let d = steps
        .first()
        .map(|s| s.state.len())
        .ok_or(format!("no {what} steps"))?;
    if d == 0 {
        return Err("the features are empty".into());
    }
    for (i, s) in steps.iter().enumerate() {
        if s.state.len() != d {
            return Err(format!(
                "{what} step {i} has features of another width than {d}"
            ));
        }
        if !(0.0..=1.0).contains(&s.target) {
            return Err(format!(
                "{what} step {i} has target {} outside [0, 1]",
                s.target
            ));
        }
        if s.state.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "{what} step {i} has a feature that is not a finite number"
            ));
        }
    }
    Ok(d)
}

/// Trains a step head (the loop and optimizer of [`crate::reward::train_head`];
/// `config.loss` and `config.center_coef` are pairwise settings and are not
/// used here; `batch_pairs` is the number of steps per batch).
pub fn train_step_head(
    train: &[FeatureStep],
    eval: &[FeatureStep],
    config: &HeadTraining,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<(RewardHead, Vec<EpochRecord>), String> {
    config.check()?;
    let d = step_width(train, "training")?;
    if !eval.is_empty() && step_width(eval, "evaluation")? != d {
        return Err(
            "the evaluation steps have another feature width than the training steps".into(),
        );
    }
    let mut head = RewardHead::standardized_over(d, train.iter().map(|s| s.state.as_slice()));
    let records = fit(
        &mut head,
        train,
        eval,
        config,
        step_batch_loss,
        loss_and_accuracy,
        &mut on_epoch,
    );
    Ok((head, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;

    /// Steps whose true probability of success is σ(truth · h).
    fn steps(n: usize, seed: u64, truth: &[f64], soft: bool) -> Vec<FeatureStep> {
        let mut rng = SplitMix::new(seed);
        (0..n)
            .map(|_| {
                let state: Vec<f32> = truth
                    .iter()
                    .enumerate()
                    .map(|(i, _)| (rng.normal() * (1.0 + i as f64)) as f32)
                    .collect();
                let p = sigmoid(state.iter().zip(truth).map(|(x, w)| *x as f64 * w).sum());
                let target = if soft {
                    p
                } else {
                    f64::from(u8::from(rng.uniform() < p))
                };
                FeatureStep { state, target }
            })
            .collect()
    }

    #[test]
    fn the_gradient_matches_finite_differences() {
        let data = steps(10, 3, &[0.7, -0.4, 0.1], true);
        let mut head = RewardHead::standardized_over(3, data.iter().map(|s| s.state.as_slice()));
        head.weight = vec![0.2, 0.5, -0.3];
        head.bias = -0.1;
        let refs: Vec<&FeatureStep> = data.iter().collect();
        let (_, grad, grad_bias) = step_batch_loss(&head, &refs);
        let at = |w: &[f32], b: f32| {
            let h = RewardHead {
                weight: w.to_vec(),
                bias: b,
                ..head.clone()
            };
            step_batch_loss(&h, &refs).0
        };
        let eps = 1e-3f32;
        for i in 0..3 {
            let (mut up, mut down) = (head.weight.clone(), head.weight.clone());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (at(&up, head.bias) - at(&down, head.bias)) / (up[i] - down[i]) as f64;
            assert!(
                (numeric - grad[i]).abs() / numeric.abs().max(1e-6) < 1e-3,
                "w{i}"
            );
        }
        let numeric = (at(&head.weight, head.bias + eps) - at(&head.weight, head.bias - eps))
            / ((head.bias + eps) as f64 - (head.bias - eps) as f64);
        assert!((numeric - grad_bias).abs() / numeric.abs().max(1e-6) < 1e-3);
    }

    #[test]
    fn the_loss_has_its_known_values() {
        let ln2 = std::f64::consts::LN_2;
        assert!((step_loss(0.0, 0.3).0 - ln2).abs() < 1e-12);
        // Its minimum in z is where σ(z) equals the target.
        for t in [0.1f64, 0.5, 0.8] {
            assert!(step_loss((t / (1.0 - t)).ln(), t).1.abs() < 1e-12);
        }
        // A hard label far on the wrong side: linear, no overflow.
        assert!((step_loss(-50.0, 1.0).0 - 50.0).abs() < 1e-9);
    }

    #[test]
    fn soft_and_hard_labels_recover_the_true_probabilities() {
        let truth = [1.0, -0.5, 0.25, 0.0];
        let config = HeadTraining {
            epochs: 60,
            lr: 3e-2,
            weight_decay: 0.0,
            ..HeadTraining::default()
        };
        let eval = steps(400, 9, &truth, true);
        for soft in [true, false] {
            let train = steps(1500, 1, &truth, soft);
            let (head, records) = train_step_head(&train, &[], &config, |_| {}).expect("train");
            assert!(records[59].train_loss < records[0].train_loss);
            // Predicted probabilities against the true ones on fresh steps.
            let err: f64 = eval
                .iter()
                .map(|s| (sigmoid(head.reward(&s.state)) - s.target).abs())
                .sum::<f64>()
                / eval.len() as f64;
            assert!(err < if soft { 0.02 } else { 0.06 }, "soft={soft}: {err}");
        }
    }

    #[test]
    fn bad_steps_are_refused_with_their_index() {
        let config = HeadTraining::default();
        let good = FeatureStep {
            state: vec![1.0, 2.0],
            target: 0.5,
        };
        let cases = [
            (
                vec![
                    good.clone(),
                    FeatureStep {
                        state: vec![1.0],
                        target: 0.5,
                    },
                ],
                "step 1",
            ),
            (
                vec![
                    good.clone(),
                    FeatureStep {
                        state: vec![1.0, 2.0],
                        target: 1.5,
                    },
                ],
                "outside",
            ),
            (
                vec![FeatureStep {
                    state: vec![f32::NAN, 0.0],
                    target: 0.0,
                }],
                "finite",
            ),
        ];
        for (data, word) in cases {
            let err = train_step_head(&data, &[], &config, |_| {}).expect_err("refused");
            assert!(err.contains(word), "{err}");
        }
        assert!(train_step_head(&[], &[], &config, |_| {}).is_err());
    }
}
