//! The `qstar` binary on the real default model: the JSON contracts scripts
//! rely on, and exit code 2 with a clear message for every kind of bad input.

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;

fn model() -> PathBuf {
    let path = qstar_engine::fetch::default_model_path();
    assert!(
        path.exists(),
        "the default model is missing; run `cargo run --release -- model fetch` first"
    );
    path
}

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn json_of(args: &[&str]) -> Value {
    let out = qstar().args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// Runs and expects exit code 2 with `needle` in the message.
fn usage_error(args: &[&str], needle: &str) {
    let out = qstar().args(args).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn generate_json_contract() {
    model();
    let v = json_of(&[
        "generate",
        "--prompt",
        "What is 2 + 2?",
        "--chat",
        "--max-tokens",
        "8",
        "--n",
        "2",
        "--temperature",
        "0.7",
        "--seed",
        "3",
        "--json",
    ]);
    let completions = v["completions"].as_array().expect("completions");
    assert_eq!(completions.len(), 2);
    for c in completions {
        assert!(c["text"].is_string());
        let ids = c["token_ids"].as_array().expect("token_ids");
        assert!(!ids.is_empty() && ids.len() <= 8);
    }
}

#[test]
fn score_json_contract() {
    model();
    let v = json_of(&[
        "score",
        "--prompt",
        "",
        "--continuation",
        "The quick brown fox",
        "--json",
    ]);
    let tokens = v["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 4);
    assert!(
        tokens[0]["logprob"].is_null(),
        "no BOS: the first token has no log-prob"
    );
    let sum: f64 = tokens[1..]
        .iter()
        .map(|t| t["logprob"].as_f64().expect("lp"))
        .sum();
    assert!((sum - v["total_logprob"].as_f64().expect("total")).abs() < 1e-3);
    assert_eq!(tokens[1]["text"], " quick");
    assert!(tokens[1]["id"].is_u64());
}

#[test]
fn choose_json_contract() {
    model();
    let v = json_of(&[
        "choose",
        "--prompt",
        "The answer is (",
        "--option",
        "A",
        "--option",
        "B",
        "--json",
    ]);
    let options = v["options"].as_array().expect("options");
    assert_eq!(options[0]["text"], "A");
    let total: f64 = options
        .iter()
        .map(|o| o["prob"].as_f64().expect("prob"))
        .sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(options
        .iter()
        .all(|o| o["logprob"].as_f64().expect("lp") < 0.0));
}

#[test]
fn model_info_json_contract() {
    let path = model();
    let v = json_of(&["model", "info", "--json"]);
    assert_eq!(v["path"], path.display().to_string());
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["quantization"], "Q4_1");
    assert!(v["chat_template"]
        .as_str()
        .expect("template")
        .contains("<|im_start|>"));
}

#[test]
fn bad_model_files_exit_2() {
    let real = model();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.gguf");
    usage_error(
        &[
            "score",
            "--model",
            missing.to_str().expect("path"),
            "--continuation",
            "x",
        ],
        "does not exist",
    );

    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "these are not model weights").expect("write");
    usage_error(
        &[
            "generate",
            "--model",
            text.to_str().expect("path"),
            "--prompt",
            "x",
        ],
        "not a GGUF file",
    );

    let bytes = std::fs::read(&real).expect("read model");
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    usage_error(
        &[
            "model",
            "info",
            "--model",
            truncated.to_str().expect("path"),
        ],
        "beyond the end of the file",
    );

    let header_cut = dir.path().join("header.gguf");
    std::fs::write(&header_cut, &bytes[..2000]).expect("write");
    usage_error(
        &[
            "model",
            "info",
            "--model",
            header_cut.to_str().expect("path"),
        ],
        "header.gguf is not a usable GGUF model",
    );

    // Same file, but its metadata names another architecture.
    let mut other = bytes.clone();
    let key = b"general.architecture";
    let at = other
        .windows(key.len())
        .position(|w| w == key)
        .expect("key")
        + key.len();
    // value: u32 type tag, u64 length, then the 5 bytes of "llama".
    assert_eq!(&other[at + 12..at + 17], b"llama");
    other[at + 12..at + 17].copy_from_slice(b"qwen2");
    let arch = dir.path().join("other-arch.gguf");
    std::fs::write(&arch, &other).expect("write");
    usage_error(
        &["model", "info", "--model", arch.to_str().expect("path")],
        "unsupported model architecture `qwen2`",
    );
}

#[test]
fn bad_requests_exit_2() {
    model();
    let long = "word ".repeat(9000);
    usage_error(
        &["generate", "--prompt", &long, "--max-tokens", "1"],
        "context",
    );
    usage_error(&["choose", "--prompt", "Pick one:"], "at least one option");
    usage_error(
        &["generate", "--prompt", "x", "--temperature=-1"],
        "temperature",
    );
    usage_error(
        &["generate", "--backend", "openai", "--prompt", "x"],
        "--base-url",
    );
    usage_error(&["frobnicate"], "unrecognized subcommand");
}
