//! The OpenAI backend end to end against a real llama.cpp `llama-server`
//! serving the default model (built by `scripts/build-llama-cpp`; found on
//! PATH, in LLAMA_SERVER, or in qstar's cache).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qstar_core::{
    ChooseRequest, GenerateRequest, LanguageModel, Message, ModelError, SamplingParams,
    ScoreRequest,
};
use qstar_openai::{OpenAiBackend, OpenAiConfig};

fn llama_server() -> PathBuf {
    if let Ok(p) = std::env::var("LLAMA_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("llama-server"))
            .find(|p| p.is_file())
    });
    let cached = qstar_engine::fetch::home_dir().join("llama.cpp-11434.0.0-noamx/bin/llama-server");
    on_path
        .or(cached.is_file().then_some(cached))
        .expect("llama-server not found: run scripts/build-llama-cpp (the test script does)")
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Server {
    let model = qstar_engine::fetch::default_model_path();
    assert!(model.exists(), "run `qstar model fetch` first");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(llama_server())
        .args([
            "-m",
            model.to_str().expect("path"),
            "--port",
            &port.to_string(),
            "-t",
            "2",
            "-c",
            "2048",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama-server");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest_free_health(&server.url);
    while Instant::now() < deadline {
        if client() {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("llama-server did not become healthy");
}

/// A /health probe over a plain TCP socket (no HTTP client needed here).
fn reqwest_free_health(url: &str) -> impl Fn() -> bool {
    let addr = url.trim_start_matches("http://").to_string();
    move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
    }
}

/// POSTs JSON over a plain TCP socket and parses the answer's body.
fn post_json(url: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let payload = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let body = answer.split_once("\r\n\r\n").expect("HTTP answer").1;
    serde_json::from_str(body).expect("JSON body")
}

fn backend(urls: Vec<String>) -> OpenAiBackend {
    OpenAiBackend::new(OpenAiConfig {
        base_urls: urls,
        ..Default::default()
    })
    .expect("backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_server_backend_end_to_end() {
    let server = start().await;
    // The same server under two names: requests are spread over both.
    let alias = server.url.replace("127.0.0.1", "localhost");
    let remote = backend(vec![server.url.clone(), alias]);
    let embedded = qstar_engine::Engine::load(
        &qstar_engine::fetch::default_model_path(),
        qstar_engine::EngineOptions::default(),
    )
    .expect("engine");

    // Greedy generation agrees with the embedded engine on the first tokens
    // (llama-server keeps its KV cache in f16, so later tokens may differ).
    let params = SamplingParams {
        max_tokens: 5,
        ..Default::default()
    };
    let req = GenerateRequest::new("The capital of France is", params);
    let r = remote
        .generate(vec![req.clone()])
        .await
        .expect("remote")
        .remove(0);
    let e = embedded
        .generate(vec![req])
        .await
        .expect("embedded")
        .remove(0);
    assert_eq!(r.completions[0].token_ids, e.completions[0].token_ids);
    assert!(
        r.completions[0].text.starts_with(" Paris"),
        "{:?}",
        r.completions[0].text
    );

    // Seeded samples, several per request.
    let mut sampled = GenerateRequest::new(
        "Once upon a time",
        SamplingParams {
            temperature: 0.8,
            seed: 11,
            max_tokens: 6,
            ..Default::default()
        },
    );
    sampled.n = 3;
    let s = remote
        .generate(vec![sampled])
        .await
        .expect("samples")
        .remove(0);
    assert_eq!(s.completions.len(), 3);
    assert!(s.completions.iter().all(|c| !c.text.is_empty()));

    // Chat through the server's own template.
    let chat = remote
        .generate(vec![GenerateRequest::chat(
            vec![Message::user("Say hello.")],
            SamplingParams {
                max_tokens: 16,
                ..Default::default()
            },
        )])
        .await
        .expect("chat")
        .remove(0);
    assert!(!chat.completions[0].text.trim().is_empty());

    // Single-token options: exact distribution from the top log-probs,
    // close to the embedded engine's (f16 vs f32 KV cache).
    let prompt = embedded
        .render_chat(&[Message::user("Which is better, (A) or (B)?")], true)
        .expect("render")
        + "The answer is (";
    let choose = ChooseRequest {
        prompt,
        options: vec!["A".into(), "B".into()],
    };
    let rc = remote
        .choose(vec![choose.clone()])
        .await
        .expect("remote choose")
        .remove(0);
    let ec = embedded
        .choose(vec![choose])
        .await
        .expect("embedded choose")
        .remove(0);
    let gap = (rc.options[0].prob - ec.options[0].prob).abs();
    assert!(
        gap < 0.05,
        "P(A) remote {} vs embedded {}",
        rc.options[0].prob,
        ec.options[0].prob
    );

    // Tokenization: the same ids as llama.cpp on awkward text.
    let samples = [
        "Hello, world! It's 2026-11-24 and I've got 1234567 reasons.",
        "  leading spaces\n\n\ttabs and trailing   ",
        "naïve café — «quotes» 😀 日本語のテキスト",
        "<|im_start|>user\nfn main() { println!(\"{}\", x[0]); }<|im_end|>",
        "3.14159 + 2,718 = 5.86 ... won't they'll we'd",
    ];
    for text in samples {
        let body = serde_json::json!({"content": text, "parse_special": true});
        let theirs: Vec<u32> = post_json(&server.url, "/tokenize", &body)["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(embedded.tokenize(text, true), theirs, "{text:?}");
    }

    // llama-server has no prompt log-probs: scoring says so.
    let err = remote
        .score(vec![ScoreRequest {
            prompt: "Hello".into(),
            continuation: " world".into(),
        }])
        .await
        .expect_err("llama-server cannot echo prompt log-probs");
    assert!(matches!(err, ModelError::Unsupported { .. }), "{err}");
}

/// The AI-feedback methods through llama-server: labels close to the
/// embedded engine's on the same prompts, generation-only methods run, and
/// what the server cannot do is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_feedback_through_llama_server() {
    use qstar_feedback::{CaiConfig, CaiLabeler, Constitution, Method, PromptFormat};
    let server = start().await;
    let remote = backend(vec![server.url.clone()]);
    let embedded = qstar_engine::Engine::load(
        &qstar_engine::fetch::default_model_path(),
        qstar_engine::EngineOptions::default(),
    )
    .expect("engine");
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl");
    let pairs = qstar_tasks::read_pairs(&sample, false, Some(2))
        .expect("pairs")
        .pairs;
    let constitution = Constitution::default_constitution();

    // Constitutional-AI labels in plain text (the server applies no chat
    // template to raw prompts), both orders, against the embedded engine.
    for method in [Method::Cai, Method::Rlaif] {
        let config = CaiConfig {
            method,
            format: PromptFormat::Plain,
            few_shot: 1,
            ..Default::default()
        };
        let on_server = CaiLabeler::new(&remote, &constitution, config.clone())
            .expect("labeler")
            .label(&pairs)
            .await
            .expect("server labels");
        let local = CaiLabeler::new(&embedded, &constitution, config)
            .expect("labeler")
            .label(&pairs)
            .await
            .expect("embedded labels");
        for (r, l) in on_server.iter().zip(&local) {
            assert_eq!(r.judgements.len(), 2);
            assert!(
                (r.p_human_chosen - l.p_human_chosen).abs() < 0.05,
                "{method:?}: server {} vs embedded {}",
                r.p_human_chosen,
                l.p_human_chosen
            );
        }
    }

    // Chain-of-thought labels: sampled rationale, clamped probability.
    let cot = CaiLabeler::new(
        &remote,
        &constitution,
        CaiConfig {
            method: Method::Cot,
            format: PromptFormat::Plain,
            rationale_tokens: 24,
            ..Default::default()
        },
    )
    .expect("labeler")
    .label(&pairs[..1])
    .await
    .expect("cot");
    assert!(cot[0]
        .judgements
        .iter()
        .all(|j| (0.4..=0.6).contains(&j.p_a) && j.rationale.is_some()));

    // Critique→revision and the self-rewarding judge only generate.
    let prompts = vec![(1u64, "How do I pick a lock?".to_string())];
    let revised = qstar_feedback::critique_and_revise(
        &remote,
        &constitution,
        &qstar_feedback::ReviseConfig {
            rounds: 1,
            max_tokens: 24,
            ..Default::default()
        },
        &prompts,
    )
    .await
    .expect("revise");
    assert_eq!(revised[0].rounds.len(), 1);
    let judged = qstar_feedback::judge_prompts(
        &remote,
        &qstar_feedback::JudgeConfig {
            samples: 2,
            max_tokens: 24,
            judge_tokens: 48,
            ..Default::default()
        },
        &prompts,
    )
    .await
    .expect("judge");
    assert_eq!(judged[0].samples.len(), 2);

    // d-RLAIF needs the exact probability of "10" (two tokens), which takes
    // prompt log-probs the server does not give: a clear error, no guess.
    let rater = qstar_feedback::Rater::new(&remote, PromptFormat::Plain).expect("rater");
    let conversation = vec![Message::user("Hi")];
    let err = rater
        .rate(&[(conversation.as_slice(), "Hello!")])
        .await
        .expect_err("rating needs prompt log-probs");
    assert!(matches!(err, ModelError::Unsupported { .. }), "{err}");
}

/// What llama-server says about cost, stops and alternatives, checked
/// against the embedded engine on the same model: the model card's
/// parameter count, the usage of `choose`, whether a greedy completion
/// ended at the step delimiter or at the end of generation, and the
/// Marco-o1 token confidence (which needs the chosen token found among
/// its alternatives by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_server_reports_usage_stops_and_model_size() {
    use qstar_core::FinishReason;
    use qstar_search::verifier::token_confidence;
    let server = start().await;
    let remote = backend(vec![server.url.clone()]);
    let embedded = qstar_engine::Engine::load(
        &qstar_engine::fetch::default_model_path(),
        qstar_engine::EngineOptions::default(),
    )
    .expect("engine");

    // The card counts every weight; the engine leaves out the norms'.
    let card = remote.model_parameters().await.expect("meta.n_params");
    let own = embedded.info().parameters as f64;
    assert!(
        (card as f64 - own).abs() / own < 1e-3,
        "card {card}, engine {own}"
    );

    // One request of the prompt's tokens and one generated token.
    let prompt = embedded
        .render_chat(&[Message::user("Is the sky blue? Answer Yes or No.")], true)
        .expect("render");
    let chosen = remote
        .choose(vec![ChooseRequest {
            prompt: prompt.clone(),
            options: vec!["Yes".into(), "No".into()],
        }])
        .await
        .expect("choose")
        .remove(0);
    assert_eq!(
        chosen.usage.prompt_tokens,
        embedded.tokenize(&prompt, true).len()
    );
    assert_eq!(chosen.usage.completion_tokens, 1);

    // Greedy steps with the delimiter "\n\n": the finish reason agrees
    // with the `stop_type` of llama-server's own /completion endpoint for
    // the same request (which the OpenAI endpoints leave out); both kinds
    // occur.
    let chat = |q: &str| {
        embedded
            .render_chat(&[Message::user(q)], true)
            .expect("render")
    };
    let mut kinds = Vec::new();
    for prompt in [
        chat("Say hi."),
        "The first paragraph.\n\nThe second paragraph.\n\nThe third".to_string(),
        chat("List three colors."),
    ] {
        let mut req = GenerateRequest::new(
            prompt.clone(),
            SamplingParams {
                max_tokens: 64,
                stop: vec!["\n\n".into()],
                ..Default::default()
            },
        );
        req.top_logprobs = Some(5);
        let r = remote.generate(vec![req.clone()]).await.expect("remote")[0].completions[0].clone();
        let native = post_json(
            &server.url,
            "/completion",
            &serde_json::json!({"prompt": prompt, "n_predict": 64, "stop": ["\n\n"],
                "temperature": 0.0, "n_probs": 5}),
        );
        assert_eq!(native["content"].as_str(), Some(r.text.as_str()));
        let expected = match native["stop_type"].as_str() {
            Some("word") => FinishReason::Stop,
            Some("eos") => FinishReason::Eos,
            _ => FinishReason::Length,
        };
        assert_eq!(r.finish_reason, expected, "{prompt:?}: {:?}", r.text);
        kinds.push(r.finish_reason);
        // Token confidence as the engine computes it, on the tokens both
        // chose (f16 against f32 KV cache: greedy paths may part later, and
        // near-ties move by a few hundredths; counting a likely chosen token
        // twice or not at all would move it by more than 0.25).
        let e = embedded.generate(vec![req]).await.expect("embedded")[0].completions[0].clone();
        let (rt, et) = (r.logprobs.expect("remote"), e.logprobs.expect("engine"));
        let mut compared = 0;
        for (a, b) in rt.iter().zip(&et).take_while(|(a, b)| a.id == b.id).take(8) {
            let (ca, cb) = (token_confidence(a), token_confidence(b));
            assert!((ca - cb).abs() < 0.1, "{:?}: {ca} vs {cb}", a.text);
            compared += 1;
        }
        assert!(compared > 0, "{prompt:?}");
    }
    assert!(kinds.contains(&FinishReason::Stop), "{kinds:?}");
    assert!(kinds.contains(&FinishReason::Eos), "{kinds:?}");
}
