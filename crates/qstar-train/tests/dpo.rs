//! DPO on tiny models: its gradient through the whole network against
//! central finite differences in f64, a run that learns to prefer the
//! chosen replies starting from ln 2, and a run stopped at any step
//! (or while it computes the reference) that continues to the same curve.

use std::panic::{catch_unwind, AssertUnwindSafe};

use qstar_train::dpo::{
    accumulate_pairs, logps, reference_logps, train_dpo, Dpo, DpoConfig, DpoLoss, LogpPair,
    PreferenceSequences,
};
use qstar_train::optim::{AdamWConfig, Decay};
use qstar_train::rng::SplitMix;
use qstar_train::run::{micro_batches, Objective};
use qstar_train::run::{StepRecord, TrainConfig};
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

/// A prompt of `prompt` tokens and a reply, only the reply predicted.
fn reply(prompt: &[u32], reply: &[u32]) -> Sequence {
    let tokens: Vec<u32> = prompt.iter().chain(reply).copied().collect();
    let mut predict = vec![false; tokens.len()];
    for p in predict
        .iter_mut()
        .take(tokens.len() - 1)
        .skip(prompt.len() - 1)
    {
        *p = true;
    }
    Sequence { tokens, predict }
}

/// Pairs over a vocabulary of `v`: the chosen reply repeats the prompt's
/// last token, the rejected one is random — a preference a model can learn.
fn pairs(n: usize, v: u32, seed: u64, target: f64) -> Vec<PreferenceSequences> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            let prompt: Vec<u32> = (0..3 + rng.below(3))
                .map(|_| rng.below(v as usize) as u32)
                .collect();
            let last = *prompt.last().expect("prompt");
            let len = 2 + rng.below(3);
            let good: Vec<u32> = vec![last; len];
            let bad: Vec<u32> = (0..len).map(|_| rng.below(v as usize) as u32).collect();
            PreferenceSequences {
                chosen: reply(&prompt, &good),
                rejected: reply(&prompt, &bad),
                target,
            }
        })
        .collect()
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

/// The summed DPO loss of `pairs` at the model's current weights.
fn total_loss(
    model: &Model<f64>,
    config: &DpoConfig,
    pairs: &[PreferenceSequences],
    reference: &[LogpPair],
    seed: u64,
) -> f64 {
    let all: Vec<usize> = (0..pairs.len()).collect();
    // A throwaway gradient buffer: only the returned terms are read.
    let mut scratch = model.grads(Trainable::Lora);
    accumulate_pairs(
        model,
        &mut scratch,
        config,
        pairs,
        reference,
        &all,
        1.0,
        Some(seed),
    )
    .expect("pass")
    .iter()
    .map(|(t, _)| t.loss)
    .sum()
}

#[test]
fn the_dpo_gradient_through_the_model_matches_finite_differences() {
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
    let lora_config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.2,
        targets: all_targets(),
    };
    let lora = Lora::<f64>::init(&c, lora_config, 5).expect("adapter");
    let mut model = Model::new(c.clone(), weights, Some(lora)).expect("model");
    let data = pairs(3, 11, 7, 0.8);
    // The reference is the model before its adapter moves (B = 0).
    let reference = logps(&model, &data, 1000, &mut |_| {}).expect("reference");
    for (_, _, t) in model.lora.as_mut().expect("adapter").tensors_mut() {
        for x in t.iter_mut() {
            *x = rng.normal() * 0.3;
        }
    }
    for config in [
        DpoConfig {
            beta: 0.5,
            loss: DpoLoss::Sigmoid,
            label_smoothing: 0.1,
            nll_coef: 0.3,
        },
        DpoConfig {
            beta: 0.5,
            loss: DpoLoss::Ipo,
            label_smoothing: 0.0,
            nll_coef: 0.0,
        },
        DpoConfig {
            beta: 0.5,
            loss: DpoLoss::Soft,
            label_smoothing: 0.0,
            nll_coef: 0.0,
        },
        DpoConfig {
            beta: 0.5,
            loss: DpoLoss::Robust,
            label_smoothing: 0.2,
            nll_coef: 0.0,
        },
    ] {
        let seed = 9;
        let mut grads = model.grads(Trainable::Lora);
        let all: Vec<usize> = (0..data.len()).collect();
        accumulate_pairs(
            &model,
            &mut grads,
            &config,
            &data,
            &reference,
            &all,
            1.0,
            Some(seed),
        )
        .expect("backward");
        let analytic: Vec<(String, Vec<f64>)> = grads
            .tensors()
            .into_iter()
            .map(|(n, _, g)| (n, g.to_vec()))
            .collect();
        let eps = 1e-5;
        let mut checked = 0;
        for (name, g) in &analytic {
            for i in (0..g.len()).step_by((g.len() / 6).max(1)) {
                let nudge = |m: &mut Model<f64>, delta: f64| {
                    for (n, _, t) in m.lora.as_mut().expect("adapter").tensors_mut() {
                        if &n == name {
                            t[i] += delta;
                        }
                    }
                };
                nudge(&mut model, eps);
                let up = total_loss(&model, &config, &data, &reference, seed);
                nudge(&mut model, -2.0 * eps);
                let down = total_loss(&model, &config, &data, &reference, seed);
                nudge(&mut model, eps);
                let numeric = (up - down) / (2.0 * eps);
                let scale = g[i].abs().max(numeric.abs()).max(1e-7);
                assert!(
                    (g[i] - numeric).abs() / scale <= 1e-4,
                    "{config:?} `{name}`[{i}]: backward {} vs finite difference {numeric}",
                    g[i]
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} entries checked");
    }
}

fn run_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        max_steps: None,
        batch_tokens: 60,
        micro_tokens: 30,
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

fn lora_model() -> Model<f32> {
    let c = tiny(12);
    let lora = Lora::init(
        &c,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: all_targets(),
        },
        1,
    )
    .expect("adapter");
    Model::new(c.clone(), Weights::init(&c, 2), Some(lora)).expect("model")
}

const SIGMOID: DpoConfig = DpoConfig {
    beta: 0.5,
    loss: DpoLoss::Sigmoid,
    label_smoothing: 0.0,
    nll_coef: 0.0,
};

fn read_metrics(dir: &std::path::Path) -> Vec<StepRecord> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a metrics line"))
        .collect()
}

#[test]
fn a_dpo_run_starts_at_ln_2_and_learns_the_preference() {
    let train = pairs(24, 12, 1, 1.0);
    let eval = pairs(16, 12, 2, 1.0);
    let dir = tempfile::tempdir().expect("tempdir");
    // Every weight learns here: a rank-4 adapter on a 16-wide model learns
    // the same preference, but slowly.
    let c = tiny(12);
    let mut model = Model::new(c.clone(), Weights::init(&c, 2), None).expect("model");
    let mut reference_calls = 0;
    let run = TrainConfig {
        lr: 1e-2,
        ..run_config(12)
    };
    let summary = train_dpo(
        &mut model,
        Trainable::Full,
        &DpoConfig {
            beta: 1.0,
            ..SIGMOID
        },
        &train,
        &eval,
        &run,
        dir.path(),
        "key",
        &mut |_, _| reference_calls += 1,
        &mut |_, _, _| {},
    )
    .expect("train");
    assert!(reference_calls > 1);
    let metrics = read_metrics(dir.path());
    assert_eq!(metrics.len(), summary.steps);
    // The first step's policy is the reference: zero rewards, loss ln 2
    // (up to f32 sums).
    let first = &metrics[0];
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        first.loss
    );
    assert!(first.metrics["rewards/margins"].abs() < 1e-6);
    let last = metrics.last().expect("a step");
    assert!(last.loss < 0.3, "the loss fell only to {}", last.loss);
    assert!(last.metrics["rewards/accuracies"] > 0.9);
    // Held-out pairs of the same kind are preferred too, and the eval loss
    // is the summary's.
    assert!(
        last.metrics["eval_rewards/accuracies"] > 0.8,
        "{:?}",
        last.metrics
    );
    assert_eq!(summary.eval_loss, last.eval_loss);
    assert!(last.metrics["eval_rewards/margins"] > 0.5);
    // The chosen replies' log-probabilities rose (they are learnable).
    assert!(last.metrics["eval_logps/chosen"] > metrics[3].metrics["eval_logps/chosen"]);
    // A reference line per pair.
    let lines = std::fs::read_to_string(dir.path().join("reference.jsonl")).expect("reference");
    assert_eq!(lines.lines().count(), 1 + train.len() + eval.len());
}

#[test]
fn a_dpo_run_stopped_anywhere_continues_to_the_same_curve() {
    let train = pairs(12, 12, 5, 0.7);
    let eval = pairs(4, 12, 6, 0.7);
    let config = DpoConfig {
        loss: DpoLoss::Soft,
        nll_coef: 0.2,
        ..SIGMOID
    };
    let run =
        |dir: &std::path::Path, stop_after: Option<usize>, stop_in_reference: Option<usize>| {
            let mut model = lora_model();
            catch_unwind(AssertUnwindSafe(|| {
                train_dpo(
                    &mut model,
                    Trainable::Lora,
                    &config,
                    &train,
                    &eval,
                    &run_config(3),
                    dir,
                    "key",
                    &mut |done, _| {
                        if stop_in_reference.is_some_and(|s| done >= s) {
                            panic!("killed while computing the reference");
                        }
                    },
                    &mut |done, _, _| {
                        if stop_after == Some(done) {
                            panic!("killed");
                        }
                    },
                )
            }))
            .ok()
            .map(|r| r.expect("train"));
            model
        };
    let whole = tempfile::tempdir().expect("tempdir");
    run(whole.path(), None, None);
    let expected = read_metrics(whole.path());
    assert!(expected.len() >= 6);
    let reference = std::fs::read(whole.path().join("reference.jsonl")).expect("reference");

    let broken = tempfile::tempdir().expect("tempdir");
    // Killed after 4 of the 16 reference pairs, then torn mid-line.
    run(broken.path(), None, Some(4));
    let partial = std::fs::read(broken.path().join("reference.jsonl")).expect("partial");
    assert!(!partial.is_empty() && partial.len() < reference.len());
    let mut torn = partial.clone();
    torn.extend_from_slice(b"{\"set\":\"train\",\"pai");
    std::fs::write(broken.path().join("reference.jsonl"), torn).expect("tear");
    // Then killed at step 4, and run to the end.
    run(broken.path(), Some(4), None);
    run(broken.path(), None, None);
    assert_eq!(
        std::fs::read(broken.path().join("reference.jsonl")).expect("reference"),
        reference,
        "the reference file is whole and the same"
    );
    let got = read_metrics(broken.path());
    assert_eq!(got.len(), expected.len());
    for (a, b) in got.iter().zip(&expected) {
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "step {}", a.step);
        assert_eq!(a.metrics, b.metrics, "step {}", a.step);
    }
}

#[test]
fn bad_pairs_and_settings_are_input_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = lora_model();
    let mut bad = pairs(2, 12, 1, 1.0);
    bad[1].rejected.predict.iter_mut().for_each(|p| *p = false);
    let mut outside = pairs(2, 12, 1, 1.0);
    outside[0].target = 1.5;
    let cases: Vec<(DpoConfig, Vec<PreferenceSequences>)> = vec![
        (SIGMOID, Vec::new()),
        (SIGMOID, bad),
        (SIGMOID, outside),
        (
            DpoConfig {
                beta: -1.0,
                ..SIGMOID
            },
            pairs(2, 12, 1, 1.0),
        ),
    ];
    for (config, data) in cases {
        let err = train_dpo(
            &mut model,
            Trainable::Lora,
            &config,
            &data,
            &[],
            &run_config(1),
            dir.path(),
            "key",
            &mut |_, _| {},
            &mut |_, _, _| {},
        )
        .expect_err("refused");
        assert!(err.is_input_error(), "{err}");
    }
}

#[test]
fn a_step_split_into_passes_has_the_gradient_of_the_whole_step() {
    let mut model = lora_model();
    // Move B off zero so every adapter tensor gets a gradient.
    let mut rng = SplitMix::new(8);
    for (_, _, t) in model.lora.as_mut().expect("adapter").tensors_mut() {
        for x in t.iter_mut() {
            *x = (rng.normal() * 0.05) as f32;
        }
    }
    let train = pairs(6, 12, 3, 0.8);
    let reference = logps(&lora_model(), &train, 1000, &mut |_| {}).expect("reference");
    let objective = Dpo {
        config: DpoConfig {
            loss: DpoLoss::Soft,
            nll_coef: 0.3,
            ..SIGMOID
        },
        train: &train,
        train_reference: &reference,
        eval: &[],
        eval_reference: &[],
    };
    let examples: Vec<usize> = (0..train.len()).collect();
    let lens = objective.lens();
    let step = |micro: usize| {
        let mut grads = model.grads(Trainable::Lora);
        let passes = micro_batches(&examples, &lens, micro);
        let (loss, metrics) = objective
            .step(&model, &mut grads, &passes, &|m| m as u64)
            .expect("step");
        let flat: Vec<f32> = grads
            .tensors()
            .into_iter()
            .flat_map(|(_, _, g)| g.to_vec())
            .collect();
        (loss, metrics, flat)
    };
    let (whole_loss, whole_metrics, whole) = step(10_000);
    let (split_loss, split_metrics, split) = step(20);
    assert!((whole_loss - split_loss).abs() < 1e-6);
    for (k, v) in &whole_metrics {
        assert!((v - split_metrics[k]).abs() < 1e-5, "{k}");
    }
    let norm = whole.iter().map(|g| g * g).sum::<f32>().sqrt();
    assert!(norm > 1e-4);
    let diff = whole
        .iter()
        .zip(&split)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    assert!(diff / norm < 1e-4, "relative difference {}", diff / norm);
}

#[test]
fn the_reference_file_fills_gaps_and_belongs_to_one_run() {
    let model = lora_model();
    let train = pairs(10, 12, 4, 1.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reference.jsonl");
    let compute = |key: &str, passes: &mut usize| {
        reference_logps(
            &model,
            &[("train", &train)],
            30,
            dir.path(),
            key,
            &mut |_, _| *passes += 1,
        )
        .expect("reference")
    };
    let mut passes = 0;
    let first = compute("run-a", &mut passes);
    let whole = std::fs::read_to_string(&path).expect("file");
    assert!(whole.starts_with("{\"run\":\"run-a\"}\n"));
    // Lose two lines from the middle (a pass then holds known and unknown
    // pairs): only the passes that lack a pair run again, and every value
    // comes back to the bit.
    let kept: String = whole
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&path, kept).expect("write");
    let mut again = 0;
    let second = compute("run-a", &mut again);
    assert_eq!(second, first);
    assert!(again < passes, "{again} of {passes} passes ran again");
    let mut before: Vec<&str> = whole.lines().collect();
    let now = std::fs::read_to_string(&path).expect("file");
    let mut after: Vec<&str> = now.lines().collect();
    before.sort();
    after.sort();
    assert_eq!(after, before);
    // Another run's key: the file starts afresh under it.
    let mut fresh = 0;
    let third = compute("run-b", &mut fresh);
    assert_eq!(third, first);
    assert_eq!(fresh, passes);
    let now = std::fs::read_to_string(&path).expect("file");
    assert!(now.starts_with("{\"run\":\"run-b\"}\n"));
    assert_eq!(now.lines().count(), 1 + train.len());
}
