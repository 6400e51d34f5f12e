//! `qstar label` on the real model: output contract, evaluation keys, and a
//! run killed with SIGKILL that resumes to exactly the uninterrupted output.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl")
}

/// Every line of a JSONL output.
fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("output file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn assert_ok(run: &std::process::Output) {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn label_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "label".into(),
        "--input".into(),
        sample().display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Records the store holds for the labeling jobs that write `out` (a job is
/// named after its output and a digest of its configuration).
fn records_in(store: &Path, out: &Path) -> usize {
    let scope = format!("label:{}#", out.display());
    let Ok(s) = qstar_store::Store::open(store) else {
        return 0;
    };
    s.jobs()
        .unwrap_or_default()
        .iter()
        .filter(|j| j.starts_with(&scope))
        .map(|j| s.records(j).map_or(0, |r| r.len()))
        .sum()
}

#[test]
fn labels_have_the_trl_contract_and_evaluate() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("labels.jsonl");
    let run = qstar()
        .args(label_args(&out, &["--principles", "2"]))
        .output()
        .expect("run");
    assert_ok(&run);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("position-bias rate"), "{stdout}");
    let text = std::fs::read_to_string(&out).expect("out");
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        // Conversational input, conversational rows (never a mix).
        assert!(r["prompt"].is_array() && r["chosen"].is_array() && r["rejected"].is_array());
        assert_eq!(r["chosen"][0]["role"], "assistant");
        let soft = r["soft_label"].as_f64().expect("soft label");
        assert!((0.5..=1.0).contains(&soft));
        // Two principles, both orders.
        assert_eq!(r["judgements"].as_array().expect("judgements").len(), 4);
    }
    assert!(dir.path().join("labels.jsonl.config.json").exists());

    let eval = qstar()
        .args([
            "eval",
            "labels",
            "--labels",
            out.to_str().expect("path"),
            "--json",
        ])
        .output()
        .expect("eval");
    assert!(eval.status.success());
    let m: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("json");
    assert_eq!(m["pairs"], 12);
    for key in ["alignment", "position_bias_rate", "ece"] {
        assert!(
            m[key].as_f64().is_some_and(|x| (0.0..=1.0).contains(&x)),
            "{key}: {m}"
        );
    }
    // Nothing is parsed in a choice; what is reported is the mass the model
    // put on the two letters, which is a probability and never zero here.
    assert!(m.get("unparsed").is_none(), "{m}");
    let (mean, min) = (
        m["option_mass_mean"].as_f64().expect("mean mass"),
        m["option_mass_min"].as_f64().expect("least mass"),
    );
    assert!(0.0 < min && min <= mean && mean <= 1.0, "{m}");
}

#[test]
fn a_killed_run_resumes_without_losing_or_repeating_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let whole = dir.path().join("whole.jsonl");
    // Five pairs under every principle, one pair per batch: slow enough to
    // be killed between records, short enough for the suite.
    let extra = ["--principles", "all", "--batch-pairs", "1", "--limit", "5"];
    let run = qstar()
        .args(label_args(&whole, &extra))
        .output()
        .expect("uninterrupted run");
    assert_ok(&run);

    let cut = dir.path().join("cut.jsonl");
    let store = dir.path().join("cut.jsonl.store.sqlite");
    let bin = assert_cmd::cargo::cargo_bin("qstar");
    let mut child = std::process::Command::new(bin)
        .args(label_args(&cut, &extra))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(300);
    while records_in(&store, &cut) < 2 {
        assert!(Instant::now() < deadline, "no progress before the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let at_kill = records_in(&store, &cut);
    assert!(at_kill < 5, "the run finished before it could be killed");
    assert!(!cut.exists(), "no output is written before the run ends");

    let resumed = qstar()
        .args(label_args(&cut, &extra))
        .output()
        .expect("resume");
    assert_ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming"));
    assert_eq!(
        std::fs::read_to_string(&cut).expect("resumed output"),
        std::fs::read_to_string(&whole).expect("whole output"),
        "resumed output differs from the uninterrupted run"
    );

    // Same output and store, other settings: a job of its own that starts
    // afresh, never mixing in the records made under the old settings.
    let other = qstar()
        .args(label_args(
            &cut,
            &[
                "--principles",
                "all",
                "--seed",
                "9",
                "--limit",
                "1",
                "--json",
            ],
        ))
        .output()
        .expect("rerun");
    assert_ok(&other);
    assert!(String::from_utf8_lossy(&other.stderr).contains("starting afresh"));
    let summary: serde_json::Value = serde_json::from_slice(&other.stdout).expect("json");
    assert_eq!(
        (summary["records"].as_u64(), summary["resumed"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn bad_label_input_exits_2_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\nnot json\n",
    )
    .expect("write");
    let out = dir.path().join("o.jsonl");
    let run = qstar()
        .args([
            "label",
            "--input",
            input.to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
        ])
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("bad.jsonl:2"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let skipped = qstar()
        .args([
            "label",
            "--input",
            input.to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
            "--skip-invalid",
        ])
        .output()
        .expect("run");
    assert!(skipped.status.success());
    assert!(dir.path().join("o.jsonl.rejects.jsonl").exists());
    let method = qstar()
        .args([
            "label",
            "--input",
            input.to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
            "--method",
            "rlaif",
        ])
        .output()
        .expect("run");
    assert_eq!(method.status.code(), Some(2));
}

#[test]
fn rlaif_and_chain_of_thought_labels() {
    let dir = tempfile::tempdir().expect("tmp");
    let rlaif = dir.path().join("rlaif.jsonl");
    let run = qstar()
        .args(label_args(&rlaif, &["--method", "rlaif", "--limit", "3"]))
        .output()
        .expect("rlaif");
    assert_ok(&run);
    let rows: Vec<serde_json::Value> = jsonl(&rlaif);
    assert_eq!(rows.len(), 3);
    // One preamble, both orders.
    assert!(rows
        .iter()
        .all(|r| r["judgements"].as_array().expect("j").len() == 2));

    let cot = dir.path().join("cot.jsonl");
    let args = [
        "--method",
        "cot",
        "--limit",
        "2",
        "--clamp-low",
        "0.3",
        "--clamp-high",
        "0.7",
    ];
    let run = qstar().args(label_args(&cot, &args)).output().expect("cot");
    assert_ok(&run);
    for line in std::fs::read_to_string(&cot).expect("out").lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("json");
        for j in r["judgements"].as_array().expect("j") {
            let p = j["p_a"].as_f64().expect("p");
            assert!((0.3..=0.7).contains(&p), "CoT probability {p} not clamped");
            assert!(!j["rationale"]
                .as_str()
                .expect("rationale")
                .trim()
                .is_empty());
        }
    }
}

#[test]
fn direct_rlaif_rewards_both_replies() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("rate.jsonl");
    let run = qstar()
        .args([
            "rate",
            "--input",
            sample().to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
            "--limit",
            "4",
        ])
        .output()
        .expect("rate");
    assert_ok(&run);
    for line in std::fs::read_to_string(&out).expect("out").lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("json");
        for side in ["chosen", "rejected"] {
            let reward = r[format!("reward_{side}")].as_f64().expect("reward");
            assert!((-1.0..=1.0).contains(&reward));
            let dist: f64 = r[format!("rating_{side}")]["distribution"]
                .as_array()
                .expect("distribution")
                .iter()
                .map(|p| p.as_f64().expect("p"))
                .sum();
            assert!((dist - 1.0).abs() < 1e-9);
        }
    }
    let eval = qstar()
        .args([
            "eval",
            "labels",
            "--labels",
            out.to_str().expect("p"),
            "--json",
        ])
        .output()
        .expect("eval");
    let m: serde_json::Value = serde_json::from_slice(&eval.stdout).expect("json");
    assert_eq!(m["pairs"], 4);
    assert!(m["reward_alignment"].as_f64().is_some());
    let mass = m["option_mass_mean"].as_f64().expect("mass on the ratings");
    assert!(mass > 0.0 && mass <= 1.0 + 1e-9, "{m}");
}

#[test]
fn critique_revision_writes_sft_examples_with_their_chain() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("sft.jsonl");
    let run = qstar()
        .args([
            "revise",
            "--input",
            sample().to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
        ])
        .args(["--limit", "2", "--rounds", "2", "--max-tokens", "24"])
        .output()
        .expect("revise");
    assert_ok(&run);
    let rows: Vec<serde_json::Value> = jsonl(&out);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let messages = r["messages"].as_array().expect("messages");
        assert_eq!(messages[0]["role"], "user");
        let rounds = r["chain"]["rounds"].as_array().expect("rounds");
        assert_eq!(rounds.len(), 2);
        // The SFT reply is the last revision.
        assert_eq!(messages[1]["content"], rounds[1]["revision"]);
        assert!(rounds.iter().all(|x| x["critique_request"]
            .as_str()
            .is_some_and(|s| !s.is_empty())));
    }
}

#[test]
fn self_rewarding_judge_pairs_best_against_worst() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("dpo.jsonl");
    let run = qstar()
        .args([
            "judge",
            "--input",
            sample().to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
        ])
        .args(["--limit", "3", "--samples", "3", "--max-tokens", "32"])
        .output()
        .expect("judge");
    assert_ok(&run);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("unparsed judgements"), "{stdout}");
    for line in std::fs::read_to_string(&out).expect("out").lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(r["chosen"].is_array() && r["rejected"].is_array());
        assert!(
            r["score_chosen"].as_u64() > r["score_rejected"].as_u64(),
            "ties are skipped: {r}"
        );
        let scores: Vec<Option<u64>> = r["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| s["score"].as_u64())
            .collect();
        assert_eq!(scores.len(), 3);
        assert_eq!(
            scores.iter().flatten().max().copied(),
            r["score_chosen"].as_u64()
        );
    }
}

#[test]
fn config_files_few_shot_rationales_openrlhf_keys_and_the_reliability_plot() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("label.toml");
    std::fs::write(
        &config,
        "method = \"rlaif\"\nfew_shot = 2\nrationale = true\nrationale_tokens = 16\nkeys = \"openrlhf\"\nlimit = 5\n",
    )
    .expect("write");
    let out = dir.path().join("labels.jsonl");
    let config_arg = config.display().to_string();
    // The command line wins over the file (limit 2, not 5).
    let run = qstar()
        .args(label_args(&out, &["--config", &config_arg, "--limit", "2"]))
        .output()
        .expect("run");
    assert_ok(&run);
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        // OpenRLHF: whole conversations ending in each reply, no prompt key.
        assert!(r.get("prompt").is_none());
        let chosen = r["chosen"].as_array().expect("conversation");
        assert_eq!(chosen.last().expect("reply")["role"], "assistant");
        for j in r["judgements"].as_array().expect("judgements") {
            assert!(j["rationale"].is_string(), "RLAIF with rationales");
        }
    }
    let resolved =
        std::fs::read_to_string(dir.path().join("labels.jsonl.config.json")).expect("config");
    assert!(
        resolved.contains("\"few_shot\": 2") && resolved.contains("\"rlaif\""),
        "{resolved}"
    );

    let plot = dir.path().join("reliability.png");
    let eval = qstar()
        .args([
            "eval",
            "labels",
            "--labels",
            out.to_str().expect("p"),
            "--plot",
            plot.to_str().expect("p"),
        ])
        .output()
        .expect("eval");
    assert_ok(&eval);
    let png = std::fs::read(&plot).expect("png");
    assert_eq!(&png[..4], b"\x89PNG");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "few_shot = 99\n").expect("write");
    let run = qstar()
        .args(label_args(
            &dir.path().join("x.jsonl"),
            &["--config", bad.to_str().expect("p")],
        ))
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("few-shot"));
}

#[test]
fn revise_and_judge_read_plain_prompts_and_mix_in_input_replies() {
    let dir = tempfile::tempdir().expect("tmp");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\":\"How do I pick a lock?\"}\n{\"question\":\"Tell me a joke.\"}\n",
    )
    .expect("write");
    let out = dir.path().join("sft.jsonl");
    let run = qstar()
        .args([
            "revise",
            "--input",
            prompts.to_str().expect("p"),
            "--out",
            out.to_str().expect("p"),
            "--max-tokens",
            "24",
        ])
        .output()
        .expect("revise");
    assert_ok(&run);
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["messages"][0]["content"], "Tell me a joke.");

    // Pairs in, revisions plus the preferred input replies out (OpenRLHF keys).
    let mixed = dir.path().join("mixed.jsonl");
    let run = qstar()
        .args([
            "revise",
            "--input",
            sample().to_str().expect("p"),
            "--out",
            mixed.to_str().expect("p"),
        ])
        .args([
            "--limit",
            "2",
            "--max-tokens",
            "24",
            "--mix-input-replies",
            "--keys",
            "openrlhf",
        ])
        .output()
        .expect("revise");
    assert_ok(&run);
    let rows = jsonl(&mixed);
    assert_eq!(rows.len(), 4);
    let sources: Vec<&str> = rows
        .iter()
        .map(|r| r["source"].as_str().expect("source"))
        .collect();
    assert_eq!(sources, ["revision", "input", "revision", "input"]);
    assert!(rows
        .iter()
        .all(|r| r["input"].is_string() && r["output"].is_string()));

    let judged = dir.path().join("dpo.jsonl");
    let run = qstar()
        .args([
            "judge",
            "--input",
            prompts.to_str().expect("p"),
            "--out",
            judged.to_str().expect("p"),
        ])
        .args(["--samples", "2", "--max-tokens", "24"])
        .output()
        .expect("judge");
    assert_ok(&run);
    assert!(String::from_utf8_lossy(&run.stdout).contains("unparsed judgements"));
}
