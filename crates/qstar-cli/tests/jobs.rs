//! The job runner seen from the command line, on the real model: jobs keyed
//! on their whole configuration, the model and the input (never reusing
//! stale records), `--json` summaries of every job command, TRL rows in one
//! form, and flags refused before any work starts.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn sample_pairs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl")
}

fn ok(run: &std::process::Output) -> String {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

fn json_line(run: &std::process::Output) -> Value {
    serde_json::from_str(ok(run).trim()).expect("one JSON line on stdout")
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn additions(path: &Path, seed: &str) {
    ok(&qstar()
        .args(["tasks", "generate", "--task", "arithmetic", "--count", "2"])
        .args(["--seed", seed, "--out"])
        .arg(path)
        .output()
        .expect("generate"));
}

const SHORT: [&str; 6] = [
    "--max-tokens",
    "32",
    "--max-step-tokens",
    "16",
    "--max-steps",
    "2",
];

/// `qstar solve --strategy greedy --json` on `input` into `out`.
fn greedy(input: &Path, out: &Path, extra: &[&str]) -> Value {
    json_line(
        &qstar()
            .args(["solve", "--task", "arithmetic", "--strategy", "greedy"])
            .arg("--input")
            .arg(input)
            .arg("--out")
            .arg(out)
            .args(SHORT)
            .arg("--json")
            .args(extra)
            .output()
            .expect("solve"),
    )
}

fn config_of(out: &Path) -> Value {
    let mut name = out.file_name().expect("name").to_os_string();
    name.push(".config.json");
    serde_json::from_str(&std::fs::read_to_string(out.with_file_name(name)).expect("config"))
        .expect("config JSON")
}

#[test]
fn a_job_reuses_records_only_under_the_same_settings_model_and_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("add.jsonl");
    additions(&input, "1");
    let out = dir.path().join("o.jsonl");

    let first = greedy(&input, &out, &[]);
    assert_eq!(
        (first["records"].as_u64(), first["resumed"].as_u64()),
        (Some(2), Some(0))
    );
    // The summary keeps its keys.
    for key in [
        "questions",
        "correct",
        "accuracy",
        "tokens_generated",
        "flops",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    // Beside the output: the model's and the input's SHA-256, computed here
    // independently of the program.
    let config = config_of(&out);
    let model = std::fs::read(qstar_engine::fetch::default_model_path()).expect("model");
    assert_eq!(config["model_sha256"], sha256_hex(&model));
    let input_bytes = std::fs::read(&input).expect("input");
    assert_eq!(config["input_sha256"], sha256_hex(&input_bytes));
    assert_eq!(config["beta"], 0.1);

    // The same command again reuses every record.
    let again = greedy(&input, &out, &[]);
    assert_eq!(again["resumed"], 2);
    assert_eq!(again["correct"], first["correct"]);

    // --beta was not part of the key: now another value is another job.
    let beta = greedy(&input, &out, &["--beta", "0.5"]);
    assert_eq!(beta["resumed"], 0, "{beta}");
    assert_eq!(config_of(&out)["beta"], 0.5);

    // A value from the config file wins over a flag's default (the prompt
    // format used to be reset to chat by the flag's default) and makes
    // another job; an explicit flag wins over the file.
    let toml = dir.path().join("search.toml");
    std::fs::write(&toml, "format = \"plain\"\nbeta = 0.25\n").expect("toml");
    let toml_arg = toml.to_str().expect("path");
    let from_file = greedy(&input, &out, &["--config", toml_arg]);
    assert_eq!(from_file["resumed"], 0, "{from_file}");
    let config = config_of(&out);
    assert_eq!(config["search"]["format"], "plain", "{config}");
    assert_eq!(config["beta"], 0.25);
    let flagged = greedy(
        &input,
        &out,
        &[
            "--config",
            toml_arg,
            "--beta",
            "0.5",
            "--prompt-format",
            "chat",
        ],
    );
    let config = config_of(&out);
    assert_eq!(config["search"]["format"], "chat", "{config}");
    assert_eq!(config["beta"], 0.5);
    assert_eq!(
        flagged["resumed"], 2,
        "chat and β 0.5 ran before: {flagged}"
    );
    // The file alone again: its job's records are reused.
    assert_eq!(greedy(&input, &out, &["--config", toml_arg])["resumed"], 2);

    // Other questions under the same file name and line numbers: a fresh
    // job whose records hold the new questions.
    additions(&input, "2");
    let changed = greedy(&input, &out, &[]);
    assert_eq!(changed["resumed"], 0, "{changed}");
    let questions: Vec<Value> = std::fs::read_to_string(&input)
        .expect("input")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("row")["question"].clone())
        .collect();
    let recorded: Vec<Value> = jsonl(&out).iter().map(|r| r["question"].clone()).collect();
    assert_eq!(recorded, questions);
}

#[test]
fn labels_of_a_changed_pair_are_made_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("pairs.jsonl");
    let row = |reply: &str| {
        serde_json::json!({"prompt": "Name a colour.", "chosen": reply, "rejected": "No."})
            .to_string()
    };
    std::fs::write(&input, format!("{}\n", row("Blue."))).expect("write");
    let out = dir.path().join("labels.jsonl");
    let label = || {
        json_line(
            &qstar()
                .args(["label", "--no-debias", "--json", "--input"])
                .arg(&input)
                .arg("--out")
                .arg(&out)
                .output()
                .expect("label"),
        )
    };
    assert_eq!(label()["resumed"], 0);
    assert_eq!(label()["resumed"], 1);
    std::fs::write(&input, format!("{}\n", row("Green."))).expect("write");
    let fresh = label();
    assert_eq!(fresh["resumed"], 0, "{fresh}");
    let rows = jsonl(&out);
    let replies = [rows[0]["chosen"].clone(), rows[0]["rejected"].clone()];
    assert!(replies.contains(&Value::from("Green.")), "{rows:?}");
}

/// TRL's conversational preference row: three lists of messages, the
/// replies one assistant message each.
fn is_conversational(r: &Value) -> bool {
    let messages = |v: &Value| {
        v.as_array().is_some_and(|m| {
            !m.is_empty()
                && m.iter().all(|m| {
                    m.as_object().is_some_and(|o| o.len() == 2)
                        && m["role"].is_string()
                        && m["content"].is_string()
                })
        })
    };
    let reply = |v: &Value| {
        messages(v)
            && v.as_array()
                .is_some_and(|m| m.len() == 1 && m[0]["role"] == "assistant")
    };
    messages(&r["prompt"]) && reply(&r["chosen"]) && reply(&r["rejected"])
}

fn is_standard(r: &Value) -> bool {
    r["prompt"].is_string() && r["chosen"].is_string() && r["rejected"].is_string()
}

#[test]
fn trl_rows_keep_the_input_form_or_the_one_asked_for() {
    let dir = tempfile::tempdir().expect("tmp");
    let standard = dir.path().join("standard.jsonl");
    std::fs::write(
        &standard,
        "{\"prompt\":\"Say hi.\",\"chosen\":\"Hi!\",\"rejected\":\"Go away.\"}\n\
         {\"prompt\":\"Count to two.\",\"chosen\":\"1, 2\",\"rejected\":\"7\"}\n",
    )
    .expect("write");
    let run = |command: &str, input: &Path, name: &str, extra: &[&str]| -> (Value, Vec<Value>) {
        let out = dir.path().join(name);
        let summary = json_line(
            &qstar()
                .args([command, "--limit", "2", "--json", "--input"])
                .arg(input)
                .arg("--out")
                .arg(&out)
                .args(extra)
                .output()
                .expect("run"),
        );
        (summary, jsonl(&out))
    };
    let label = ["--no-debias"];
    let (summary, rows) = run("label", &sample_pairs(), "conv.jsonl", &label);
    assert_eq!(
        (summary["records"].as_u64(), summary["resumed"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(summary["alignment"].is_f64(), "{summary}");
    assert!(rows.iter().all(is_conversational), "{rows:?}");
    let (_, rows) = run("label", &standard, "std.jsonl", &label);
    assert!(rows.iter().all(is_standard), "{rows:?}");
    assert_eq!(rows[0]["prompt"], "Say hi.");
    let (_, rows) = run(
        "label",
        &standard,
        "asked.jsonl",
        &["--no-debias", "--row-form", "conversational"],
    );
    assert!(rows.iter().all(is_conversational), "{rows:?}");
    assert_eq!(rows[0]["prompt"][0]["content"], "Say hi.");

    // d-RLAIF rewards keep the form as well, and summarize as JSON.
    let (summary, rows) = run("rate", &sample_pairs(), "rate.jsonl", &[]);
    assert!(rows.iter().all(is_conversational), "{rows:?}");
    assert_eq!(summary["pairs"], 2);
    assert!(summary["reward_alignment"].is_f64(), "{summary}");
    let (_, rows) = run("rate", &standard, "rate-std.jsonl", &[]);
    assert!(rows.iter().all(is_standard), "{rows:?}");
}

#[test]
fn revise_and_judge_summarize_as_json() {
    let dir = tempfile::tempdir().expect("tmp");
    let summary = |command: &str, extra: &[&str]| -> Value {
        let out = dir.path().join(format!("{command}.jsonl"));
        json_line(
            &qstar()
                .args([
                    command,
                    "--limit",
                    "1",
                    "--max-tokens",
                    "12",
                    "--json",
                    "--input",
                ])
                .arg(sample_pairs())
                .arg("--out")
                .arg(&out)
                .args(extra)
                .output()
                .expect("run"),
        )
    };
    let revise = summary("revise", &[]);
    assert_eq!(
        (revise["records"].as_u64(), revise["resumed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(revise["revisions"], 1);
    let judge = summary("judge", &["--samples", "2"]);
    assert_eq!(
        (judge["records"].as_u64(), judge["prompts"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(judge["judgements"], 2);
    // Run again: the record comes from the store.
    assert_eq!(summary("judge", &["--samples", "2"])["resumed"], 1);
}

/// Runs and expects exit code 2 naming `needle`, with no model work: the
/// model given does not exist, so only a check made before loading it can
/// produce this message.
fn refused(args: &[&str], needle: &str) {
    let run = qstar()
        .args(args)
        .args(["--model", "/nonexistent/model.gguf"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_flags_are_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tmp");
    let pairs = sample_pairs();
    let pairs = pairs.to_str().expect("path");
    let out = dir.path().join("o.jsonl");
    let out = out.to_str().expect("path");
    let label = ["label", "--input", pairs, "--out", out, "--method", "cot"];
    refused(
        &[&label[..], &["--clamp-low", "0.7", "--clamp-high", "0.3"]].concat(),
        "--clamp-low",
    );
    refused(
        &[&label[..], &["--clamp-high", "1.5"]].concat(),
        "probability",
    );
    refused(&["generate", "--prompt", "x", "--stop", ""], "--stop");
    refused(&["generate", "--prompt", "x", "--n", "1000000"], "--n");
    refused(
        &[
            "judge",
            "--input",
            pairs,
            "--out",
            out,
            "--samples",
            "100000",
        ],
        "--samples",
    );

    let input = dir.path().join("add.jsonl");
    additions(&input, "1");
    let input = input.to_str().expect("path");
    let solve = [
        "solve",
        "--task",
        "arithmetic",
        "--input",
        input,
        "--out",
        out,
    ];
    refused(
        &[
            &solve[..],
            &["--strategy", "greedy", "--step-delimiter", ""],
        ]
        .concat(),
        "--step-delimiter",
    );
    refused(
        &[
            &solve[..],
            &["--strategy", "majority", "--budget", "1000000"],
        ]
        .concat(),
        "--budget",
    );
    let sweep_dir = dir.path().join("sweep");
    let sweep_dir = sweep_dir.to_str().expect("path");
    let sweep = [
        "sweep",
        "--task",
        "arithmetic",
        "--input",
        input,
        "--out",
        sweep_dir,
    ];
    refused(
        &[&sweep[..], &["--budgets", "1,100000"]].concat(),
        "--budgets",
    );
    // The same checks hold for values from a config file.
    let toml = dir.path().join("bad.toml");
    std::fs::write(&toml, "strategy = \"greedy\"\nstep_delimiter = \"\"\n").expect("toml");
    refused(
        &[&solve[..], &["--config", toml.to_str().expect("path")]].concat(),
        "delimiter",
    );
    std::fs::write(&toml, "clamp_low = 0.9\n").expect("toml");
    refused(
        &[&label[..], &["--config", toml.to_str().expect("path")]].concat(),
        "--clamp-low",
    );
    std::fs::write(&toml, "no_such_flag = 1\n").expect("toml");
    refused(
        &[&label[..], &["--config", toml.to_str().expect("path")]].concat(),
        "no_such_flag",
    );
}

#[test]
fn a_sweep_with_the_default_strategies_runs_without_a_verifier_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("gsm8k.jsonl");
    std::fs::write(
        &input,
        "{\"question\":\"Tom has 2 apples and buys 3 more. How many apples does he have?\",\"answer\":\"2 + 3 = 5\\n#### 5\"}\n",
    )
    .expect("write");
    let out = dir.path().join("sweep");
    let run = qstar()
        .args(["sweep", "--task", "gsm8k", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        // Small budgets and short solutions keep it quick; the strategies
        // are the default list.
        .args(["--budgets", "1,2", "--json"])
        .args(SHORT)
        .output()
        .expect("sweep");
    let report = json_line(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("using prm"));
    assert_eq!(report["verifier"], "prm");
    let strategies: Vec<&str> = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["strategy"].as_str().expect("strategy"))
        .collect();
    for s in ["greedy", "majority", "best-of-n", "beam"] {
        assert!(strategies.contains(&s), "{s} missing: {strategies:?}");
    }
    let model = std::fs::read(qstar_engine::fetch::default_model_path()).expect("model");
    assert_eq!(report["model_sha256"], sha256_hex(&model));
}
