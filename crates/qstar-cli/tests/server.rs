//! `qstar solve` through the OpenAI backend against a mock server: the
//! usage the server reports is what the records count, and FLOPs come from
//! `--server-params` or the server's model card, or are "unknown" (null in
//! JSON) — never a made-up 0.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// What every generation request gets: 20 prompt tokens of which 8 came
/// from the cache, 5 generated, ended by the end of generation.
const PROMPT: u64 = 20;
const CACHED: u64 = 8;
const GENERATED: u64 = 5;

/// A server on its own runtime, alive as long as the value is.
struct Mock {
    url: String,
    _runtime: tokio::runtime::Runtime,
}

fn mock(n_params: Option<u64>) -> Mock {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let completions = post(|Json(_): Json<Value>| async {
        Json(json!({
            "choices": [{"text": "3 + 4 = 7. The answer is 7.", "finish_reason": "stop",
                "stop_reason": null,
                "logprobs": {"tokens": ["3", " +", " 4", " =", " 7."],
                    "token_logprobs": [-0.1, -0.1, -0.1, -0.1, -0.1],
                    "top_logprobs": [{"3": -0.1}, {" +": -0.1}, {" 4": -0.1}, {" =": -0.1}, {" 7.": -0.1}],
                    "text_offset": [0, 1, 3, 5, 7]}}],
            "usage": {"prompt_tokens": PROMPT, "completion_tokens": GENERATED,
                "prompt_tokens_details": {"cached_tokens": CACHED}}
        }))
    });
    let models = get(move || async move {
        match n_params {
            Some(n) => (
                axum::http::StatusCode::OK,
                Json(json!({"data": [{"id": "m.gguf", "meta": {"n_params": n}}]})),
            ),
            None => (axum::http::StatusCode::NOT_FOUND, Json(json!({}))),
        }
    });
    let app = Router::new()
        .route("/v1/completions", completions)
        .route("/v1/models", models);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    runtime.spawn(async move { axum::serve(listener, app).await });
    Mock {
        url: format!("http://{addr}"),
        _runtime: runtime,
    }
}

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

/// Two seeded additions.
fn additions(dir: &Path) -> PathBuf {
    let path = dir.join("add.jsonl");
    let run = qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "2",
            "--seed",
            "7",
            "--out",
        ])
        .arg(&path)
        .output()
        .expect("generate");
    assert!(run.status.success());
    path
}

fn solve(server: &Mock, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    qstar()
        .args(["solve", "--task", "arithmetic", "--strategy", "greedy"])
        .args(["--backend", "openai", "--base-url", &server.url])
        .args(["--prompt-format", "plain", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("solve")
}

fn summary(run: &std::process::Output) -> Value {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).expect("summary JSON")
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("records")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn server_usage_and_flops_are_counted_or_unknown() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = additions(dir.path());
    // Per question: one greedy step; 12 prompt tokens computed, 5 generated.
    let tokens_per_question = (PROMPT - CACHED + GENERATED) as f64;

    // No model card, no flag: unknown.
    let bare = mock(None);
    let out = dir.path().join("bare.jsonl");
    let s = summary(&solve(&bare, &input, &out, &["--json"]));
    assert_eq!(s["questions"], 2, "{s}");
    assert_eq!(s["tokens_generated"], 2 * GENERATED, "{s}");
    assert_eq!(s["prompt_tokens_computed"], 2 * (PROMPT - CACHED), "{s}");
    assert_eq!(s["prompt_tokens_reused"], 2 * CACHED, "{s}");
    assert!(s["flops"].is_null(), "{s}");
    for r in records(&out) {
        assert!(r["compute"]["flops"].is_null(), "{r}");
        assert_eq!(r["compute"]["tokens_generated"], GENERATED);
    }
    let table = solve(&bare, &input, &dir.path().join("table.jsonl"), &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("| FLOPs | unknown |"), "{text}");

    // The flag gives the parameter count: 2 × 1000 × tokens.
    let out = dir.path().join("flag.jsonl");
    let s = summary(&solve(
        &bare,
        &input,
        &out,
        &["--json", "--server-params", "1K"],
    ));
    assert_eq!(
        s["flops"].as_f64(),
        Some(2.0 * 1000.0 * 2.0 * tokens_per_question)
    );
    for r in records(&out) {
        assert_eq!(
            r["compute"]["flops"].as_f64(),
            Some(2.0 * 1000.0 * tokens_per_question)
        );
    }

    // The model card gives it; the flag wins over the card.
    let card = mock(Some(500));
    let s = summary(&solve(
        &card,
        &input,
        &dir.path().join("card.jsonl"),
        &["--json"],
    ));
    assert_eq!(
        s["flops"].as_f64(),
        Some(2.0 * 500.0 * 2.0 * tokens_per_question)
    );
    let s = summary(&solve(
        &card,
        &input,
        &dir.path().join("both.jsonl"),
        &["--json", "--server-params", "1000"],
    ));
    assert_eq!(
        s["flops"].as_f64(),
        Some(2.0 * 1000.0 * 2.0 * tokens_per_question)
    );

    // A count that is not one is a usage error.
    let bad = solve(
        &card,
        &input,
        &dir.path().join("bad.jsonl"),
        &["--server-params", "lots"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("parameter count"));
}
