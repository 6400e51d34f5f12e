//! The engine's last hidden state (what a reward head reads) against the
//! trainer's f32 forward pass: two independent implementations of the same
//! model. On dense F32 weights they compute the same function; on the
//! quantized file the engine also rounds activations to 8 bits. Prefix reuse
//! must not change the answer.

use qstar_core::{LanguageModel, Message};
use qstar_engine::{Engine, EngineOptions};
use qstar_train::{Model, Sequence, Weights};

fn model_path() -> std::path::PathBuf {
    let path = qstar_engine::fetch::default_model_path();
    assert!(
        path.exists(),
        "the default model is missing at {}; run `cargo run --release -- model fetch` first",
        path.display()
    );
    path
}

/// The trainer's final-normed hidden state at the last token of `ids`: one
/// token is appended so that the last real position is a predicted row
/// (causal attention keeps the appended token out of it).
fn trainer_hidden(model: &Model<f32>, ids: &[u32]) -> Vec<f32> {
    let mut tokens = ids.to_vec();
    tokens.push(0);
    let mut predict = vec![false; tokens.len()];
    predict[ids.len() - 1] = true;
    let (_, tape) = model
        .forward(&[Sequence { tokens, predict }], 0)
        .expect("forward");
    tape.hidden_rows().to_vec()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn relative_error(a: &[f32], reference: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(reference)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = reference
        .iter()
        .map(|y| (*y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_hidden_states_match_the_trainer_and_survive_prefix_reuse() {
    let path = model_path();
    let engine = Engine::load(&path, EngineOptions::default()).expect("engine");
    let conversation = vec![Message::user(
        "How do I keep basil alive on a windowsill through the winter?",
    )];
    let texts: Vec<String> = [
        "Give it the sunniest window, water when the top of the soil is dry, and pinch off flowers.",
        "Basil is a herb.",
    ]
    .iter()
    .map(|reply| {
        let mut messages = conversation.clone();
        messages.push(Message::assistant(*reply));
        // The state at the end-of-turn token, not at the newline after it.
        engine
            .render_chat(&messages, false)
            .expect("chat")
            .trim_end()
            .to_string()
    })
    .collect();

    // Cold, one at a time: the second text shares the first's prompt prefix.
    let first = engine.embed(vec![texts[0].clone()]).await.expect("embed");
    let second = engine.embed(vec![texts[1].clone()]).await.expect("embed");
    assert_eq!(first[0].usage.prompt_tokens_reused, 0);
    assert!(
        second[0].usage.prompt_tokens_reused >= 16,
        "the shared conversation was not reused: {:?}",
        second[0].usage
    );
    // The same texts without the cache, batched together.
    engine.set_prefix_cache(false).await;
    let uncached = engine.embed(texts.clone()).await.expect("embed");
    for (cached, fresh) in [&first[0], &second[0]].into_iter().zip(&uncached) {
        assert_eq!(cached.hidden.len(), fresh.hidden.len());
        let err = relative_error(&cached.hidden, &fresh.hidden);
        assert!(err < 1e-5, "prefix reuse changed the hidden state: {err}");
    }

    let (config, weights) = Weights::from_gguf(&path).expect("weights");
    let d = config.n_embd;
    let trainer = Model::new(config, weights, None).expect("model");
    let mut errors = Vec::new();
    for (text, engine_state) in texts.iter().zip(&uncached) {
        let ids = engine.tokenize(text, true);
        let reference = trainer_hidden(&trainer, &ids);
        assert_eq!(reference.len(), d);
        assert_eq!(engine_state.hidden.len(), d);
        let (cos, err) = (
            cosine(&engine_state.hidden, &reference),
            relative_error(&engine_state.hidden, &reference),
        );
        eprintln!("hidden state vs trainer: cosine {cos:.6}, relative L2 error {err:.4}");
        errors.push(err);
        assert!(cos > 0.995, "cosine {cos}");
    }
    // Different replies give different states (the check is not vacuous).
    let apart = relative_error(&uncached[0].hidden, &uncached[1].hidden);
    assert!(
        apart > 5.0 * errors.iter().cloned().fold(0.0, f64::max),
        "the two replies' states differ by {apart}, no more than the rounding gap {errors:?}"
    );

    // Bad input is an error, not a panic.
    let empty = engine.embed(vec![String::new()]).await;
    let long = engine.embed(vec!["word ".repeat(20_000)]).await;
    assert!(empty.is_err() || empty.as_ref().is_ok_and(|e| e[0].hidden.len() == d));
    assert!(long.is_err(), "a text beyond the context must be refused");
}

/// With the trainer's weights written as a dense F32 GGUF the engine does no
/// rounding, so the two states agree to float summation order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_hidden_states_equal_the_trainer_on_dense_weights() {
    let path = model_path();
    let (config, weights) = Weights::from_gguf(&path).expect("weights");
    let trainer = Model::new(config, weights, None).expect("model");
    let dir = tempfile::tempdir().expect("dir");
    let dense = dir.path().join("dense.gguf");
    qstar_train::export::write_weights_gguf(
        &path,
        &trainer.base,
        &dense,
        candle_core::quantized::GgmlDType::F32,
    )
    .expect("export");
    let engine = Engine::load(&dense, EngineOptions::default()).expect("engine");
    let text = "A windowsill herb garden needs four hours of sun a day.";
    let state = engine.embed(vec![text.into()]).await.expect("embed");
    let reference = trainer_hidden(&trainer, &engine.tokenize(text, true));
    let err = relative_error(&state[0].hidden, &reference);
    eprintln!("dense weights: relative L2 error of the hidden state {err:.2e}");
    assert!(err < 1e-4, "relative error {err}");
}

/// What a LoRA reward model trains on and what it is scored with: the
/// trainer's state at a text's last token (`Tape::final_state`, no token
/// predicted) with an adapter, against the engine's with the same adapter
/// saved in PEFT's layout and loaded from it. On a dense F32 copy of the
/// weights they agree to float rounding; on the Q4_1 file as closely as
/// without an adapter, and what the adapter changes (the state with it
/// minus the state without) is the same change in both, up to the 8-bit
/// rounding of the engine's activations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_states_with_an_adapter_match_the_trainer_with_it() {
    use qstar_train::rng::SplitMix;
    use qstar_train::{Lora, LoraConfig};
    let path = model_path();
    let (config, weights) = Weights::from_gguf(&path).expect("weights");
    let mut lora = Lora::init(
        &config,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
        },
        3,
    )
    .expect("adapter");
    // A trained adapter's B is not zero: give it values that move the state.
    let mut rng = SplitMix::new(5);
    for (name, _, t) in lora.tensors_mut() {
        if name.ends_with("lora_b") {
            t.iter_mut().for_each(|v| *v = (rng.normal() * 0.05) as f32);
        }
    }
    let dir = tempfile::tempdir().expect("dir");
    let adapter_dir = dir.path().join("adapter");
    qstar_engine::peft::save_peft(
        &lora.to_adapter(&config, "test"),
        &adapter_dir,
        config.n_head,
        config.n_head_kv,
        config.head_dim(),
    )
    .expect("save");
    let adapted = Engine::load_with_adapter(&path, Some(&adapter_dir), EngineOptions::default())
        .expect("engine with adapter");
    let base = Engine::load(&path, EngineOptions::default()).expect("engine");
    let text = base
        .render_chat(
            &[
                Message::user("Is it safe to leave a candle burning overnight?"),
                Message::assistant("No: blow it out before you sleep or leave the room."),
            ],
            false,
        )
        .expect("chat")
        .trim_end()
        .to_string();
    let ids = base.tokenize(&text, true);
    let with = adapted.embed(vec![text.clone()]).await.expect("embed")[0]
        .hidden
        .clone();
    let text_again = text.clone();
    let without = base.embed(vec![text]).await.expect("embed")[0]
        .hidden
        .clone();

    let state = |model: &Model<f32>| {
        let (_, tape) = model
            .forward_eval(&[Sequence {
                predict: vec![false; ids.len()],
                tokens: ids.clone(),
            }])
            .expect("forward");
        tape.final_state(0, ids.len() - 1).expect("state").to_vec()
    };
    let mut trainer = Model::new(config, weights, Some(lora)).expect("model");
    // On dense F32 weights the engine does no rounding: with the adapter,
    // too, the two compute the same function.
    let dense = dir.path().join("dense.gguf");
    qstar_train::export::write_weights_gguf(
        &path,
        &trainer.base,
        &dense,
        candle_core::quantized::GgmlDType::F32,
    )
    .expect("export");
    let dense_adapted =
        Engine::load_with_adapter(&dense, Some(&adapter_dir), EngineOptions::default())
            .expect("dense engine with adapter");
    let exact = dense_adapted
        .embed(vec![text_again.clone()])
        .await
        .expect("embed")[0]
        .hidden
        .clone();
    drop(dense_adapted);
    let reference = state(&trainer);
    let dense_err = relative_error(&exact, &reference);
    eprintln!("dense weights with the adapter: relative L2 error {dense_err:.2e}");
    assert!(dense_err < 1e-4, "relative error {dense_err}");
    trainer.lora = None;
    let reference_without = state(&trainer);
    let (cos, err) = (cosine(&with, &reference), relative_error(&with, &reference));
    eprintln!("adapted state vs trainer: cosine {cos:.6}, relative L2 error {err:.4}");
    assert!(cos > 0.995, "cosine {cos}");
    let delta = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<f32>>();
    let (engine_delta, trainer_delta) = (
        delta(&with, &without),
        delta(&reference, &reference_without),
    );
    let (dcos, derr) = (
        cosine(&engine_delta, &trainer_delta),
        relative_error(&engine_delta, &trainer_delta),
    );
    // (Measured: cosine 0.91, relative error 0.50 — the rounding noise of
    // two states, with and without, against a change of 13 % of the state;
    // the exact agreement is the dense check above.)
    eprintln!("the adapter's change: cosine {dcos:.4}, relative error {derr:.4}");
    assert!(
        dcos > 0.85 && derr < 0.6,
        "cosine {dcos}, relative error {derr}"
    );
}
