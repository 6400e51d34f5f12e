//! `qstar train dpo` on the real model: the first step is the reference
//! (loss ln 2 and zero rewards, to float rounding), a few steps teach the training
//! pairs, the adapter it writes loads in the engine, a rerun finds the run
//! finished, and bad input is exit code 2 naming the file and line.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use qstar_tasks::first_error::{first_addition_error, FirstError};
use serde_json::Value;

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl")
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let pairs = examples();
    let mut args = vec![
        "train",
        "dpo",
        "--pairs",
        pairs.to_str().expect("path"),
        "--out",
        out.to_str().expect("path"),
        "--limit",
        "6",
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--batch-tokens",
        "400",
        "--json",
    ];
    args.extend_from_slice(extra);
    qstar().args(&args).output().expect("run")
}

#[test]
fn dpo_starts_at_the_reference_learns_its_pairs_and_writes_an_adapter() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("run");
    let run = train(&out, &["--holdout", "2", "--nll-coef", "0.1"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Value = serde_json::from_slice(&run.stdout).expect("summary");

    let m = metrics(&out);
    assert_eq!(m.len() as u64, summary["steps"].as_u64().expect("steps"));
    assert!(m.len() >= 3, "{} steps", m.len());
    // Step 1 scores the policy before any update: it is the reference.
    let first = &m[0];
    assert!(
        (first["loss"].as_f64().expect("loss")
            - 0.1 * first["nll_loss"].as_f64().expect("nll")
            - std::f64::consts::LN_2)
            .abs()
            < 1e-6,
        "{first}"
    );
    for key in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
        assert!(
            first[key].as_f64().expect(key).abs() < 1e-6,
            "{key}: {first}"
        );
    }
    // The chosen replies of the training pairs gain on the rejected ones.
    let last = m.last().expect("a step");
    assert!(
        last["rewards/margins"].as_f64().expect("margin") > 0.05,
        "{last}"
    );
    assert!(
        summary["reward_accuracy"].as_f64().expect("accuracy") >= 0.75,
        "{summary}"
    );
    // The held-out pairs were evaluated at the end, on the summary's figures.
    assert!(last["eval_loss"].is_f64());
    assert_eq!(summary["eval_loss"], last["eval_loss"]);
    // One reference line per pair, training and held-out.
    let reference = std::fs::read_to_string(out.join("reference.jsonl")).expect("reference");
    assert_eq!(reference.lines().count(), 1 + 6, "a header and six pairs");
    assert!(out.join("loss.png").exists());

    // The adapter is PEFT's and the engine runs it.
    let adapter = out.join("adapter");
    assert!(adapter.join("adapter_config.json").exists());
    let gen = qstar()
        .args([
            "generate",
            "--adapter",
            adapter.to_str().expect("path"),
            "--prompt",
            "Hello",
            "--max-tokens",
            "4",
        ])
        .output()
        .expect("generate");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );

    implicit_reward_of(&adapter, dir.path());

    // A rerun finds the run finished: nothing is trained again.
    let before = std::fs::read(adapter.join("adapter_model.safetensors")).expect("adapter");
    let again = train(&out, &["--holdout", "2", "--nll-coef", "0.1"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again: Value = serde_json::from_slice(&again.stdout).expect("summary");
    assert_eq!(again["resumed_from"], summary["steps"]);
    assert_eq!(
        std::fs::read(adapter.join("adapter_model.safetensors")).expect("adapter"),
        before
    );
    // Other settings in the same directory are another run: refused.
    let other = train(&out, &["--holdout", "2", "--beta", "0.5"]);
    assert_eq!(
        other.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}

#[test]
fn bad_dpo_input_is_exit_2_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    // The soft loss needs each row's soft label; the sample rows have none.
    let run = train(&dir.path().join("soft"), &["--loss", "soft"]);
    assert_eq!(run.status.code(), Some(2));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("pairs.jsonl:1") && err.contains("soft_label"),
        "{err}"
    );

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\nnot json\n",
    )
    .expect("write");
    let run = qstar()
        .args([
            "train",
            "dpo",
            "--pairs",
            bad.to_str().expect("path"),
            "--out",
            dir.path().join("o").to_str().expect("path"),
        ])
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("bad.jsonl:2"));

    // An empty reply has nothing to score: exit 2 with its line, or with
    // --skip-invalid named and left out.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(
        &empty,
        "{\"prompt\":\"a\",\"chosen\":\"\",\"rejected\":\"c\"}\n{\"prompt\":\"Hi\",\"chosen\":\"Hello!\",\"rejected\":\"Go away.\"}\n",
    )
    .expect("write");
    let dpo = |extra: &[&str], out: &str| {
        qstar()
            .args([
                "train",
                "dpo",
                "--pairs",
                empty.to_str().expect("path"),
                "--out",
            ])
            .arg(dir.path().join(out))
            .args(["--max-steps", "1", "--json"])
            .args(extra)
            .output()
            .expect("run")
    };
    let strict = dpo(&[], "strict");
    assert_eq!(strict.status.code(), Some(2));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains("empty.jsonl:1") && err.contains("a reply is empty"),
        "{err}"
    );
    let lenient = dpo(&["--skip-invalid"], "lenient");
    assert!(
        lenient.status.success(),
        "{}",
        String::from_utf8_lossy(&lenient.stderr)
    );
    assert!(String::from_utf8_lossy(&lenient.stderr).contains("empty.jsonl:1"));
    let summary: Value = serde_json::from_slice(&lenient.stdout).expect("summary");
    assert_eq!(summary["steps"], 1);

    for (flags, word) in [
        (&["--beta", "0"][..], "--beta"),
        (
            &["--loss", "ipo", "--label-smoothing", "0.1"][..],
            "--label-smoothing",
        ),
        (
            &["--loss", "robust", "--label-smoothing", "0.5"][..],
            "--label-smoothing",
        ),
        (&["--holdout", "6"][..], "--holdout"),
    ] {
        let run = train(&dir.path().join("flags"), flags);
        assert_eq!(run.status.code(), Some(2), "{flags:?}");
        assert!(
            String::from_utf8_lossy(&run.stderr).contains(word),
            "{flags:?}"
        );
    }
}

fn ok_json(run: std::process::Output) -> Value {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).expect("JSON summary")
}

/// The trained adapter's implicit reward: per token it is β times the
/// difference of two separate scorings (the model with the adapter, the
/// model without); `solve --verifier dpo` takes the model without the
/// adapter as its reference; `eval token-reward` measures it on the wrong
/// solutions of a search.
fn implicit_reward_of(adapter: &Path, dir: &Path) {
    let adapter = adapter.to_str().expect("path");
    let text = [
        "--prompt",
        "What is 12 + 7?",
        "--continuation",
        " 12 + 7 = 19. The answer is 19.",
    ];
    let reward = ok_json(
        qstar()
            .args([
                "score",
                "--implicit-reward",
                "--beta",
                "0.5",
                "--adapter",
                adapter,
                "--json",
            ])
            .args(text)
            .output()
            .expect("score"),
    );
    let policy = ok_json(
        qstar()
            .args(["score", "--adapter", adapter, "--json"])
            .args(text)
            .output()
            .expect("score"),
    );
    let base = ok_json(
        qstar()
            .args(["score", "--json"])
            .args(text)
            .output()
            .expect("score"),
    );
    let tokens = reward["tokens"].as_array().expect("tokens");
    assert_eq!(
        tokens.len(),
        policy["tokens"].as_array().expect("tokens").len()
    );
    let mut total = 0.0;
    let mut moved = 0;
    for (i, t) in tokens.iter().enumerate() {
        let lp = policy["tokens"][i]["logprob"].as_f64().expect("logprob");
        let lp_ref = base["tokens"][i]["logprob"].as_f64().expect("logprob");
        assert_eq!(t["id"], base["tokens"][i]["id"]);
        let r = t["implicit_reward"].as_f64().expect("reward");
        assert!((r - 0.5 * (lp - lp_ref)).abs() < 1e-6, "token {i}: {t}");
        total += r;
        if r.abs() > 1e-4 {
            moved += 1;
        }
    }
    assert!(moved > 0, "the adapter changes some token's probability");
    assert!((reward["total_implicit_reward"].as_f64().expect("total") - total).abs() < 1e-6);

    // Search with the dpo verifier, the reference defaulting to the model
    // without the adapter: scores are σ(β·margin), and not all σ(0).
    let input = dir.join("add.jsonl");
    let generated = qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "3",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&input)
        .output()
        .expect("generate");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let solved = dir.join("solved.jsonl");
    ok_json(
        qstar()
            .args([
                "solve",
                "--task",
                "arithmetic",
                "--strategy",
                "best-of-n",
                "--verifier",
                "dpo",
            ])
            .args([
                "--budget",
                "4",
                "--temperature",
                "1.0",
                "--max-tokens",
                "40",
                "--adapter",
                adapter,
            ])
            .args(["--json", "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&solved)
            .output()
            .expect("solve"),
    );
    let records: Vec<Value> = std::fs::read_to_string(&solved)
        .expect("records")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let scores: Vec<f64> = records
        .iter()
        .flat_map(|r| r["tree"]["nodes"].as_array().expect("nodes").clone())
        .filter_map(|n| n["score"].as_f64())
        .collect();
    assert!(!scores.is_empty());
    assert!(scores.iter().all(|s| *s > 0.0 && *s < 1.0), "{scores:?}");
    assert!(scores.iter().any(|s| (s - 0.5).abs() > 1e-6), "{scores:?}");

    // Where the implicit reward is lowest in the wrong solutions.
    let rows_path = dir.join("credit.jsonl");
    let credit = ok_json(
        qstar()
            .args([
                "eval",
                "token-reward",
                "--adapter",
                adapter,
                "--json",
                "--input",
            ])
            .arg(&solved)
            .arg("--out")
            .arg(&rows_path)
            .output()
            .expect("eval"),
    );
    let count = |k: &str| credit[k].as_u64().expect(k);
    assert_eq!(
        count("solutions"),
        count("correct")
            + count("unlocated")
            + count("misaligned")
            + count("error_at_end")
            + count("measured"),
        "{credit}"
    );
    assert!(count("measured") >= 1, "{credit}");
    let rows: Vec<Value> = std::fs::read_to_string(&rows_path)
        .expect("rows")
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    assert_eq!(rows.len() as u64, count("measured"));
    let mut chance = 0.0;
    for row in &rows {
        let tokens: Vec<&str> = row["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_str().expect("text"))
            .collect();
        assert_eq!(tokens.concat(), row["solution"].as_str().expect("solution"));
        let at = row["first_error_token"].as_u64().expect("index") as usize;
        assert!(at < tokens.len());
        // The token holds the byte where the solution first goes wrong.
        let solution = row["solution"].as_str().expect("solution");
        let question = row["question"].as_str().expect("question");
        let FirstError::At(byte) = first_addition_error(question, solution) else {
            panic!("a measured solution has a located error: {row}");
        };
        let start = tokens[..at].concat().len();
        assert!(start <= byte && byte < start + tokens[at].len(), "{row}");
        for (i, r) in row["implicit_reward"]
            .as_array()
            .expect("rewards")
            .iter()
            .enumerate()
        {
            let lp = row["logprob"][i].as_f64().expect("lp");
            let lp_ref = row["ref_logprob"][i].as_f64().expect("lp");
            assert!((r.as_f64().expect("reward") - 0.1 * (lp - lp_ref)).abs() < 1e-9);
        }
        chance += 1.0 / tokens.len() as f64;
    }
    let chance = chance / rows.len() as f64;
    assert!((credit["chance_hit_rate"].as_f64().expect("chance") - chance).abs() < 1e-9);
    let implicit = &credit["scores"][0];
    assert_eq!(implicit["score"], "implicit reward");
    let rate = implicit["hit_rate"].as_f64().expect("rate");
    let hits = rows
        .iter()
        .filter(|r| r["lowest_implicit_reward_token"] == r["first_error_token"])
        .count();
    assert!(
        (rate - hits as f64 / rows.len() as f64).abs() < 1e-9,
        "{credit}"
    );
}
