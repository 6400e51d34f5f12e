//! `qstar train sft` on the real model: a run killed with SIGKILL continues
//! from its last checkpoint with the loss curve of a run never stopped; bad
//! rows and a directory of another run are refused with exit code 2.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn additions(path: &Path) {
    let run = qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "16",
            "--size",
            "2",
            "--seed",
            "3",
            "--out",
        ])
        .arg(path)
        .output()
        .expect("generate");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn sft_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "sft",
        "--task",
        "arithmetic",
        "--lora-rank",
        "4",
        "--batch-tokens",
        "200",
        "--max-steps",
        "6",
        "--checkpoint-every",
        "2",
        "--json",
        "--data",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ])
    .collect()
}

fn curve(dir: &Path) -> Vec<(u64, u64, u64, u64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).expect("record");
            let bits = |k: &str| r[k].as_f64().expect("number").to_bits();
            (
                r["step"].as_u64().expect("step"),
                bits("loss"),
                bits("grad_norm"),
                bits("lr"),
            )
        })
        .collect()
}

fn summary(run: &std::process::Output) -> Value {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(String::from_utf8_lossy(&run.stdout).trim()).expect("one JSON line")
}

#[test]
fn a_killed_training_run_continues_with_the_same_loss_curve() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("sums.jsonl");
    additions(&data);
    let whole = dir.path().join("whole");
    let s = summary(&qstar().args(sft_args(&data, &whole)).output().expect("run"));
    assert_eq!(s["steps"], 6);
    for key in ["tokens", "final_loss", "tok_s"] {
        assert!(s[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {s}");
    }
    assert!(s["eval_loss"].is_null(), "no eval data, no eval loss");
    let reference = curve(&whole);
    assert_eq!(reference.len(), 6);
    assert!(whole.join("loss.png").exists() && whole.join("config.json").exists());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["model_sha256"].as_str().map(str::len), Some(64));
    assert_eq!(config["data_sha256"].as_str().map(str::len), Some(64));

    let cut = dir.path().join("cut");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("qstar"))
        .args(sft_args(&data, &cut))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(300);
    while curve(&cut).len() < 3 {
        assert!(Instant::now() < deadline, "no progress before the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let at_kill = curve(&cut).len();
    assert!(at_kill < 6, "the run finished before it could be killed");

    let s = summary(
        &qstar()
            .args(sft_args(&data, &cut))
            .output()
            .expect("resume"),
    );
    let from = s["resumed_from"]
        .as_u64()
        .expect("resumed from a checkpoint");
    assert!(
        from >= 2 && from as usize <= at_kill,
        "resumed from {from}, killed after {at_kill}"
    );
    assert_eq!(
        curve(&cut),
        reference,
        "the resumed loss curve differs from the uninterrupted one"
    );
}

#[test]
fn bad_rows_and_another_runs_directory_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 1 + 2?\", \"answer\": \"#### 3\"}\n{\"question\": 5}\n",
    )
    .expect("write");
    let run = qstar()
        .args(sft_args(&data, &dir.path().join("out")))
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(&format!("{}:2:", data.display())), "{err}");

    let good = dir.path().join("sums.jsonl");
    additions(&good);
    let out = dir.path().join("run");
    let mut args = sft_args(&good, &out);
    args.iter_mut().for_each(|a| {
        if a == "6" {
            *a = "1".into();
        }
    });
    summary(&qstar().args(&args).output().expect("first"));
    args.push("--seed".into());
    args.push("7".into());
    let run = qstar().args(&args).output().expect("second");
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("another configuration"));
}
