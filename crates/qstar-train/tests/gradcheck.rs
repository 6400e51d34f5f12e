//! The backward pass against central finite differences, in f64, on tiny
//! models: every trainable tensor must get a gradient, and every checked
//! entry must agree to a relative error of 1e-4.

use qstar_train::rng::SplitMix;
use qstar_train::{Lora, LoraConfig, Model, ModelConfig, Sequence, Trainable, Weights};

fn tiny(tied: bool) -> ModelConfig {
    ModelConfig {
        n_layer: 2,
        n_embd: 16,
        n_head: 4,
        n_head_kv: 2,
        n_rot: 4,
        n_ff: 24,
        n_vocab: 11,
        context_length: 16,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_output: tied,
    }
}

/// Weights large enough that every path matters (the training init's 0.02
/// leaves attention almost uniform), norms away from 1.
fn weights(c: &ModelConfig, seed: u64) -> Weights<f64> {
    let mut w = Weights::<f64>::init(c, seed);
    let mut rng = SplitMix::new(seed + 1);
    for (name, _, t) in w.tensors_mut() {
        for x in t.iter_mut() {
            if name.ends_with("norm.weight") {
                *x = 0.5 + rng.uniform();
            } else {
                *x = rng.normal() * 0.4;
            }
        }
    }
    w
}

fn batch() -> Vec<Sequence> {
    vec![
        Sequence {
            tokens: vec![1, 5, 2, 9, 3, 3, 10],
            predict: vec![false, true, true, false, true, true, false],
        },
        Sequence::all(vec![4, 0, 7, 8, 6]),
    ]
}

/// A loss with a different weight on every log-probability, so the check
/// covers any d(loss)/d(log p), not only the mean cross-entropy's.
fn loss_weights(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.3 + 0.17 * i as f64 - 0.05 * (i % 3) as f64)
        .collect()
}

fn loss(model: &Model<f64>, batch: &[Sequence], seed: u64) -> f64 {
    let (logps, _) = model.forward(batch, seed).expect("forward");
    let w = loss_weights(logps.len());
    -logps.iter().zip(&w).map(|(l, w)| l * w).sum::<f64>()
}

/// Checks up to `per_tensor` entries of each trainable tensor (all of a
/// small one), spread over the tensor.
fn check(mut model: Model<f64>, trainable: Trainable, seed: u64) {
    let batch = batch();
    let (logps, tape) = model.forward(&batch, seed).expect("forward");
    let dlogp: Vec<f64> = loss_weights(logps.len()).iter().map(|w| -w).collect();
    let mut grads = model.grads(trainable);
    model.backward(tape, &dlogp, &mut grads).expect("backward");
    let analytic: Vec<(String, Vec<f64>)> = grads
        .tensors()
        .into_iter()
        .map(|(n, _, g)| (n, g.to_vec()))
        .collect();
    assert!(!analytic.is_empty());
    // The loss is about 30, so f64 rounding costs ~30·1e-16/eps in the
    // difference and truncation ~eps²: 1e-5 keeps both far below 1e-4 of
    // the smallest entries checked (a 1e-7 step already shows the rounding).
    let eps = 1e-5;
    let mut checked = 0;
    for (name, g) in &analytic {
        let norm: f64 = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(norm > 1e-8, "`{name}` got no gradient");
        let per_tensor = 24;
        let step = (g.len() / per_tensor).max(1);
        for i in (0..g.len()).step_by(step) {
            let entry = |m: &mut Model<f64>, delta: f64| {
                let slot = match trainable {
                    Trainable::Full => m.base.tensors_mut(),
                    Trainable::Lora => m.lora.as_mut().expect("adapter").tensors_mut(),
                };
                for (n, _, t) in slot {
                    if &n == name {
                        t[i] += delta;
                    }
                }
            };
            entry(&mut model, eps);
            let up = loss(&model, &batch, seed);
            entry(&mut model, -2.0 * eps);
            let down = loss(&model, &batch, seed);
            entry(&mut model, eps);
            let numeric = (up - down) / (2.0 * eps);
            let scale = g[i].abs().max(numeric.abs()).max(1e-7);
            let rel = (g[i] - numeric).abs() / scale;
            assert!(
                rel <= 1e-4,
                "`{name}`[{i}]: backward {} vs finite difference {numeric} (relative error {rel:.2e})",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} entries checked");
}

#[test]
fn full_fine_tuning_gradients_match_finite_differences() {
    for tied in [true, false] {
        let c = tiny(tied);
        let model = Model::new(c.clone(), weights(&c, 7), None).expect("model");
        check(model, Trainable::Full, 0);
    }
}

#[test]
fn lora_gradients_match_finite_differences_with_and_without_dropout() {
    let c = tiny(true);
    for dropout in [0.0, 0.25] {
        let config = LoraConfig {
            rank: 3,
            alpha: 6.0,
            dropout,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        };
        let mut lora = Lora::<f64>::init(&c, config, 3).expect("adapter");
        // B starts at zero, where A's gradient vanishes: start elsewhere.
        let mut rng = SplitMix::new(11);
        for (_, _, t) in lora.tensors_mut() {
            for x in t.iter_mut() {
                *x = rng.normal() * 0.3;
            }
        }
        let model = Model::new(c.clone(), weights(&c, 9), Some(lora)).expect("model");
        // The dropout mask follows the seed, so the loss is a fixed function.
        check(model, Trainable::Lora, 42);
    }
}

#[test]
fn a_sequence_scores_the_same_alone_and_in_a_batch() {
    let c = tiny(false);
    let model = Model::new(c.clone(), weights(&c, 5), None).expect("model");
    let batch = batch();
    let (together, _) = model.forward(&batch, 0).expect("forward");
    let mut alone = Vec::new();
    for s in &batch {
        alone.extend(
            model
                .forward(std::slice::from_ref(s), 0)
                .expect("forward")
                .0,
        );
    }
    assert_eq!(together.len(), alone.len());
    for (a, b) in together.iter().zip(&alone) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let c = tiny(true);
    let model = Model::new(c.clone(), weights(&c, 5), None).expect("model");
    let long = Sequence::all(vec![1; 17]);
    let oov = Sequence::all(vec![1, 11]);
    let past_end = Sequence {
        tokens: vec![1, 2],
        predict: vec![true, true],
    };
    let ragged = Sequence {
        tokens: vec![1, 2],
        predict: vec![true],
    };
    for s in [long, oov, past_end, ragged] {
        assert!(model.forward(&[s], 0).is_err());
    }
}
