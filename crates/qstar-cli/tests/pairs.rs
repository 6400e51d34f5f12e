//! `qstar pairs` on the real model: sampled solutions of generated
//! additions, marked by the checker, become TRL preference rows whose
//! chosen reply states the right answer and whose rejected one does not;
//! the counts add up, a rerun resumes every question, and the rows train
//! with `qstar train dpo`.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn ok(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary")
}

/// Whether the task's checker takes `text` for the right answer (the
/// checker has tests of its own; this checks that the command put each
/// solution on its side of the pair).
fn right(text: &str, reference: f64) -> bool {
    let task = qstar_tasks::Task::Gsm8k;
    task.extract(text)
        .is_some_and(|a| task.is_correct(&a, &qstar_tasks::numeric::format_number(reference)))
}

fn pairs(input: &Path, out: &Path) -> Value {
    ok(&qstar()
        .args(["pairs", "--task", "arithmetic", "--input"])
        .arg(input)
        .args([
            "--samples",
            "8",
            "--pairs-per-question",
            "2",
            "--temperature",
            "0.7",
            "--max-tokens",
            "48",
            "--json",
            "--out",
        ])
        .arg(out)
        .output()
        .expect("pairs"))
}

#[test]
fn sampled_solutions_become_checker_labelled_pairs() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("add.jsonl");
    let generated = qstar()
        .args(["tasks", "generate", "--task", "arithmetic", "--count", "12"])
        .args(["--seed", "11", "--out"])
        .arg(&input)
        .output()
        .expect("generate");
    assert!(generated.status.success());
    let references: Vec<f64> = std::fs::read_to_string(&input)
        .expect("questions")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("row");
            v["answer"]
                .as_str()
                .and_then(|a| a.rsplit("####").next())
                .and_then(|a| a.trim().parse().ok())
                .expect("answer")
        })
        .collect();

    let out = dir.path().join("pairs.jsonl");
    let summary = pairs(&input, &out);
    // About one addition in three gets both a right and a wrong answer
    // among 8 samples (REPORT.md), so 12 of them give pairs all but surely.
    assert_eq!(summary["questions"], 12);
    assert_eq!(summary["samples"], 96);
    let with_pairs = 12
        - summary["all_correct"].as_u64().expect("n")
        - summary["all_incorrect"].as_u64().expect("n");
    let rows: Vec<Value> = std::fs::read_to_string(&out)
        .expect("pairs")
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    assert_eq!(rows.len() as u64, summary["pairs"].as_u64().expect("pairs"));
    // One or two pairs from each question with both kinds of sample.
    assert!(rows.len() as u64 >= with_pairs && rows.len() as u64 <= 2 * with_pairs);
    assert!(
        !rows.is_empty(),
        "the default model got no question both right and wrong: {summary}"
    );
    for row in &rows {
        let line = row["line"].as_u64().expect("line") as usize;
        let reference = references[line - 1];
        let chosen = row["chosen"][0]["content"].as_str().expect("chosen");
        let rejected = row["rejected"][0]["content"].as_str().expect("rejected");
        assert!(right(chosen, reference), "{chosen}");
        assert!(!right(rejected, reference), "{rejected}");
        assert_eq!(row["prompt"][0]["role"], "user");
        assert!(row["prompt"][0]["content"]
            .as_str()
            .expect("prompt")
            .contains("answer is"));
    }

    // A rerun finds every question done and writes the same rows.
    let before = std::fs::read(&out).expect("pairs");
    let again = pairs(&input, &out);
    assert_eq!(again["resumed"], 12);
    assert_eq!(std::fs::read(&out).expect("pairs"), before);

    // The rows are DPO's input as they are.
    let run = dir.path().join("dpo");
    let trained = ok(&qstar()
        .args(["train", "dpo", "--pairs"])
        .arg(&out)
        .args(["--max-steps", "1", "--json", "--out"])
        .arg(&run)
        .output()
        .expect("dpo"));
    assert_eq!(trained["steps"], 1);

    // The checker marks the samples: a verifier flag is refused.
    let refused = qstar()
        .args([
            "pairs",
            "--task",
            "arithmetic",
            "--verifier",
            "prm",
            "--input",
        ])
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("x.jsonl"))
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
}
