//! What the backend makes of the answers real servers send, against a mock
//! that answers in their shapes: vLLM's legacy completions layout (character
//! offsets, `stop_reason`, optionally `token_id:N` tokens), llama-server's
//! (`content` entries with ids and bytes, stop tokens dropped, no
//! `stop_reason`), and a minimal server that sends only what OpenAI's
//! schema requires. Expected values are worked out by hand in each test.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use qstar_core::{
    ChooseRequest, FinishReason, GenerateRequest, LanguageModel, Message, SamplingParams,
    ScoreRequest, Usage,
};
use qstar_openai::{OpenAiBackend, OpenAiConfig};
use qstar_search::verifier::token_confidence;
use serde_json::{json, Value};

type Reply = Arc<dyn Fn(&str, &Value) -> Option<Value> + Send + Sync>;

#[derive(Clone)]
struct Mock {
    reply: Reply,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

fn answer(m: &Mock, path: &str, body: Value) -> (StatusCode, Json<Value>) {
    let out = (m.reply)(path, &body);
    m.seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path.to_string(), body));
    match out {
        Some(v) => (StatusCode::OK, Json(v)),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "not here"}))),
    }
}

async fn serve(
    reply: impl Fn(&str, &Value) -> Option<Value> + Send + Sync + 'static,
) -> (OpenAiBackend, Arc<Mutex<Vec<(String, Value)>>>) {
    let mock = Mock {
        reply: Arc::new(reply),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let seen = mock.seen.clone();
    let app = Router::new()
        .route(
            "/v1/completions",
            post(|State(m): State<Mock>, Json(b): Json<Value>| async move {
                answer(&m, "/v1/completions", b)
            }),
        )
        .route(
            "/v1/chat/completions",
            post(|State(m): State<Mock>, Json(b): Json<Value>| async move {
                answer(&m, "/v1/chat/completions", b)
            }),
        )
        .route(
            "/v1/models",
            get(|State(m): State<Mock>| async move { answer(&m, "/v1/models", Value::Null) }),
        )
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let backend = OpenAiBackend::new(OpenAiConfig {
        base_urls: vec![format!("http://{addr}")],
        max_retries: 0,
        ..Default::default()
    })
    .expect("backend");
    (backend, seen)
}

/// Words with their leading space: "Is it café?" → "Is", " it", " café?".
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            out.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// An echo answer in vLLM's legacy layout: one token per word, token i
/// (from 1) with log-prob −i/2, offsets in characters or in bytes; the
/// usage says one prompt token came from the cache.
fn echo(body: &Value, offsets_in_chars: bool) -> Value {
    let text = body["prompt"].as_str().unwrap_or_default();
    let tokens = words(text);
    let mut offsets = Vec::new();
    let mut at = 0;
    for t in &tokens {
        offsets.push(at);
        at += if offsets_in_chars {
            t.chars().count()
        } else {
            t.len()
        };
    }
    let logprobs: Vec<Value> = (0..tokens.len())
        .map(|i| match i {
            0 => Value::Null,
            i => json!(-0.5 * i as f64),
        })
        .collect();
    json!({
        "choices": [{"text": text, "finish_reason": "length", "stop_reason": null,
            "logprobs": {"tokens": tokens, "token_logprobs": logprobs,
                "top_logprobs": vec![Value::Null; tokens.len()], "text_offset": offsets}}],
        "usage": {"prompt_tokens": tokens.len(), "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 1}}
    })
}

/// The next-token answer `choose` asks for first: " yes" and " no" are in
/// the top log-probs, other options are not.
fn next_token() -> Value {
    json!({
        "choices": [{"text": " yes", "finish_reason": "length",
            "logprobs": {"tokens": [" yes"], "token_logprobs": [-0.1],
                "top_logprobs": [{" yes": -0.1, " no": -2.5}], "text_offset": [11]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}
    })
}

fn vllm_like(offsets_in_chars: bool) -> impl Fn(&str, &Value) -> Option<Value> {
    move |_, body| match body["echo"].as_bool() {
        Some(true) => Some(echo(body, offsets_in_chars)),
        _ => Some(next_token()),
    }
}

#[tokio::test]
async fn scoring_a_non_ascii_prompt_takes_the_continuation_in_either_offset_unit() {
    for chars in [true, false] {
        let (backend, _) = serve(vllm_like(chars)).await;
        // "Un café" is 7 characters and 8 bytes: " au" starts at character
        // 7, byte 8, which is where the prompt ends.
        let out = backend
            .score(vec![ScoreRequest {
                prompt: "Un café".into(),
                continuation: " au lait".into(),
            }])
            .await
            .expect("score")
            .remove(0);
        let texts: Vec<&str> = out.tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, [" au", " lait"], "offsets in chars: {chars}");
        // Tokens 2 and 3 of "Un", " café", " au", " lait": −1 − 1.5.
        assert!(
            (out.total_logprob + 2.5).abs() < 1e-9,
            "{}",
            out.total_logprob
        );
        assert_eq!(
            out.usage,
            Usage {
                prompt_tokens: 4,
                prompt_tokens_reused: 1,
                completion_tokens: 0
            }
        );
    }
}

#[tokio::test]
async fn choose_adds_up_the_usage_of_every_request_it_makes() {
    let (backend, seen) = serve(vllm_like(true)).await;
    let prompt = "Is it café?".to_string();
    // Single tokens in the top log-probs: one request.
    let one = backend
        .choose(vec![ChooseRequest {
            prompt: prompt.clone(),
            options: vec![" yes".into(), " no".into()],
        }])
        .await
        .expect("choose")
        .remove(0);
    assert_eq!(
        one.usage,
        Usage {
            prompt_tokens: 3,
            prompt_tokens_reused: 0,
            completion_tokens: 1
        }
    );
    let p_yes = 1.0 / (1.0 + (-2.4f64).exp());
    assert!((one.options[0].prob - p_yes).abs() < 1e-6);
    // " maybe so" is not in them: the first request, then one echo per
    // option ("Is", " it", " café?", " yes": 4 tokens; with " maybe",
    // " so": 5), each with one cached token.
    let two = backend
        .choose(vec![ChooseRequest {
            prompt,
            options: vec![" yes".into(), " maybe so".into()],
        }])
        .await
        .expect("choose")
        .remove(0);
    assert_eq!(
        two.usage,
        Usage {
            prompt_tokens: 3 + 4 + 5,
            prompt_tokens_reused: 2,
            completion_tokens: 1
        }
    );
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 1 + 3);
    // log P(" yes") = −1.5; log P(" maybe so") = −1.5 − 2.
    assert!((two.options[0].logprob + 1.5).abs() < 1e-9);
    assert!((two.options[1].logprob + 3.5).abs() < 1e-9);
    let p_yes = 1.0 / (1.0 + (-2.0f64).exp());
    assert!((two.options[0].prob - p_yes).abs() < 1e-9);
}

/// Two generated tokens: " a" (p = 0.5) among alternatives " a" 0.5 and
/// " b" 0.25, so its confidence is 0.5 / 0.75 = 2/3; then " c" (p = 0.25),
/// not among its alternatives (" a" 0.5), so 0.25 / 0.75 = 1/3.
fn confidence_case(layout: &str) -> Value {
    let (half, quarter) = (0.5f64.ln(), 0.25f64.ln());
    let logprobs = match layout {
        "legacy" => json!({"tokens": [" a", " c"], "token_logprobs": [half, quarter],
            "top_logprobs": [{" a": half, " b": quarter}, {" a": half}],
            "text_offset": [5, 7]}),
        "legacy-ids" => json!({"tokens": ["token_id:5", "token_id:7"],
            "token_logprobs": [half, quarter],
            "top_logprobs": [{"token_id:5": half, "token_id:6": quarter}, {"token_id:5": half}],
            "text_offset": [5, 7]}),
        "content-ids" => json!({"content": [
            {"id": 5, "token": " a", "bytes": [32, 97], "logprob": half, "top_logprobs": [
                {"id": 5, "token": " a", "bytes": [32, 97], "logprob": half},
                {"id": 6, "token": " b", "bytes": [32, 98], "logprob": quarter}]},
            {"id": 7, "token": " c", "bytes": [32, 99], "logprob": quarter, "top_logprobs": [
                {"id": 5, "token": " a", "bytes": [32, 97], "logprob": half}]}]}),
        _ => json!({"content": [
            {"token": " a", "logprob": half, "top_logprobs": [
                {"token": " a", "logprob": half}, {"token": " b", "logprob": quarter}]},
            {"token": " c", "logprob": quarter, "top_logprobs": [
                {"token": " a", "logprob": half}]}]}),
    };
    let choice = if layout == "content" {
        json!({"message": {"role": "assistant", "content": " a c"}, "finish_reason": "length",
            "logprobs": logprobs})
    } else {
        json!({"text": " a c", "finish_reason": "length", "logprobs": logprobs})
    };
    json!({"choices": [choice], "usage": {"prompt_tokens": 2, "completion_tokens": 2}})
}

#[tokio::test]
async fn token_confidence_counts_the_chosen_token_once_in_every_layout() {
    // vLLM completions (no ids; or ids as `token_id:N`), llama-server
    // (`content` with ids), vLLM chat (`content` without ids).
    for layout in ["legacy", "legacy-ids", "content-ids", "content"] {
        let (backend, _) = serve(move |_, _| Some(confidence_case(layout))).await;
        let params = SamplingParams {
            max_tokens: 2,
            ..Default::default()
        };
        let mut req = if layout == "content" {
            GenerateRequest::chat(vec![Message::user("Hi")], params)
        } else {
            GenerateRequest::new("Hi", params)
        };
        req.top_logprobs = Some(2);
        let out = backend
            .generate(vec![req])
            .await
            .expect("generate")
            .remove(0);
        let tokens = out.completions[0].logprobs.clone().expect("log-probs");
        let confidence: Vec<f64> = tokens.iter().map(token_confidence).collect();
        assert_eq!(confidence.len(), 2, "{layout}");
        assert!(
            (confidence[0] - 2.0 / 3.0).abs() < 1e-6,
            "{layout}: {confidence:?}"
        );
        assert!(
            (confidence[1] - 1.0 / 3.0).abs() < 1e-6,
            "{layout}: {confidence:?}"
        );
    }
}

fn stopped(params_stop: bool, response: Value) -> impl Fn(&str, &Value) -> Option<Value> {
    move |_, body| {
        assert_eq!(body.get("stop").is_some(), params_stop);
        Some(response.clone())
    }
}

async fn finish_of(response: Value) -> FinishReason {
    let (backend, _) = serve(stopped(true, response)).await;
    let req = GenerateRequest::new(
        "Q",
        SamplingParams {
            stop: vec!["\n\n".into()],
            ..Default::default()
        },
    );
    backend.generate(vec![req]).await.expect("generate")[0].completions[0].finish_reason
}

#[tokio::test]
async fn a_stop_at_the_delimiter_is_told_from_the_end_of_generation() {
    // vLLM says which in `stop_reason`: the stop string, or null at EOS.
    let vllm = |reason: Value| {
        json!({"choices": [{"text": "Step one.", "finish_reason": "stop", "stop_reason": reason,
            "logprobs": {"tokens": ["Step", " one", ".", "\n\n"],
                "token_logprobs": [-0.1, -0.1, -0.1, -0.1], "top_logprobs": [null, null, null, null],
                "text_offset": [1, 5, 9, 10]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 4}})
    };
    assert_eq!(finish_of(vllm(json!("\n\n"))).await, FinishReason::Stop);
    assert_eq!(finish_of(vllm(Value::Null)).await, FinishReason::Eos);

    // llama-server: no `stop_reason`; at a stop string it drops the stop
    // string's tokens from the log-probs (3 generated, 2 listed); at the
    // end of generation it lists the end token, which has no text.
    let token = |id: u32, text: &str| {
        json!({"id": id, "token": text, "bytes": text.as_bytes(), "logprob": -0.1,
            "top_logprobs": [{"id": id, "token": text, "bytes": text.as_bytes(), "logprob": -0.1}]})
    };
    let llama = |tokens: Vec<Value>, generated: usize| {
        json!({"choices": [{"text": "Step one.", "index": 0, "finish_reason": "stop",
            "logprobs": {"content": tokens}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": generated, "total_tokens": 1 + generated,
                "prompt_tokens_details": {"cached_tokens": 0}},
            "timings": {"cache_n": 0, "prompt_n": 1, "predicted_n": generated}})
    };
    let at_word = llama(vec![token(10, "Step"), token(11, " one.")], 3);
    assert_eq!(finish_of(at_word).await, FinishReason::Stop);
    // The first "\n" of a "\n"+"\n" stop was held back (sent as ""), then
    // one token was dropped: the held one is last, its id tells it apart.
    let mut held = token(12, "\n");
    held["token"] = json!("");
    held["bytes"] = json!([]);
    let held_back = llama(vec![token(10, "Step"), token(11, " one."), held], 4);
    assert_eq!(finish_of(held_back).await, FinishReason::Stop);
    let at_eos = llama(vec![token(10, "Step"), token(11, " one."), token(2, "")], 3);
    assert_eq!(finish_of(at_eos).await, FinishReason::Eos);
    // Even when the count does not give it away (a held token last).
    let held_last = llama(
        vec![token(10, "Step"), token(11, " one."), {
            let mut t = token(12, "\n");
            t["token"] = json!("");
            t["bytes"] = json!([]);
            t
        }],
        3,
    );
    assert_eq!(finish_of(held_last).await, FinishReason::Stop);

    // A minimal server: text and finish_reason only. Nothing says which,
    // so a step boundary is assumed (the cheaper mistake).
    let minimal = json!({"choices": [{"text": "Step one.", "finish_reason": "stop"}]});
    assert_eq!(finish_of(minimal).await, FinishReason::Stop);
    // With log-probs, a last token written like a special token is the end.
    let with_end = |last: &str| {
        json!({"choices": [{"text": "Step one.", "finish_reason": "stop",
            "logprobs": {"tokens": ["Step", " one.", last], "token_logprobs": [-0.1, -0.1, -0.1],
                "top_logprobs": null, "text_offset": [1, 5, 10]}}]})
    };
    assert_eq!(
        finish_of(with_end("<|endoftext|>")).await,
        FinishReason::Eos
    );
    assert_eq!(finish_of(with_end(" two")).await, FinishReason::Stop);

    // Without stop strings, "stop" is the end of generation.
    let (backend, _) = serve(stopped(
        false,
        json!({"choices": [{"text": "x", "finish_reason": "stop"}]}),
    ))
    .await;
    let req = GenerateRequest::new("Q", SamplingParams::default());
    let out = backend.generate(vec![req]).await.expect("generate");
    assert_eq!(out[0].completions[0].finish_reason, FinishReason::Eos);
}

#[tokio::test]
async fn the_parameter_count_comes_from_the_model_card_when_it_has_one() {
    // llama-server names the model by its file and puts metadata in `meta`.
    let (backend, _) = serve(|path, _| {
        (path == "/v1/models").then(|| {
            json!({"object": "list", "data": [{"id": "models/smol.gguf", "object": "model",
                "owned_by": "llamacpp", "meta": {"n_vocab": 49152, "n_params": 134515008}}]})
        })
    })
    .await;
    assert_eq!(backend.model_parameters().await, Some(134_515_008));
    // vLLM's card has no parameter count.
    let (backend, _) = serve(|_, _| {
        Some(json!({"object": "list", "data": [{"id": "default", "max_model_len": 2048}]}))
    })
    .await;
    assert_eq!(backend.model_parameters().await, None);
    // Several models: the configured name picks one; no card at all: unknown.
    let (backend, _) = serve(|_, _| {
        Some(json!({"data": [{"id": "other", "meta": {"n_params": 1}},
            {"id": "default", "meta": {"n_params": 7000000000u64}}]}))
    })
    .await;
    assert_eq!(backend.model_parameters().await, Some(7_000_000_000));
    let (backend, _) = serve(|_, _| None).await;
    assert_eq!(backend.model_parameters().await, None);
}

/// A prompt that ends in a space: the mock, like a BPE server, joins that
/// space to the next word, so " Yes" starts inside the prompt. Its
/// log-prob covers part of the prompt, so scoring it is refused with the
/// reason, and `choose` does not quietly give every option the same mass.
#[tokio::test]
async fn a_token_across_the_prompt_boundary_is_an_error_not_a_guess() {
    let (backend, _) = serve(|_, body| match body["echo"].as_bool() {
        Some(true) => Some(echo(body, true)),
        // The server stopped at once and reported no token.
        _ => Some(json!({
            "choices": [{"text": "", "finish_reason": "stop",
                "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                    "text_offset": []}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 0}
        })),
    })
    .await;
    let err = backend
        .score(vec![ScoreRequest {
            prompt: "Assistant: ".into(),
            continuation: "Yes".into(),
        }])
        .await
        .expect_err("a straddling token");
    assert!(err.to_string().contains("one token"), "{err}");
    let err = backend
        .choose(vec![ChooseRequest {
            prompt: "Assistant: ".into(),
            options: vec!["Yes".into(), "No".into()],
        }])
        .await
        .expect_err("choose over straddling options");
    assert!(err.to_string().contains("one token"), "{err}");
    // Without the trailing space the boundary falls between tokens, and an
    // answer with no next token falls back to scoring each option in full:
    // " Yes" is token 1 after "Assistant:" (log-prob −0.5); " No, not
    // really" is tokens 1–3 (−0.5 − 1.0 − 1.5 = −3.0). So P(" Yes") =
    // 1 / (1 + e^−2.5).
    let out = backend
        .choose(vec![ChooseRequest {
            prompt: "Assistant:".into(),
            options: vec![" Yes".into(), " No, not really".into()],
        }])
        .await
        .expect("choose")
        .remove(0);
    assert_eq!(out.options.len(), 2, "{out:?}");
    let p_yes = 1.0 / (1.0 + (-2.5f64).exp());
    for (o, (logprob, prob)) in out.options.iter().zip([(-0.5, p_yes), (-3.0, 1.0 - p_yes)]) {
        assert!((o.logprob - logprob).abs() < 1e-9, "{o:?}");
        assert!((o.prob - prob).abs() < 1e-9, "{o:?}");
    }
}
