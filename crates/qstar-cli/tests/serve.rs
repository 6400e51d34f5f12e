//! `qstar serve` on the real default model, spoken to over HTTP: its
//! answers agree with the CLI's embedded runs, qstar's own OpenAI backend
//! runs against it, and the limits (queue, body size, key) answer in
//! OpenAI's error shape without taking the server down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn model() -> PathBuf {
    let path = qstar_engine::fetch::default_model_path();
    assert!(
        path.exists(),
        "the default model is missing; run `cargo run --release -- model fetch` first"
    );
    path
}

/// A running `qstar serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// The structured request lines the server wrote to stderr so far.
    fn request_log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.log.path()).expect("read the log");
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("path").is_some() && v.get("status").is_some())
            .collect()
    }

    /// The request line of the last request to `path`.
    fn logged(&self, path: &str) -> Value {
        self.request_log()
            .into_iter()
            .rev()
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("no request to {path} in the log"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn start(extra: &[&str], env: &[(&str, &str)]) -> Server {
    model();
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qstar"));
    cmd.args(["serve", "--port", &port.to_string(), "--threads", "1"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn qstar serve");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    };
    let client = reqwest::blocking_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{}/health", server.url)).send() {
            if r.status().is_success() {
                return server;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("qstar serve did not come up");
}

/// A small blocking HTTP client over reqwest's async one.
mod reqwest {
    pub use ::reqwest::*;

    pub struct BlockingClient {
        rt: tokio::runtime::Runtime,
        client: Client,
    }

    pub struct Sent<'a> {
        client: &'a BlockingClient,
        request: RequestBuilder,
    }

    pub struct Answer {
        pub status: u16,
        pub headers: header::HeaderMap,
        pub text: String,
    }

    impl Answer {
        pub fn status(&self) -> StatusCode {
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::IM_A_TEAPOT)
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
        }
    }

    impl Sent<'_> {
        pub fn send(self) -> Result<Answer> {
            self.client.rt.block_on(async {
                let r = self.request.send().await?;
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let text = r.text().await?;
                Ok(Answer {
                    status,
                    headers,
                    text,
                })
            })
        }
        pub fn json(self, body: &serde_json::Value) -> Self {
            Sent {
                client: self.client,
                request: self.request.json(body),
            }
        }
        pub fn body(self, body: impl Into<Body>) -> Self {
            Sent {
                client: self.client,
                request: self
                    .request
                    .header("content-type", "application/json")
                    .body(body),
            }
        }
        pub fn bearer(self, key: &str) -> Self {
            Sent {
                client: self.client,
                request: self.request.bearer_auth(key),
            }
        }
    }

    impl BlockingClient {
        pub fn get(&self, url: String) -> Sent<'_> {
            Sent {
                client: self,
                request: self.client.get(url),
            }
        }
        pub fn post(&self, url: String) -> Sent<'_> {
            Sent {
                client: self,
                request: self.client.post(url),
            }
        }
    }

    pub fn blocking_client() -> BlockingClient {
        BlockingClient {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            client: Client::new(),
        }
    }
}

fn post(server: &Server, path: &str, body: Value) -> reqwest::Answer {
    reqwest::blocking_client()
        .post(format!("{}{path}", server.url))
        .json(&body)
        .send()
        .expect("request")
}

fn ok_json(server: &Server, path: &str, body: Value) -> Value {
    let a = post(server, path, body);
    assert_eq!(a.status, 200, "{path}: {}", a.text);
    a.json()
}

/// The CLI's `--json` output.
fn cli_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .args(args)
        .output()
        .expect("run qstar");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// Asserts the OpenAI error shape and returns the error object.
fn openai_error(a: &reqwest::Answer, status: u16) -> Value {
    assert_eq!(a.status, status, "{}", a.text);
    let v = a.json();
    let e = v["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}

const PROMPT: &str = "The three primary colors are";
/// A prompt greedy decoding continues for well over 100 tokens.
const LONG_RUNNER: &str = "Once upon a time, in a land far away,";

#[test]
fn greedy_completions_equal_qstar_generate_and_report_usage() {
    let server = start(&[], &[]);
    // The model card gives the size where llama-server puts it.
    let card = reqwest::blocking_client()
        .get(format!("{}/v1/models", server.url))
        .send()
        .expect("models")
        .json();
    let info = cli_json(&["model", "info", "--json"]);
    assert_eq!(card["data"][0]["meta"]["n_params"], info["parameters"]);
    assert!(info["parameters"].as_u64().is_some_and(|n| n > 100_000_000));
    let cli = cli_json(&[
        "generate",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "12",
        "--json",
    ]);
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": PROMPT, "max_tokens": 12, "temperature": 0}),
    );
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], cli["completions"][0]["text"]);
    assert_eq!(choice["token_ids"], cli["completions"][0]["token_ids"]);
    assert_eq!(v["object"], "text_completion");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"].as_u64(), Some(12));
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap_or(0) + 12)
    );
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());

    // A list of prompts with n samples each: prompt-major choice order,
    // each sample as the engine seeds it (seed + i).
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": [PROMPT, "Once upon a time"], "max_tokens": 6,
               "temperature": 0.8, "seed": 5, "n": 2}),
    );
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"].as_u64(), Some(i as u64));
    }
    let second = cli_json(&[
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "6",
        "--temperature",
        "0.8",
        "--seed",
        "5",
        "--n",
        "2",
        "--json",
    ]);
    assert_eq!(choices[2]["text"], second["completions"][0]["text"]);
    assert_eq!(choices[3]["text"], second["completions"][1]["text"]);

    // A long prompt twice: the second time its prefix comes from the
    // engine's cache (it caches whole blocks of tokens).
    let long = "A list of colors: red, orange, yellow, green, blue, indigo, violet. ".repeat(6);
    let body = json!({"prompt": long, "max_tokens": 1, "temperature": 0});
    let first = ok_json(&server, "/v1/completions", body.clone());
    let again = ok_json(&server, "/v1/completions", body);
    assert_eq!(first["choices"][0]["text"], again["choices"][0]["text"]);
    assert!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .is_some_and(|c| c > 0),
        "{again}"
    );

    // A chat completion equals `qstar generate --chat`.
    let cli = cli_json(&[
        "generate",
        "--prompt",
        "Name a fruit.",
        "--chat",
        "--max-tokens",
        "8",
        "--json",
    ]);
    let v = ok_json(
        &server,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Name a fruit."}],
               "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    );
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["content"], cli["completions"][0]["text"]);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(prompt_tokens > 0);
    // The request's line in the structured log on stderr says the same.
    let line = server.logged("/v1/chat/completions");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["status"], 200);
    assert_eq!(line["generated_tokens"], 8, "{line}");
    assert_eq!(line["prompt_tokens"], prompt_tokens, "{line}");
    assert!(line["ms"].as_f64().is_some_and(|ms| ms > 0.0), "{line}");
    let content = choice["logprobs"]["content"].as_array().expect("content");
    assert_eq!(content.len(), 8);
    for t in content {
        let top = t["top_logprobs"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], t["token"]);
        assert!(t["logprob"].as_f64().is_some_and(|l| l <= 0.0));
    }
}

#[test]
fn echoed_prompt_logprobs_equal_qstar_score() {
    let server = start(&[], &[]);
    // Non-ASCII, so character offsets differ from byte offsets.
    let text = "Café au lait — très bien, merci.";
    let cli = cli_json(&["score", "--continuation", text, "--json"]);
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": text, "max_tokens": 0, "echo": true, "logprobs": 1}),
    );
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], text);
    let lp = &choice["logprobs"];
    let tokens = lp["tokens"].as_array().expect("tokens");
    let logprobs = lp["token_logprobs"].as_array().expect("token_logprobs");
    let scored = cli["tokens"].as_array().expect("cli tokens");
    assert_eq!(tokens.len(), scored.len());
    assert!(logprobs[0].is_null(), "{lp}");
    assert!(lp["top_logprobs"][0].is_null(), "{lp}");
    for (i, s) in scored.iter().enumerate() {
        assert_eq!(tokens[i], s["text"]);
        match s["logprob"].as_f64() {
            None => assert!(logprobs[i].is_null()),
            Some(want) => {
                let got = logprobs[i].as_f64().expect("logprob");
                assert!((got - want).abs() < 1e-5, "token {i}: {got} vs {want}");
            }
        }
    }
    // Offsets count characters: each is the characters before the token.
    let offsets = lp["text_offset"].as_array().expect("text_offset");
    let mut chars = 0;
    for (t, o) in tokens.iter().zip(offsets) {
        assert_eq!(o.as_u64(), Some(chars));
        chars += t.as_str().map_or(0, |t| t.chars().count()) as u64;
    }
    assert_eq!(chars, text.chars().count() as u64);
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(0));
    assert!(v["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0));

    // Echo with generation: prompt tokens, then the generated ones.
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": text, "max_tokens": 3, "temperature": 0, "echo": true, "logprobs": 2}),
    );
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(
        lp["tokens"].as_array().map(Vec::len),
        Some(scored.len() + 3)
    );
    let generated = &lp["top_logprobs"][scored.len()];
    assert_eq!(generated.as_object().map(|m| m.len()), Some(2), "{lp}");
    assert!(v["choices"][0]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with(text)));
}

#[test]
fn qstar_openai_backend_runs_against_serve() {
    let server = start(&[], &[]);
    let remote = ["--backend", "openai", "--base-url", server.url.as_str()];
    let args = [
        "generate",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "10",
        "--json",
    ];
    let embedded = cli_json(&args);
    let through = cli_json(&[&args[..], &remote[..]].concat());
    assert_eq!(
        through["completions"][0]["text"],
        embedded["completions"][0]["text"]
    );
    assert_eq!(
        through["completions"][0]["token_ids"],
        embedded["completions"][0]["token_ids"]
    );

    // Options of several tokens go through echo (prompt log-probs); single
    // tokens through the first position's top log-probs.
    for options in [
        vec![" red, yellow and blue", " red, green and blue", " cyan"],
        vec![" red", " blue"],
    ] {
        let mut args = vec!["choose", "--prompt", PROMPT, "--json"];
        for o in &options {
            args.extend(["--option", o]);
        }
        let embedded = cli_json(&args);
        let through = cli_json(&[&args[..], &remote[..]].concat());
        for (a, b) in embedded["options"]
            .as_array()
            .expect("options")
            .iter()
            .zip(through["options"].as_array().expect("options"))
        {
            assert_eq!(a["text"], b["text"]);
            let (pa, pb) = (a["prob"].as_f64(), b["prob"].as_f64());
            let (pa, pb) = (pa.expect("prob"), pb.expect("prob"));
            assert!((pa - pb).abs() < 1e-4, "{options:?}: {pa} vs {pb}");
        }
    }
}

#[test]
fn choose_and_reward_endpoints() {
    let server = start(&[], &[]);
    let options = [" red, yellow and blue", " red, green and blue", " cyan"];
    let mut args = vec!["choose", "--prompt", PROMPT, "--json"];
    for o in &options {
        args.extend(["--option", o]);
    }
    let cli = cli_json(&args);
    let v = ok_json(
        &server,
        "/v1/choose",
        json!({"prompt": PROMPT, "options": options}),
    );
    let got = v["options"].as_array().expect("options");
    let want = cli["options"].as_array().expect("options");
    assert_eq!(got.len(), 3);
    let mut total = 0.0;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["text"], w["text"]);
        let (pg, pw) = (
            g["prob"].as_f64().expect("p"),
            w["prob"].as_f64().expect("p"),
        );
        assert!((pg - pw).abs() < 1e-9, "{pg} vs {pw}");
        total += pg;
    }
    assert!((total - 1.0).abs() < 1e-9);
    assert!(
        v["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );
    let bad = post(
        &server,
        "/v1/choose",
        json!({"prompt": PROMPT, "options": []}),
    );
    assert_eq!(openai_error(&bad, 400)["param"], "options");

    // OpenRLHF's request: full prompt+response texts and their prompts.
    let prompts = ["What is 2 + 2?", "Say something kind."];
    let replies = [" 2 + 2 = 4.", " You are doing great."];
    let queries: Vec<String> = prompts
        .iter()
        .zip(replies)
        .map(|(p, r)| format!("{p}{r}"))
        .collect();
    let v = ok_json(
        &server,
        "/get_reward",
        json!({"query": queries, "prompts": prompts, "labels": ["4", ""]}),
    );
    let rewards = v["rewards"].as_array().expect("rewards");
    let scores = v["scores"].as_array().expect("scores");
    assert_eq!((rewards.len(), scores.len()), (2, 2));
    // d-RLAIF's questions count their tokens, as the completions' do.
    let reward_line = server.logged("/get_reward");
    assert!(
        reward_line["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
        "{reward_line}"
    );
    for (i, (r, s)) in rewards.iter().zip(scores).enumerate() {
        let (r, s) = (r.as_f64().expect("reward"), s.as_f64().expect("score"));
        assert!((0.0..=1.0).contains(&s), "{s}");
        // Both come from one expected rating e: r = (e − 5.5)/4.5 and
        // s = (e − 1)/9, so s = (r + 1)/2.
        assert!((s - (r + 1.0) / 2.0).abs() < 1e-9, "{r} {s}");
        // /v1/rate on the same prompt and reply gives the same reward.
        let rated = ok_json(
            &server,
            "/v1/rate",
            json!({"prompt": prompts[i], "response": replies[i]}),
        );
        // Its ten options were scored after the prompt: counted, and logged.
        let rate_tokens = rated["usage"]["prompt_tokens"].as_u64().expect("usage");
        assert!(rate_tokens > 0, "{rated}");
        assert_eq!(server.logged("/v1/rate")["prompt_tokens"], rate_tokens);
        let e = rated["expected_score"].as_f64().expect("expected");
        assert!((rated["reward"].as_f64().expect("reward") - r).abs() < 1e-6);
        assert!((v["extra_logs"]["expected_rating"][i].as_f64().expect("e") - e).abs() < 1e-6);
        let dist = rated["distribution"].as_array().expect("distribution");
        let mean: f64 = dist
            .iter()
            .enumerate()
            .map(|(k, p)| (k + 1) as f64 * p.as_f64().unwrap_or(f64::NAN))
            .sum();
        assert!((mean - e).abs() < 1e-9);
    }
    let bad = post(
        &server,
        "/get_reward",
        json!({"query": ["a", "b"], "prompts": ["a"]}),
    );
    assert_eq!(openai_error(&bad, 400)["param"], "prompts");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let server = start(
        &["--max-body-bytes", "4096", "--max-tokens-limit", "64"],
        &[],
    );
    let client = reqwest::blocking_client();
    let url = format!("{}/v1/completions", server.url);
    let a = client
        .post(url.clone())
        .body("{not json")
        .send()
        .expect("send");
    openai_error(&a, 400);
    let a = post(&server, "/v1/completions", json!({"max_tokens": 3}));
    assert!(openai_error(&a, 400)["message"]
        .as_str()
        .is_some_and(|m| m.contains("prompt")));
    let a = post(&server, "/v1/completions", json!({"prompt": "x", "n": 0}));
    assert_eq!(openai_error(&a, 400)["param"], "n");
    let a = post(
        &server,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 65}),
    );
    assert_eq!(openai_error(&a, 400)["param"], "max_tokens");
    let a = post(
        &server,
        "/v1/completions",
        json!({"prompt": "x", "top_p": 0}),
    );
    assert_eq!(openai_error(&a, 400)["param"], "top_p");
    let a = post(&server, "/v1/chat/completions", json!({"messages": []}));
    assert_eq!(openai_error(&a, 400)["param"], "messages");
    let a = post(
        &server,
        "/v1/completions",
        json!({"prompt": "x".repeat(5000)}),
    );
    assert_eq!(openai_error(&a, 413)["code"], "request_too_large");
    let a = client
        .get(format!("{}/v1/nothing", server.url))
        .send()
        .expect("send");
    openai_error(&a, 404);
    let a = client.get(url.clone()).send().expect("send");
    openai_error(&a, 405);
    let a = post(
        &server,
        "/v1/completions",
        json!({"prompt": ["a", "b", "c"], "n": 100, "max_tokens": 1}),
    );
    assert_eq!(openai_error(&a, 400)["param"], "n");
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(2));
}

#[test]
fn a_prompt_beyond_the_context_is_a_bad_request() {
    let server = start(&[], &[]);
    let long = "word ".repeat(9000);
    for body in [
        json!({"prompt": long, "max_tokens": 1}),
        json!({"prompt": long, "max_tokens": 0, "echo": true}),
    ] {
        let a = post(&server, "/v1/completions", body);
        assert!(openai_error(&a, 400)["message"]
            .as_str()
            .is_some_and(|m| m.contains("context")));
    }
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 1}),
    );
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(1));
}

#[test]
fn api_key_is_required_when_configured() {
    let server = start(
        &["--api-key-env", "QSTAR_TEST_SERVE_KEY"],
        &[("QSTAR_TEST_SERVE_KEY", "s3cret-key")],
    );
    let client = reqwest::blocking_client();
    let body = json!({"prompt": "Hi", "max_tokens": 1});
    let url = format!("{}/v1/completions", server.url);
    let missing = client.post(url.clone()).json(&body).send().expect("send");
    assert_eq!(openai_error(&missing, 401)["code"], "invalid_api_key");
    let wrong = client
        .post(url.clone())
        .json(&body)
        .bearer("s3cret-kez")
        .send()
        .expect("send");
    openai_error(&wrong, 401);
    let right = client
        .post(url)
        .json(&body)
        .bearer("s3cret-key")
        .send()
        .expect("send");
    assert_eq!(right.status, 200, "{}", right.text);
    // Health stays open for load balancers; the rest needs the key.
    let models = client
        .get(format!("{}/v1/models", server.url))
        .send()
        .expect("send");
    openai_error(&models, 401);
    // qstar's own backend sends the key from its --api-key-env.
    let out = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .args([
            "generate",
            "--prompt",
            "Hi",
            "--max-tokens",
            "2",
            "--backend",
            "openai",
        ])
        .args([
            "--base-url",
            &server.url,
            "--api-key-env",
            "QSTAR_TEST_SERVE_KEY",
        ])
        .env("QSTAR_TEST_SERVE_KEY", "s3cret-key")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unset variable is a usage error at start-up.
    let out = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .args([
            "serve",
            "--port",
            "1",
            "--api-key-env",
            "QSTAR_TEST_SERVE_UNSET",
        ])
        .env_remove("QSTAR_TEST_SERVE_UNSET")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn overload_answers_429_with_retry_after_and_recovers() {
    let server = start(&["--max-queue", "1"], &[]);
    let url = server.url.clone();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                reqwest::blocking_client()
                    .post(format!("{url}/v1/completions"))
                    .json(&json!({"prompt": format!("Story {i}: once upon a time"),
                                  "max_tokens": 48, "temperature": 0}))
                    .send()
                    .expect("request")
            })
        })
        .collect();
    let answers: Vec<reqwest::Answer> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let busy: Vec<&reqwest::Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        !busy.is_empty(),
        "no 429 among {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(answers.iter().any(|a| a.status == 200));
    for a in &answers {
        assert!(
            a.status == 200 || a.status == 429,
            "{}: {}",
            a.status,
            a.text
        );
    }
    for a in busy {
        assert_eq!(openai_error(a, 429)["code"], "queue_full");
        assert_eq!(
            a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 2}),
    );
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(1));
    let metrics = reqwest::blocking_client()
        .get(format!("{url}/metrics"))
        .send()
        .expect("metrics");
    let text = &metrics.text;
    let rejected = answers.iter().filter(|a| a.status == 429).count();
    assert!(
        text.contains(&format!("qstar_rejected_busy_total {rejected}")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "qstar_requests_total{{path=\"/v1/completions\",status=\"429\"}} {rejected}"
    )));
    assert!(text.contains("qstar_request_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(text.contains("qstar_prefix_cache_hit_rate"));
    assert!(text.contains("qstar_queue_depth 0"), "{text}");
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_zero() {
    let mut server = start(&[], &[]);
    let url = server.url.clone();
    let request = std::thread::spawn(move || {
        reqwest::blocking_client()
            .post(format!("{url}/v1/completions"))
            .json(
                &json!({"prompt": LONG_RUNNER, "max_tokens": 400, "temperature": 0,
                          "ignore_eos": true}),
            )
            .send()
    });
    // Wait until the request holds its queue slot, then signal.
    let metrics = format!("{}/metrics", server.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = reqwest::blocking_client()
            .get(metrics.clone())
            .send()
            .expect("metrics");
        if m.text.contains("qstar_queue_depth 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Once the signal is handled, a new connection is refused while the
    // request in flight is still being finished.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = reqwest::blocking_client()
            .get(format!("{}/health", server.url))
            .send();
        if probe.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new requests were still served 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !request.is_finished(),
        "the request in flight ended before new ones were refused; make it longer"
    );
    let answer = request
        .join()
        .expect("thread")
        .expect("the request completes");
    assert_eq!(answer.status, 200, "{}", answer.text);
    let v = answer.json();
    assert!(v["usage"]["completion_tokens"]
        .as_u64()
        .is_some_and(|n| n > 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    // Nothing listens any more.
    let after = reqwest::blocking_client()
        .get(format!("{}/health", server.url))
        .send();
    assert!(after.is_err());
}

#[test]
fn labeling_through_one_or_two_servers_agrees_with_the_embedded_run() {
    let server = start(&[], &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let pairs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl");
    let run = |out: &str, extra: &[&str]| {
        let status = Command::new(env!("CARGO_BIN_EXE_qstar"))
            .current_dir(dir.path())
            .args([
                "label",
                "--input",
                &pairs.display().to_string(),
                "--out",
                out,
            ])
            .args([
                "--prompt-format",
                "plain",
                "--limit",
                "3",
                "--principles",
                "1",
            ])
            .args(extra)
            .output()
            .expect("run");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        std::fs::read_to_string(dir.path().join(out))
            .expect("labels")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .collect::<Vec<_>>()
    };
    let embedded = run("embedded.jsonl", &[]);
    let served = run(
        "served.jsonl",
        &["--backend", "openai", "--base-url", &server.url],
    );
    // A fleet of two: the requests are spread over both servers.
    let second = start(&[], &[]);
    let before = [&server, &second].map(|s| metric(s, "qstar_prompt_tokens_total"));
    let fleet = run(
        "fleet.jsonl",
        &[
            "--backend",
            "openai",
            "--base-url",
            &server.url,
            "--base-url",
            &second.url,
        ],
    );
    for (s, b) in [&server, &second].iter().zip(before) {
        let after = metric(s, "qstar_prompt_tokens_total");
        assert!(after > b, "{} served nothing of the fleet's run", s.url);
    }
    assert_eq!(embedded.len(), 3);
    assert_eq!(served.len(), 3);
    assert_eq!(fleet.len(), 3);
    for (a, b) in embedded
        .iter()
        .zip(&served)
        .chain(embedded.iter().zip(&fleet))
    {
        let (la, lb) = (a["soft_label"].as_f64(), b["soft_label"].as_f64());
        let (la, lb) = (la.expect("soft label"), lb.expect("soft label"));
        assert!((la - lb).abs() < 1e-4, "{la} vs {lb}");
        let ja = a["judgements"].as_array().expect("judgements");
        let jb = b["judgements"].as_array().expect("judgements");
        assert_eq!(ja.len(), jb.len());
        for (x, y) in ja.iter().zip(jb) {
            let (px, py) = (
                x["p_a"].as_f64().expect("p_a"),
                y["p_a"].as_f64().expect("p_a"),
            );
            assert!((px - py).abs() < 1e-4, "{px} vs {py}");
        }
    }
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim_start().to_string())
        .collect()
}

/// The chunks of a stream (without `[DONE]`, which must end it) and the
/// text of choice 0 put together.
fn stream_of(a: &reqwest::Answer, chat: bool) -> (Vec<Value>, String) {
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let data = sse_data(&a.text);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        a.text
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    let text = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["index"] == 0)
        .filter_map(|c| {
            let t = if chat {
                &c["delta"]["content"]
            } else {
                &c["text"]
            };
            t.as_str().map(str::to_string)
        })
        .collect();
    (chunks, text)
}

#[test]
fn streams_send_text_as_it_is_sampled_and_end_with_done() {
    let server = start(&["--max-queue", "1"], &[]);
    let body = json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0});
    let plain = ok_json(&server, "/v1/completions", body.clone());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (chunks, text) = stream_of(&post(&server, "/v1/completions", streamed), false);
    assert_eq!(text, plain["choices"][0]["text"].as_str().expect("text"));
    // Token by token: more text chunks than one per choice.
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(pieces > 2, "{chunks:?}");
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["completion_tokens"].as_u64(), Some(8));
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, &plain["choices"][0]["finish_reason"]);

    // A stop string is never sent, not even in part.
    let cut = plain["choices"][0]["text"].as_str().expect("text");
    let stop: String = cut.chars().skip(4).take(3).collect();
    let body = json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stop": [stop]});
    let plain = ok_json(&server, "/v1/completions", body.clone());
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (_, text) = stream_of(&post(&server, "/v1/completions", streamed), false);
    assert_eq!(text, plain["choices"][0]["text"].as_str().expect("text"));
    assert!(!text.contains(&stop));

    // With log-probs the answer comes as whole chunks, still the same text.
    let body = json!({"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 1,
                      "stream": true});
    let (chunks, text) = stream_of(&post(&server, "/v1/completions", body), false);
    assert!(chunks[0]["choices"][0]["logprobs"]["tokens"].is_array());
    assert!(text.starts_with(&plain["choices"][0]["text"].as_str().expect("text")[..1]));

    let chat = json!({"messages": [{"role": "user", "content": "Name a fruit."}],
                      "max_tokens": 6, "temperature": 0});
    let plain = ok_json(&server, "/v1/chat/completions", chat.clone());
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    let (chunks, text) = stream_of(&post(&server, "/v1/chat/completions", streamed), true);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );

    // A stream holds its queue slot until it ends.
    let url = server.url.clone();
    let long = std::thread::spawn(move || {
        reqwest::blocking_client()
            .post(format!("{url}/v1/completions"))
            .json(
                &json!({"prompt": LONG_RUNNER, "max_tokens": 96, "temperature": 0,
                        "stream": true}),
            )
            .send()
            .expect("stream")
    });
    let metrics = format!("{}/metrics", server.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::blocking_client()
        .get(metrics.clone())
        .send()
        .expect("metrics")
        .text
        .contains("qstar_queue_depth 1")
    {
        if long.is_finished() || Instant::now() > deadline {
            let a = long.join().expect("thread");
            panic!("the stream never took its slot: {} {}", a.status, a.text);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let busy = post(
        &server,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 1}),
    );
    assert_eq!(busy.status, 429, "{}", busy.text);
    let (_, text) = stream_of(&long.join().expect("thread"), false);
    assert!(!text.is_empty());
}

/// With `--reward-model`, `/get_reward` answers with the trained head's
/// rewards: the same numbers `qstar rate --reward-model` writes for the
/// same replies, and scores that are their sigmoid.
#[test]
fn get_reward_serves_a_trained_reward_model() {
    let dir = tempfile::tempdir().expect("dir");
    let pairs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl");
    let cache = dir.path().join("features.sqlite");
    let (rm, rated) = (dir.path().join("rm"), dir.path().join("rated.jsonl"));
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    cli_json(&[
        "train",
        "rm",
        "--pairs",
        &s(&pairs),
        "--epochs",
        "5",
        "--feature-cache",
        &s(&cache),
        "--json",
        "--out",
        &s(&rm),
    ]);
    cli_json(&[
        "rate",
        "--input",
        &s(&pairs),
        "--reward-model",
        &s(&rm),
        "--feature-cache",
        &s(&cache),
        "--json",
        "--out",
        &s(&rated),
    ]);
    let records: Vec<Value> = std::fs::read_to_string(&rated)
        .expect("rated")
        .lines()
        .take(3)
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let server = start(
        &["--reward-model", &s(&rm), "--feature-cache", &s(&cache)],
        &[],
    );
    let prompts: Vec<String> = records
        .iter()
        .map(|r| {
            r["prompt"][0]["content"]
                .as_str()
                .expect("prompt")
                .to_string()
        })
        .collect();
    let queries: Vec<String> = records
        .iter()
        .zip(&prompts)
        .map(|(r, p)| format!("{p}{}", r["chosen"][0]["content"].as_str().expect("reply")))
        .collect();
    let v = ok_json(
        &server,
        "/get_reward",
        json!({"query": queries, "prompts": prompts}),
    );
    for (i, r) in records.iter().enumerate() {
        let (got, want) = (
            v["rewards"][i].as_f64().expect("reward"),
            r["reward_chosen"].as_f64().expect("rated"),
        );
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        let score = v["scores"][i].as_f64().expect("score");
        assert!((score - 1.0 / (1.0 + (-got).exp())).abs() < 1e-12);
    }
    // The rated file's own figures: the head was trained on these pairs.
    let higher = records
        .iter()
        .filter(|r| r["reward_chosen"].as_f64() > r["reward_rejected"].as_f64())
        .count();
    assert!(higher >= 2, "{records:?}");
}

/// `prompt_logprobs` (vLLM's layout) and echo's alternatives: the prompt's
/// log-probs are `qstar score`'s, each position lists the token and the k
/// most likely tokens with consistent ranks, and the alternatives at the
/// prompt's end are the ones a one-token generation reports there.
#[test]
fn prompt_logprobs_list_ranked_alternatives_that_generation_agrees_with() {
    let server = start(&[], &[]);
    let k = 5;
    let next = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": k}),
    );
    let generated = next["choices"][0]["text"].as_str().expect("text");
    let first_top = next["choices"][0]["logprobs"]["top_logprobs"][0].clone();
    let text = format!("{PROMPT}{generated}");
    let cli = cli_json(&["score", "--continuation", &text, "--json"]);
    let scored = cli["tokens"].as_array().expect("cli tokens");
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": text, "max_tokens": 0, "echo": true, "logprobs": k,
               "prompt_logprobs": k}),
    );
    let choice = &v["choices"][0];
    let rows = choice["prompt_logprobs"]
        .as_array()
        .expect("prompt_logprobs");
    assert_eq!(rows.len(), scored.len(), "{choice}");
    assert!(rows[0].is_null());
    for (i, (row, s)) in rows.iter().zip(scored).enumerate().skip(1) {
        let map = row.as_object().expect("a map per token");
        let id = s["id"].as_u64().expect("id").to_string();
        let own = &map[&id];
        let want = s["logprob"].as_f64().expect("logprob");
        let got = own["logprob"].as_f64().expect("logprob");
        assert!((got - want).abs() < 1e-5, "token {i}: {got} vs {want}");
        let rank = own["rank"].as_u64().expect("rank");
        // The token and its k alternatives: k entries when it is among them.
        let others: Vec<(u64, f64)> = map
            .iter()
            .filter(|(key, _)| **key != id)
            .map(|(_, e)| {
                (
                    e["rank"].as_u64().expect("rank"),
                    e["logprob"].as_f64().expect("lp"),
                )
            })
            .collect();
        if rank as usize <= k {
            assert_eq!(map.len(), k, "token {i}: {row}");
        } else {
            assert_eq!(map.len(), k + 1, "token {i}: {row}");
        }
        for &(r, lp) in &others {
            assert!(r >= 1 && r as usize <= k && r != rank, "token {i}: {row}");
            // A token ranked above this one is at least as likely.
            assert_eq!(r < rank, lp >= got, "token {i}: {row}");
        }
    }
    // Echo's alternatives at the last position are generation's at the end
    // of the prompt (one path scores, the other samples).
    let echoed = choice["logprobs"]["top_logprobs"]
        .as_array()
        .expect("top_logprobs");
    let last = echoed.last().expect("tokens").as_object().expect("map");
    let from_generation = first_top.as_object().expect("map");
    assert_eq!(
        last.len(),
        from_generation.len(),
        "{last:?} vs {from_generation:?}"
    );
    for (token, lp) in from_generation {
        let other = last[token].as_f64().expect("same alternative");
        assert!((other - lp.as_f64().expect("lp")).abs() < 1e-4, "{token}");
    }
    let bad = post(
        &server,
        "/v1/completions",
        json!({"prompt": PROMPT, "max_tokens": 0, "prompt_logprobs": 21}),
    );
    assert_eq!(openai_error(&bad, 400)["param"], "prompt_logprobs");
}

/// A constitution of two principles, for judgements over all of them.
fn two_principles(dir: &Path) -> PathBuf {
    let path = dir.join("constitution.toml");
    std::fs::write(
        &path,
        "principles = [\n  \"Which reply is more helpful and honest?\",\n  \
         \"Which reply is less harmful?\",\n]\n",
    )
    .expect("write constitution");
    path
}

/// `/v1/judge` gives `qstar label`'s soft label for the same pair, and
/// swapping the replies gives its complement.
#[test]
fn judge_equals_qstar_label_and_is_symmetric() {
    let dir = tempfile::tempdir().expect("tmp");
    let constitution = two_principles(dir.path());
    let constitution = constitution.display().to_string();
    let server = start(&["--constitution", &constitution], &[]);
    let question = "How do I keep basil fresh?";
    let good = "Trim the stems and keep it in a glass of water on the counter.";
    let bad = "Basil cannot be kept.";
    let pairs = dir.path().join("pair.jsonl");
    std::fs::write(
        &pairs,
        format!(
            "{}\n",
            json!({"prompt": question, "chosen": good, "rejected": bad})
        ),
    )
    .expect("write pair");
    let out = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .current_dir(dir.path())
        .args(["label", "--input", &pairs.display().to_string()])
        .args(["--out", "labels.jsonl", "--principles", "all"])
        .args(["--constitution", &constitution])
        .output()
        .expect("run label");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("labels.jsonl"))
            .expect("labels")
            .lines()
            .next()
            .expect("one record"),
    )
    .expect("JSON");
    let want = record["soft_label"].as_f64().expect("soft label");
    let ask = |a: &str, b: &str| {
        ok_json(
            &server,
            "/v1/judge",
            json!({"prompt": question, "response_a": a, "response_b": b,
                   "principles": "all"}),
        )
    };
    let v = ask(good, bad);
    let p_a = v["p_a"].as_f64().expect("p_a");
    assert!((p_a - want).abs() < 1e-4, "judge {p_a} vs label {want}");
    let judgements = v["judgements"].as_array().expect("judgements");
    // Two principles, each in both orders.
    assert_eq!(judgements.len(), 4, "{v}");
    let mean: f64 = judgements
        .iter()
        .map(|j| j["p_a"].as_f64().expect("p_a"))
        .sum::<f64>()
        / 4.0;
    assert!((mean - p_a).abs() < 1e-9);
    assert!(judgements.iter().any(|j| j["a_first"] == true));
    assert!(judgements.iter().any(|j| j["a_first"] == false));
    // Four questions were asked: their prompt tokens are counted and logged.
    let judged_tokens = v["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(judged_tokens > 0, "{v}");
    assert_eq!(server.logged("/v1/judge")["prompt_tokens"], judged_tokens);
    let swapped = ask(bad, good)["p_a"].as_f64().expect("p_a");
    assert!(
        (swapped - (1.0 - p_a)).abs() < 1e-6,
        "{swapped} vs 1 - {p_a}"
    );
    for (body, param) in [
        (
            json!({"prompt": question, "response_a": good, "response_b": bad,
                "principles": 3}),
            "principles",
        ),
        (
            json!({"prompt": question, "response_a": good, "response_b": bad,
                "method": "vote"}),
            "method",
        ),
    ] {
        assert_eq!(
            openai_error(&post(&server, "/v1/judge", body), 400)["param"],
            param
        );
    }
}

/// The value of one metric line in `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    let a = reqwest::blocking_client()
        .get(format!("{}/metrics", server.url))
        .send()
        .expect("metrics");
    a.text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{}", a.text))
}

/// Polls until the engine has no sequence left, and returns how many jobs
/// it cancelled by then.
fn wait_until_idle(server: &Server, what: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = metric(server, "qstar_engine_sequences_running");
        let waiting = metric(server, "qstar_engine_sequences_waiting");
        if running == 0.0 && waiting == 0.0 {
            return metric(server, "qstar_engine_jobs_cancelled_total");
        }
        assert!(Instant::now() < deadline, "{what}: the engine kept working");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client that goes away cancels its work in the engine: a stream read
/// for a few chunks, and a plain request whose client gives up.
#[test]
fn a_client_that_disconnects_cancels_its_engine_work() {
    use std::io::{Read, Write};
    let server = start(&[], &[]);
    let max_tokens = 3000;
    let body = |stream: bool| {
        json!({"prompt": LONG_RUNNER, "max_tokens": max_tokens, "ignore_eos": true,
               "temperature": 0, "stream": stream})
        .to_string()
    };
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).expect("connect");
    let streamed = body(true);
    write!(
        socket,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{streamed}",
        streamed.len()
    )
    .expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(5).filter(|w| w == b"data:").count() < 3 {
        let n = socket.read(&mut buf).expect("read the stream");
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(metric(&server, "qstar_engine_sequences_running") >= 1.0);
    drop(socket);
    let cancelled = wait_until_idle(&server, "after the stream's client left");
    assert_eq!(cancelled, 1.0);
    let generated = metric(&server, "qstar_engine_tokens_generated_total");
    assert!(generated < max_tokens as f64 / 2.0, "{generated} tokens");

    // Without streaming: the client's own time limit drops the connection.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let gave_up = rt.block_on(async {
        ::reqwest::Client::new()
            .post(format!("{}/v1/completions", server.url))
            .header("content-type", "application/json")
            .body(body(false))
            .timeout(Duration::from_millis(1500))
            .send()
            .await
    });
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    // The client's connection lives in its runtime: dropping it closes it.
    drop(rt);
    let cancelled = wait_until_idle(&server, "after the plain client left");
    assert_eq!(cancelled, 2.0);
    let more = metric(&server, "qstar_engine_tokens_generated_total") - generated;
    assert!(more < max_tokens as f64 / 2.0, "{more} tokens");
    // The server still answers.
    let v = ok_json(
        &server,
        "/v1/completions",
        json!({"prompt": PROMPT, "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(2));
}

/// Search through a fleet of two servers: weighted voting over samples
/// spread across both finds what the embedded run finds, sample for sample.
/// (Step scoring by prompt log-probs needs a prompt that ends where a
/// token ends; the plain format's "Assistant: " does not, and the backend
/// says so instead of guessing: `qstar-openai`'s shape tests.)
#[test]
fn search_through_two_servers_agrees_with_the_embedded_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("add.jsonl");
    let made = Command::new(env!("CARGO_BIN_EXE_qstar"))
        .args(["tasks", "generate", "--task", "arithmetic", "--count", "2"])
        .args(["--seed", "7", "--out"])
        .arg(&input)
        .output()
        .expect("tasks");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (a, b) = (start(&[], &[]), start(&[], &[]));
    let run = |out: &str, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_qstar"))
            .current_dir(dir.path())
            .args(["solve", "--task", "arithmetic", "--input"])
            .arg(&input)
            .args([
                "--strategy",
                "weighted",
                "--verifier",
                "agreement",
                "--budget",
                "4",
            ])
            .args(["--prompt-format", "plain"])
            .args([
                "--max-tokens",
                "48",
                "--max-step-tokens",
                "24",
                "--max-steps",
                "3",
            ])
            .args(["--out", out])
            .args(extra)
            .output()
            .expect("solve");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(dir.path().join(out))
            .expect("records")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .collect::<Vec<_>>()
    };
    let embedded = run("embedded.jsonl", &[]);
    let before = [&a, &b].map(|s| metric(s, "qstar_prompt_tokens_total"));
    let fleet = run(
        "fleet.jsonl",
        &[
            "--backend",
            "openai",
            "--base-url",
            &a.url,
            "--base-url",
            &b.url,
        ],
    );
    for (s, was) in [&a, &b].iter().zip(before) {
        assert!(
            metric(s, "qstar_prompt_tokens_total") > was,
            "{} idle",
            s.url
        );
    }
    assert_eq!(embedded.len(), 2);
    assert_eq!(fleet.len(), 2);
    for (e, f) in embedded.iter().zip(&fleet) {
        assert_eq!(e["answer"], f["answer"], "{e}\n{f}");
        assert_eq!(e["solution"], f["solution"]);
        assert_eq!(e["tree"], f["tree"]);
    }
}

/// `serve --inspect DIR` shows the inspector at /inspect/ for every file
/// of the directory it can show, and passes over the rest.
#[test]
fn serve_inspect_shows_a_directory_of_outputs() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/inspect");
    let server = start(&["--inspect", &data.display().to_string()], &[]);
    let client = reqwest::blocking_client();
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.url))
            .send()
            .expect("request")
    };
    let page = get("/inspect/");
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("<title>qstar inspect</title>"));
    // The page's links are relative, so they resolve under /inspect/.
    assert!(page.text.contains("src=\"assets/app.js\""));
    assert_eq!(get("/inspect/assets/app.js").status, 200);
    let files = get("/inspect/api/files").json();
    let mut shown: Vec<String> = files["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            let name = f["name"].as_str().expect("name");
            format!(
                "{} {}",
                Path::new(name).file_name().expect("name").to_string_lossy(),
                f["kind"]
            )
        })
        .collect();
    shown.sort();
    let mut want: Vec<String> = std::fs::read_dir(&data)
        .expect("data")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            (name.ends_with(".jsonl") || name == "sweep.json").then_some(name)
        })
        .collect();
    want.sort();
    let names: Vec<&str> = shown
        .iter()
        .map(|s| s.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(names, want, "{shown:?}");
    // The first file's records come through the nested API.
    let response = get("/inspect/api/files/0/records?offset=0&limit=2");
    assert_eq!(response.status, 200);
    let records = response.json();
    let items = records["items"].as_array().expect("items");
    assert!(!items.is_empty(), "{records}");
    assert!(items.iter().all(|i| i["record"].is_object()), "{records}");
    // The OpenAI API is still where it was.
    assert_eq!(get("/v1/models").status, 200);
    drop(server);
    // With a key, the page asks for it as the API does.
    let keyed = start(
        &[
            "--inspect",
            &data.display().to_string(),
            "--api-key-env",
            "QSTAR_TEST_INSPECT_KEY",
        ],
        &[("QSTAR_TEST_INSPECT_KEY", "s3cret")],
    );
    let page = |key: Option<&str>| {
        let mut request = client.get(format!("{}/inspect/", keyed.url));
        if let Some(key) = key {
            request = request.bearer(key);
        }
        request.send().expect("request").status
    };
    assert_eq!(page(None), 401);
    assert_eq!(page(Some("s3cret")), 200);
}
