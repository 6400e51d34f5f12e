//! The actor under injected panics, on the real default model.

use std::sync::Arc;

use qstar_core::{GenerateRequest, GenerateResponse, LanguageModel, ModelError, SamplingParams};
use tokio::sync::oneshot;

use super::actor::*;
use super::handle::*;
use super::job::*;
use super::seq::Fault;
use super::EngineOptions;
use crate::model::LoadedModel;

fn model() -> Arc<LoadedModel> {
    use std::sync::OnceLock;
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = crate::fetch::default_model_path();
            Arc::new(LoadedModel::load(&path).expect("the default model (`qstar model fetch`)"))
        })
        .clone()
}

fn greedy(prompt: &str) -> GenerateRequest {
    GenerateRequest::new(
        prompt,
        SamplingParams {
            max_tokens: 6,
            ignore_eos: true,
            ..Default::default()
        },
    )
}

type Answer = oneshot::Receiver<Result<GenerateResponse, ModelError>>;

/// Hands the requests to an actor driven on this thread and serves them
/// to the end (bounded, so a lost job fails the test instead of hanging).
fn serve(actor: &mut Actor, requests: Vec<GenerateRequest>) -> Vec<Answer> {
    let answers = requests
        .into_iter()
        .map(|r| {
            let (tx, rx) = oneshot::channel();
            actor.intake(Job::Generate(r, Reply::new(tx)));
            rx
        })
        .collect();
    for _ in 0..10_000 {
        if actor.jobs.is_empty() && actor.waiting.is_empty() && actor.active.is_empty() {
            return answers;
        }
        actor.admit();
        actor.step();
    }
    panic!("the actor did not finish its jobs");
}

fn tokens_alone(prompt: &str) -> Vec<u32> {
    let mut actor = Actor::new(model(), EngineOptions::default());
    let mut answers = serve(&mut actor, vec![greedy(prompt)]);
    answers[0]
        .try_recv()
        .expect("answered")
        .expect("generated")
        .completions[0]
        .token_ids
        .clone()
}

/// A request that panics inside the engine, batched between two good
/// ones: it alone fails, with the panic's message; the good ones get the
/// answers they get when served alone; and the actor serves more.
#[test]
fn a_panicking_request_fails_alone() {
    let good = ["The capital of France is", "1, 2, 3, 4,"];
    let expected: Vec<Vec<u32>> = good.iter().map(|p| tokens_alone(p)).collect();
    for (marker, fault) in Fault::MARKERS {
        let mut actor = Actor::new(model(), EngineOptions::default());
        let bad = format!("Tell me a story.{marker}");
        let mut answers = serve(
            &mut actor,
            vec![greedy(good[0]), greedy(&bad), greedy(good[1])],
        );
        let err = answers[1]
            .try_recv()
            .expect("answered")
            .expect_err("the bad request fails");
        assert!(
            !err.is_input_error() && err.to_string().contains("injected fault"),
            "{fault:?}: {err}"
        );
        for (k, a) in [0, 2].into_iter().enumerate() {
            let got = answers[a]
                .try_recv()
                .expect("answered")
                .unwrap_or_else(|e| panic!("{fault:?}: good request failed: {e}"));
            assert_eq!(got.completions[0].token_ids, expected[k], "{fault:?}");
        }
        assert!(actor.in_flight.is_empty(), "{fault:?}: claims left behind");
        let mut later = serve(&mut actor, vec![greedy(good[0])]);
        let later = later[0]
            .try_recv()
            .expect("answered")
            .expect("later request");
        assert_eq!(later.completions[0].token_ids, expected[0], "{fault:?}");
    }
}

/// The same through the engine's own thread: after a panic the thread is
/// alive and answers.
#[test]
fn the_engine_thread_survives_a_panic() {
    let engine = Engine::start(model(), EngineOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (marker, _) in Fault::MARKERS {
        let bad = rt.block_on(engine.generate(vec![greedy(&format!("Hi{marker}"))]));
        assert!(bad.is_err_and(|e| e.to_string().contains("injected fault")));
        let good = rt.block_on(engine.generate(vec![greedy("Hello")]));
        assert_eq!(good.expect("served")[0].completions[0].token_ids.len(), 6);
    }
}

#[test]
fn a_dropped_reply_still_answers() {
    let (tx, mut rx) = oneshot::channel::<Result<(), ModelError>>();
    drop(Reply::new(tx));
    let err = rx.try_recv().expect("answered").expect_err("an error");
    assert!(err.to_string().contains("internal error"), "{err}");
}
