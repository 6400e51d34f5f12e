//! Error paths against a mock server (the real server cannot be made to fail
//! on demand): retries with backoff on 5xx and 429, no retry on 4xx, a clear
//! error after the last retry, and requests spread over several servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use qstar_core::{GenerateRequest, LanguageModel, ModelError, SamplingParams, ScoreRequest};
use qstar_openai::{OpenAiBackend, OpenAiConfig};
use serde_json::{json, Value};

#[derive(Clone)]
struct Script {
    hits: Arc<AtomicUsize>,
    /// Status for each hit in turn; after the list, 200.
    statuses: Arc<Vec<u16>>,
}

async fn completions(
    State(s): State<Script>,
    Json(_body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let i = s.hits.fetch_add(1, Ordering::SeqCst);
    let status = s.statuses.get(i).copied().unwrap_or(200);
    let body = json!({
        "choices": [{"text": " ok", "finish_reason": "length",
                     "logprobs": {"content": [{"id": 5, "token": " ok", "logprob": -0.5, "top_logprobs": []}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(body),
    )
}

async fn serve(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .with_state(Script {
            hits: hits.clone(),
            statuses: Arc::new(statuses),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), hits)
}

fn backend(urls: Vec<String>, retries: u32) -> OpenAiBackend {
    OpenAiBackend::new(OpenAiConfig {
        base_urls: urls,
        max_retries: retries,
        initial_backoff: Duration::from_millis(5),
        ..Default::default()
    })
    .expect("backend")
}

fn request() -> Vec<GenerateRequest> {
    vec![GenerateRequest::new("hi", SamplingParams::default())]
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let (url, hits) = serve(vec![500, 429, 503]).await;
    let out = backend(vec![url], 4)
        .generate(request())
        .await
        .expect("succeeds after retries");
    assert_eq!(out[0].completions[0].text, " ok");
    assert_eq!(out[0].completions[0].token_ids, vec![5]);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn persistent_failure_is_a_clear_error() {
    let (url, hits) = serve(vec![500; 10]).await;
    let err = backend(vec![url], 2)
        .generate(request())
        .await
        .expect_err("fails");
    assert!(matches!(err, ModelError::Backend { .. }));
    assert!(err.to_string().contains("gave up after 2 retries"), "{err}");
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (url, hits) = serve(vec![400]).await;
    let err = backend(vec![url], 4)
        .generate(request())
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("400"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    // Bind then drop a listener: nothing answers on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = backend(vec![format!("http://127.0.0.1:{port}")], 1)
        .generate(request())
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains("gave up after 1 retries"), "{err}");
}

#[tokio::test]
async fn requests_are_spread_over_servers() {
    let (a, hits_a) = serve(vec![]).await;
    let (b, hits_b) = serve(vec![]).await;
    let mut req = GenerateRequest::new("hi", SamplingParams::default());
    req.n = 6;
    backend(vec![a, b], 0)
        .generate(vec![req])
        .await
        .expect("generate");
    assert_eq!(hits_a.load(Ordering::SeqCst), 3);
    assert_eq!(hits_b.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn missing_prompt_logprobs_is_reported_as_unsupported() {
    let (url, _) = serve(vec![]).await;
    let err = backend(vec![url], 0)
        .score(vec![ScoreRequest {
            prompt: "a".into(),
            continuation: "b".into(),
        }])
        .await
        .expect_err("no echo");
    assert!(matches!(err, ModelError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("prompt log-probs"), "{err}");
}
