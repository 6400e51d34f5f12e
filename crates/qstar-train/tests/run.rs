//! Training runs on tiny models: a fixed batch is learned to near-zero loss,
//! and a run stopped at any step continues from its checkpoint with the
//! same loss curve, to the bit, as a run that never stopped.

use std::panic::{catch_unwind, AssertUnwindSafe};

use qstar_train::optim::{AdamWConfig, Decay};
use qstar_train::rng::SplitMix;
use qstar_train::run::{train, StepRecord, TrainConfig};
use qstar_train::{Lora, LoraConfig, Model, ModelConfig, Sequence, Trainable, Weights};

fn tiny() -> ModelConfig {
    ModelConfig {
        n_layer: 2,
        n_embd: 32,
        n_head: 4,
        n_head_kv: 2,
        n_rot: 8,
        n_ff: 64,
        n_vocab: 40,
        context_length: 32,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        tied_output: true,
    }
}

fn data(n: usize, seed: u64) -> Vec<Sequence> {
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            let len = 6 + rng.below(10);
            let tokens: Vec<u32> = (0..len).map(|_| rng.below(40) as u32).collect();
            // The first two tokens are a prompt: not learned.
            let mut s = Sequence::all(tokens);
            s.predict[0] = false;
            s.predict[1] = false;
            s
        })
        .collect()
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        max_steps: None,
        batch_tokens: 40,
        micro_tokens: 24,
        lr: 3e-3,
        warmup_steps: 3,
        decay: Decay::Cosine,
        min_lr_ratio: 0.1,
        max_grad_norm: 1.0,
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        seed: 5,
        checkpoint_every: 2,
        eval_every: 3,
    }
}

fn lora_model() -> Model<f32> {
    let c = tiny();
    let lora = Lora::init(
        &c,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        },
        1,
    )
    .expect("adapter");
    Model::new(c.clone(), Weights::init(&c, 2), Some(lora)).expect("model")
}

#[test]
fn a_fixed_batch_is_learned_to_near_zero_loss() {
    let c = tiny();
    let mut model = Model::new(c.clone(), Weights::init(&c, 3), None).expect("model");
    let batch = data(4, 9);
    let mut cfg = config(300);
    cfg.batch_tokens = 1000; // the whole batch in every step
    cfg.lr = 1e-2;
    cfg.warmup_steps = 10;
    cfg.checkpoint_every = 1000;
    let dir = tempfile::tempdir().expect("dir");
    let mut losses = Vec::new();
    let summary = train(
        &mut model,
        Trainable::Full,
        &batch,
        &[],
        &cfg,
        dir.path(),
        "k",
        &mut |_, _, r| losses.push(r.loss),
    )
    .expect("train");
    let first = losses[0];
    let last = summary.final_loss.expect("loss");
    eprintln!("loss {first:.3} → {last:.5} in {} steps", losses.len());
    assert!(
        (first - (40f64).ln()).abs() < 0.2,
        "starts near ln(vocab): {first}"
    );
    assert!(last < 0.02, "final loss {last}");
}

fn read_metrics(dir: &std::path::Path) -> Vec<StepRecord> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

fn same_curve(a: &[StepRecord], b: &[StepRecord]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.step, x.loss.to_bits(), x.grad_norm.to_bits()),
            (y.step, y.loss.to_bits(), y.grad_norm.to_bits())
        );
        assert_eq!(x.eval_loss.map(f64::to_bits), y.eval_loss.map(f64::to_bits));
        assert_eq!(x.lr.to_bits(), y.lr.to_bits());
    }
}

#[test]
fn a_run_stopped_at_any_step_continues_with_the_same_loss_curve() {
    let train_set = data(12, 1);
    let eval_set = data(3, 2);
    let cfg = config(2);
    let whole = tempfile::tempdir().expect("dir");
    let mut model = lora_model();
    train(
        &mut model,
        Trainable::Lora,
        &train_set,
        &eval_set,
        &cfg,
        whole.path(),
        "k",
        &mut |_, _, _| {},
    )
    .expect("train");
    let reference = read_metrics(whole.path());
    assert!(reference.len() >= 6, "{} steps", reference.len());
    let final_adapter = model.lora.clone();

    // Stop after every possible step (before its checkpoint is written when
    // one is due), then run the same command again.
    for stop in 1..reference.len() {
        let dir = tempfile::tempdir().expect("dir");
        let mut first = lora_model();
        let stopped = catch_unwind(AssertUnwindSafe(|| {
            train(
                &mut first,
                Trainable::Lora,
                &train_set,
                &eval_set,
                &cfg,
                dir.path(),
                "k",
                &mut |done, _, _| {
                    if done == stop {
                        panic!("stopped");
                    }
                },
            )
        }));
        assert!(stopped.is_err());
        let mut again = lora_model();
        let summary = train(
            &mut again,
            Trainable::Lora,
            &train_set,
            &eval_set,
            &cfg,
            dir.path(),
            "k",
            &mut |_, _, _| {},
        )
        .expect("resume");
        let resumed = summary.resumed_from.unwrap_or(0);
        assert_eq!(
            resumed,
            (stop - 1) / 2 * 2,
            "continues from the last checkpoint before step {stop}"
        );
        same_curve(&read_metrics(dir.path()), &reference);
        assert_eq!(
            again.lora, final_adapter,
            "stopped at {stop}: another adapter at the end"
        );
    }
}

#[test]
fn a_directory_of_another_run_is_refused() {
    let train_set = data(4, 1);
    let cfg = config(1);
    let dir = tempfile::tempdir().expect("dir");
    let mut model = lora_model();
    train(
        &mut model,
        Trainable::Lora,
        &train_set,
        &[],
        &cfg,
        dir.path(),
        "one",
        &mut |_, _, _| {},
    )
    .expect("train");
    let err = train(
        &mut model,
        Trainable::Lora,
        &train_set,
        &[],
        &cfg,
        dir.path(),
        "two",
        &mut |_, _, _| {},
    )
    .expect_err("other key");
    assert!(
        err.is_input_error() && err.to_string().contains("another configuration"),
        "{err}"
    );
}

#[test]
fn an_adapter_survives_the_engine_form_and_back() {
    let c = tiny();
    let mut lora = lora_model().lora.expect("adapter");
    let mut rng = SplitMix::new(4);
    for (_, _, t) in lora.tensors_mut() {
        t.iter_mut().for_each(|x| *x = rng.normal() as f32);
    }
    let back =
        Lora::from_adapter(&c, &lora.to_adapter(&c, "tiny"), lora.config.dropout).expect("back");
    assert_eq!(back.layers, lora.layers);
    assert_eq!(
        (back.config.rank, back.config.alpha),
        (lora.config.rank, lora.config.alpha)
    );
    let mut other = lora.to_adapter(&c, "tiny");
    other.pairs.retain(|&(layer, _), _| layer == 0);
    assert!(
        Lora::from_adapter(&c, &other, 0.0).is_err(),
        "a layer without its projections is refused"
    );
}
