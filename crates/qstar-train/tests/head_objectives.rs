//! Reward and process-reward models trained through the backbone, on tiny
//! models: the gradient of the pairwise and per-step losses through the
//! score head and the whole network against central finite differences in
//! f64; a LoRA run that learns a preference it can only see through the
//! tokens; and a run killed at a step that continues to the same curve,
//! the head's weights included.

use std::panic::{catch_unwind, AssertUnwindSafe};

use qstar_train::head_objectives::{
    pair_pass, step_pass, PairwiseReward, ProcessReward, ScoredPair, ScoredSteps,
};
use qstar_train::optim::{AdamWConfig, Decay};
use qstar_train::reward::{PairLoss, RewardHead};
use qstar_train::rng::SplitMix;
use qstar_train::run::{train_objective, StepRecord, TrainConfig};
use qstar_train::score_head::ScoreHead;
use qstar_train::{Lora, LoraConfig, Model, ModelConfig, Sequence, Trainable, Weights};

fn tiny(n_vocab: usize) -> ModelConfig {
    ModelConfig {
        n_layer: 2,
        n_embd: 16,
        n_head: 4,
        n_head_kv: 2,
        n_rot: 4,
        n_ff: 24,
        n_vocab,
        context_length: 24,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_output: true,
    }
}

fn all_targets() -> Vec<String> {
    [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    .map(String::from)
    .to_vec()
}

fn scored(tokens: Vec<u32>) -> Sequence {
    let predict = vec![false; tokens.len()];
    Sequence { tokens, predict }
}

/// Pairs over a vocabulary of `v`: the chosen reply repeats the prompt's
/// last token, the rejected one is random.
fn pairs(n: usize, v: u32, seed: u64, target: f64) -> Vec<ScoredPair> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            let prompt: Vec<u32> = (0..3 + rng.below(3))
                .map(|_| rng.below(v as usize) as u32)
                .collect();
            let last = *prompt.last().expect("prompt");
            let len = 2 + rng.below(3);
            let good: Vec<u32> = prompt.iter().copied().chain(vec![last; len]).collect();
            let bad: Vec<u32> = prompt
                .iter()
                .copied()
                .chain((0..len).map(|_| rng.below(v as usize) as u32))
                .collect();
            ScoredPair {
                chosen: scored(good),
                rejected: scored(bad),
                target,
            }
        })
        .collect()
}

/// Solutions whose steps are a token and a separator, labelled by whether
/// the token is in the lower half of the vocabulary: the state at the
/// separator, which the head reads, must attend to the token before it.
fn steps(n: usize, v: u32, seed: u64) -> Vec<ScoredSteps> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            let mut tokens = vec![rng.below(v as usize) as u32];
            let mut ends = Vec::new();
            for _ in 0..2 + rng.below(3) {
                let tok = 1 + rng.below(v as usize - 1) as u32;
                tokens.push(tok);
                tokens.push(0);
                ends.push((tokens.len() - 1, if tok < v / 2 { 0.9 } else { 0.1 }));
            }
            ScoredSteps {
                sequence: scored(tokens),
                ends,
            }
        })
        .collect()
}

/// A head with a spread-out standardization and weights, so every term of
/// its gradient matters.
fn random_head<T: qstar_train::Real>(d: usize, seed: u64) -> ScoreHead<T> {
    let mut rng = SplitMix::new(seed);
    let head = RewardHead {
        mean: (0..d).map(|_| rng.normal() as f32 * 0.3).collect(),
        inv_std: (0..d).map(|_| 0.5 + rng.uniform() as f32).collect(),
        weight: (0..d).map(|_| rng.normal() as f32 * 0.5).collect(),
        bias: 0.25,
    };
    ScoreHead::from_reward_head(&head)
}

fn random_model(trainable: Trainable) -> Model<f64> {
    let c = tiny(11);
    let mut weights = Weights::<f64>::init(&c, 3);
    let mut rng = SplitMix::new(4);
    for (name, _, t) in weights.tensors_mut() {
        for x in t.iter_mut() {
            *x = if name.ends_with("norm.weight") {
                0.5 + rng.uniform()
            } else {
                rng.normal() * 0.4
            };
        }
    }
    let lora = (trainable == Trainable::Lora).then(|| {
        let mut lora = Lora::<f64>::init(
            &c,
            LoraConfig {
                rank: 2,
                alpha: 4.0,
                dropout: 0.2,
                targets: all_targets(),
            },
            5,
        )
        .expect("adapter");
        for (_, _, t) in lora.tensors_mut() {
            for x in t.iter_mut() {
                *x = rng.normal() * 0.3;
            }
        }
        lora
    });
    Model::new(c.clone(), weights, lora)
        .expect("model")
        .with_head(random_head(c.n_embd, 6))
        .expect("head")
}

/// Every sampled trainable entry's gradient against a central difference
/// of `loss`; `grad` fills the analytic gradients.
fn check(
    model: &mut Model<f64>,
    trainable: Trainable,
    grad: &dyn Fn(&Model<f64>, &mut qstar_train::Grads<f64>),
    loss: &dyn Fn(&Model<f64>) -> f64,
) {
    let mut grads = model.grads(trainable);
    grad(model, &mut grads);
    let analytic: Vec<(String, Vec<f64>)> = grads
        .tensors()
        .into_iter()
        .map(|(n, _, g)| (n, g.to_vec()))
        .collect();
    assert!(analytic.iter().any(|(n, _)| n == "score.weight"));
    let eps = 1e-5;
    let mut checked = 0;
    for (name, g) in &analytic {
        for i in (0..g.len()).step_by((g.len() / 5).max(1)) {
            let nudge = |m: &mut Model<f64>, delta: f64| {
                let mut tensors = match trainable {
                    Trainable::Full => m.base.tensors_mut(),
                    Trainable::Lora => m.lora.as_mut().expect("adapter").tensors_mut(),
                };
                tensors.extend(m.head.as_mut().expect("head").params.tensors_mut());
                for (n, _, t) in tensors {
                    if &n == name {
                        t[i] += delta;
                    }
                }
            };
            nudge(model, eps);
            let up = loss(model);
            nudge(model, -2.0 * eps);
            let down = loss(model);
            nudge(model, eps);
            let numeric = (up - down) / (2.0 * eps);
            // (A pairwise loss without centring leaves the bias's gradient
            // exactly 0, where the difference is rounding noise.)
            let scale = g[i].abs().max(numeric.abs()).max(1e-6);
            assert!(
                (g[i] - numeric).abs() / scale <= 1e-4,
                "`{name}`[{i}]: backward {} vs finite difference {numeric}",
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} entries checked");
}

#[test]
fn pairwise_gradients_through_the_head_and_the_model_match_finite_differences() {
    let data = pairs(3, 11, 7, 0.8);
    let refs: Vec<&ScoredPair> = data.iter().collect();
    for (trainable, loss, center) in [
        (Trainable::Lora, PairLoss::Soft, 0.0),
        (Trainable::Lora, PairLoss::BradleyTerry { margin: 0.5 }, 0.1),
        (
            Trainable::Full,
            PairLoss::BradleyTerry { margin: 0.0 },
            0.05,
        ),
    ] {
        let seed = 9;
        let mut model = random_model(trainable);
        check(
            &mut model,
            trainable,
            &|m, g| {
                pair_pass(m, &refs, loss, center, Some(seed), Some((g, 1.0))).expect("backward");
            },
            &|m| {
                pair_pass(m, &refs, loss, center, Some(seed), None)
                    .expect("forward")
                    .iter()
                    .map(|o| o.loss)
                    .sum()
            },
        );
    }
}

#[test]
fn per_step_gradients_through_the_head_and_the_model_match_finite_differences() {
    let data = steps(3, 11, 8);
    let refs: Vec<&ScoredSteps> = data.iter().collect();
    for trainable in [Trainable::Lora, Trainable::Full] {
        let seed = 10;
        let mut model = random_model(trainable);
        check(
            &mut model,
            trainable,
            &|m, g| {
                step_pass(m, &refs, Some(seed), Some((g, 0.5))).expect("backward");
            },
            &|m| {
                0.5 * step_pass(m, &refs, Some(seed), None)
                    .expect("forward")
                    .iter()
                    .map(|o| o.loss)
                    .sum::<f64>()
            },
        );
    }
}

fn run_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        max_steps: None,
        batch_tokens: 80,
        micro_tokens: 40,
        lr: 1e-2,
        warmup_steps: 2,
        decay: Decay::Cosine,
        min_lr_ratio: 0.1,
        max_grad_norm: 1.0,
        adamw: AdamWConfig::default(),
        seed: 3,
        checkpoint_every: 3,
        eval_every: 4,
    }
}

/// A rank-8 adapter and a zero head (standardized to unit spread): the
/// objectives must learn the head too, not only refine a fitted one.
fn lora_model() -> Model<f32> {
    let c = tiny(12);
    let lora = Lora::init(
        &c,
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: all_targets(),
        },
        1,
    )
    .expect("adapter");
    let head = RewardHead {
        mean: vec![0.0; c.n_embd],
        inv_std: vec![1.0; c.n_embd],
        weight: vec![0.0; c.n_embd],
        bias: 0.0,
    };
    Model::new(c.clone(), Weights::init(&c, 2), Some(lora))
        .expect("model")
        .with_head(ScoreHead::from_reward_head(&head))
        .expect("head")
}

fn read_metrics(dir: &std::path::Path) -> Vec<StepRecord> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a metrics line"))
        .collect()
}

#[test]
fn a_lora_reward_model_learns_a_preference_only_the_tokens_show() {
    let train = pairs(128, 12, 1, 1.0);
    let eval = pairs(24, 12, 2, 1.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = lora_model();
    let objective = PairwiseReward {
        data: &train,
        eval: &eval,
        loss: PairLoss::BradleyTerry { margin: 0.0 },
        center_coef: 0.0,
    };
    let summary = train_objective(
        &mut model,
        Trainable::Lora,
        &objective,
        &run_config(4),
        dir.path(),
        "key",
        &mut |_, _, _| {},
    )
    .expect("train");
    let metrics = read_metrics(dir.path());
    assert_eq!(metrics.len(), summary.steps);
    // A zero head gives every reply the same reward: loss ln 2, margin 0.
    let first = &metrics[0];
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() < 1e-9,
        "{}",
        first.loss
    );
    let lens: Vec<usize> = train
        .iter()
        .map(|p| p.chosen.tokens.len() + p.rejected.tokens.len())
        .collect();
    let planned = qstar_train::run::plan(&lens, 4, 80, 3);
    assert_eq!(
        first.predicted,
        planned[0].examples.len(),
        "one term per pair"
    );
    // Held-out pairs of the same kind are ranked right, well above chance
    // (each training step's own figures, over four or five pairs, are
    // noisy; the 24 held-out pairs are the measure).
    let last = metrics.last().expect("a step");
    let eval_loss = last.eval_loss.expect("evaluated at the end");
    assert!(eval_loss < 0.65, "held-out loss {eval_loss}");
    assert!(last.metrics["eval_accuracy"] >= 0.7, "{:?}", last.metrics);
    assert!(last.metrics["eval_mean_margin"] > 0.3, "{:?}", last.metrics);
    // The head moved, and so did the adapter.
    let head = model.head.as_ref().expect("head");
    assert!(head.params.weight.iter().any(|&w| w != 0.0));
    let lora = model.lora.as_ref().expect("adapter");
    assert!(lora
        .tensors()
        .iter()
        .any(|(n, _, t)| n.ends_with("lora_b") && t.iter().any(|&v| v != 0.0)));
}

#[test]
fn a_process_reward_model_learns_its_step_labels() {
    let train = steps(120, 12, 3);
    let eval = steps(24, 12, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = lora_model();
    let objective = ProcessReward {
        data: &train,
        eval: &eval,
    };
    train_objective(
        &mut model,
        Trainable::Lora,
        &objective,
        &run_config(6),
        dir.path(),
        "key",
        &mut |_, _, _| {},
    )
    .expect("train");
    let metrics = read_metrics(dir.path());
    // BCE against targets 0.9 / 0.1 starts at ln 2 and cannot fall below
    // their entropy, 0.325.
    assert!((metrics[0].loss - std::f64::consts::LN_2).abs() < 1e-9);
    let last = metrics.last().expect("a step");
    assert!(last.loss < 0.45, "the loss fell only to {}", last.loss);
    assert!(last.metrics["eval_accuracy"] >= 0.9, "{:?}", last.metrics);
}

#[test]
fn a_reward_run_killed_at_a_step_continues_to_the_same_curve_and_head() {
    let train = pairs(12, 12, 5, 0.7);
    let eval = pairs(4, 12, 6, 0.7);
    let objective = PairwiseReward {
        data: &train,
        eval: &eval,
        loss: PairLoss::Soft,
        center_coef: 0.01,
    };
    let run = |dir: &std::path::Path, stop_after: Option<usize>| {
        let mut model = lora_model();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            train_objective(
                &mut model,
                Trainable::Lora,
                &objective,
                &run_config(3),
                dir,
                "key",
                &mut |done, _, _| {
                    if stop_after == Some(done) {
                        panic!("killed");
                    }
                },
            )
            .expect("train")
        }));
        model
    };
    let whole = tempfile::tempdir().expect("tempdir");
    let expected_model = run(whole.path(), None);
    let expected = read_metrics(whole.path());
    assert!(expected.len() >= 6);
    let broken = tempfile::tempdir().expect("tempdir");
    // Killed after step 4, whose checkpoint (every 3) is not written: the
    // run goes back to step 3.
    run(broken.path(), Some(4));
    let got_model = run(broken.path(), None);
    let got = read_metrics(broken.path());
    assert_eq!(got.len(), expected.len());
    for (a, b) in got.iter().zip(&expected) {
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
        assert_eq!(a.metrics, b.metrics, "step {}", a.step);
    }
    let head = |m: &Model<f32>| m.head.as_ref().expect("head").to_reward_head();
    assert_eq!(head(&got_model), head(&expected_model));
}

#[test]
fn scored_sequences_that_predict_tokens_or_a_model_without_a_head_are_errors() {
    let mut data = pairs(1, 12, 1, 1.0);
    let refs: Vec<&ScoredPair> = data.iter().collect();
    let c = tiny(12);
    let bare: Model<f32> = Model::new(c.clone(), Weights::init(&c, 2), None).expect("model");
    let loss = PairLoss::Soft;
    let e = pair_pass(&bare, &refs, loss, 0.0, None, None).expect_err("no head");
    assert!(e.contains("no score head"), "{e}");
    data[0].chosen.predict[0] = true;
    let refs: Vec<&ScoredPair> = data.iter().collect();
    let e = pair_pass(&lora_model(), &refs, loss, 0.0, None, None).expect_err("predicts");
    assert!(e.contains("token predictions"), "{e}");
    // A head of another width is refused when it is put on the model.
    let narrow: ScoreHead<f32> = ScoreHead::from_reward_head(&RewardHead {
        mean: vec![0.0; 3],
        inv_std: vec![1.0; 3],
        weight: vec![0.0; 3],
        bias: 0.0,
    });
    let e = Model::new(c.clone(), Weights::init(&c, 2), None)
        .expect("model")
        .with_head(narrow)
        .err()
        .expect("width");
    assert!(e.contains("3 features"), "{e}");
}

/// The loss of a step is the mean over all its pairs (or steps), however
/// the run splits the step into forward/backward passes: one pass or
/// several give the same loss and gradient.
#[test]
fn a_step_split_into_passes_has_the_gradient_of_the_whole_step() {
    // A head that reads the states, so the adapters get gradients too.
    let mut model = lora_model();
    model.head = Some(random_head(model.config.n_embd, 11));
    let pair_data = pairs(5, 12, 9, 0.8);
    let step_data = steps(5, 12, 10);
    let pairwise = PairwiseReward {
        data: &pair_data,
        eval: &[],
        loss: PairLoss::Soft,
        center_coef: 0.02,
    };
    let per_step = ProcessReward {
        data: &step_data,
        eval: &[],
    };
    let objectives: [&dyn qstar_train::run::Objective; 2] = [&pairwise, &per_step];
    for objective in objectives {
        let gradient = |passes: &[Vec<usize>]| {
            let mut grads = model.grads(Trainable::Lora);
            let (loss, _) = objective
                .step(&model, &mut grads, passes, &|_| 7)
                .expect("step");
            let flat: Vec<f32> = grads
                .tensors()
                .into_iter()
                .flat_map(|(_, _, t)| t.to_vec())
                .collect();
            (loss, flat)
        };
        let (whole_loss, whole) = gradient(&[vec![0, 1, 2, 3, 4]]);
        let (split_loss, split) = gradient(&[vec![0], vec![1, 2], vec![3, 4]]);
        assert!(
            (whole_loss - split_loss).abs() < 1e-6 * whole_loss,
            "{whole_loss} vs {split_loss}"
        );
        let norm = whole
            .iter()
            .map(|g| (*g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 1e-6, "a zero gradient proves nothing");
        let diff = whole
            .iter()
            .zip(&split)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            diff <= 1e-5 * norm,
            "split passes change the gradient: {diff} of {norm}"
        );
        // Half the pairs in one pass is not the whole step: the check bites.
        let (_, half) = gradient(&[vec![0, 1]]);
        let off = whole
            .iter()
            .zip(&half)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(off > 1e-3 * norm);
    }
}
