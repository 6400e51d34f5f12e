//! `qstar solve`, `qstar sweep` and `qstar tasks generate` end to end on the
//! real model: every strategy and every verifier, the output contract,
//! resuming, compute-optimal search from a sweep's policy, and bad input.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use qstar_core::shared_data::shared_file_or_skip;
use serde_json::Value;

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn ok(run: &std::process::Output) -> String {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// A sample the project ships (written for it) under `examples/`.
fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// Solves the first two questions of a GSM8K file greedily and the first two
/// of a MATH file by majority of 2; returns both record sets.
fn solve_gsm8k_and_math(dir: &Path, gsm8k: &Path, math: &Path) -> (Vec<Value>, Vec<Value>) {
    let out = dir.join("gsm.jsonl");
    ok(&qstar()
        .args(["solve", "--task", "gsm8k", "--input"])
        .arg(gsm8k)
        .args(["--strategy", "greedy", "--limit", "2", "--json", "--out"])
        .arg(&out)
        .args(SHORT)
        .output()
        .expect("gsm8k"));
    let math_out = dir.join("math.jsonl");
    ok(&qstar()
        .args(["solve", "--task", "math", "--input"])
        .arg(math)
        .args([
            "--strategy",
            "majority",
            "--budget",
            "2",
            "--limit",
            "2",
            "--json",
            "--out",
        ])
        .arg(&math_out)
        .args(SHORT)
        .output()
        .expect("math"));
    (jsonl(&out), jsonl(&math_out))
}

/// Three seeded two-digit additions.
fn additions(dir: &Path) -> PathBuf {
    let path = dir.join("add.jsonl");
    ok(&qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "3",
            "--seed",
            "7",
            "--out",
        ])
        .arg(&path)
        .output()
        .expect("generate"));
    path
}

/// Short solutions keep the suite fast; the search logic is the same.
const SHORT: [&str; 6] = [
    "--max-tokens",
    "48",
    "--max-step-tokens",
    "24",
    "--max-steps",
    "3",
];

fn solve(input: &Path, out: &Path, strategy: &str, budget: &str, extra: &[&str]) -> Value {
    let run = qstar()
        .args(["solve", "--task", "arithmetic", "--input"])
        .arg(input)
        .args([
            "--strategy",
            strategy,
            "--budget",
            budget,
            "--json",
            "--out",
        ])
        .arg(out)
        .args(SHORT)
        .args(extra)
        .output()
        .expect("solve");
    serde_json::from_str(ok(&run).trim()).expect("summary JSON")
}

#[test]
fn every_strategy_runs_on_the_real_model_with_the_summary_contract() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = additions(dir.path());
    let cases: [(&str, &[&str]); 11] = [
        ("greedy", &[]),
        ("majority", &[]),
        ("weighted", &["--verifier", "agreement"]),
        ("best-of-n", &["--verifier", "prm"]),
        ("beam", &["--verifier", "prm", "--beam-width", "2"]),
        ("beam", &["--verifier", "likelihood", "--beam-width", "2"]),
        ("dvts", &["--verifier", "confidence", "--beam-width", "2"]),
        ("lookahead", &["--verifier", "leco", "--beam-width", "2"]),
        (
            "mcts",
            &["--verifier", "prm", "--mcts-children", "2", "--reflection"],
        ),
        ("rebase", &["--verifier", "orm"]),
        ("revise", &["--revision-chains", "2"]),
    ];
    for (case, (strategy, extra)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("{case}-{strategy}.jsonl"));
        // N = 2 reaches every strategy's whole loop (two beams, two
        // children, two chains) at half the cost of N = 4.
        let s = solve(&input, &out, strategy, "2", extra);
        assert_eq!(s["questions"], 3, "{strategy}: {s}");
        let correct = s["correct"].as_u64().expect("correct");
        assert!((s["accuracy"].as_f64().expect("accuracy") - correct as f64 / 3.0).abs() < 1e-9);
        for key in [
            "tokens_generated",
            "prompt_tokens_computed",
            "prompt_tokens_reused",
        ] {
            assert!(
                s[key].as_u64().is_some(),
                "{strategy}: {key} missing in {s}"
            );
        }
        assert!(
            s["tokens_generated"].as_u64().expect("tokens") > 0,
            "{strategy}"
        );
        let records = jsonl(&out);
        assert_eq!(records.len(), 3, "{strategy}");
        for r in &records {
            let nodes = r["tree"]["nodes"].as_array().expect("tree");
            assert!(nodes.len() >= 2, "{strategy}: a search tree with steps");
            assert!(r["compute"]["tokens_generated"].as_u64().expect("compute") > 0);
            // `correct` agrees with the recorded answer and reference.
            let right = r["answer"].as_str().is_some_and(|a| {
                a.parse::<f64>().ok() == r["reference"].as_str().and_then(|x| x.parse().ok())
            });
            assert_eq!(r["correct"].as_bool(), Some(right), "{strategy}: {r}");
        }
        // Verifier-guided strategies call their verifier.
        if !extra.is_empty() && !["revise", "weighted"].contains(&strategy) {
            let verifier = extra[1];
            if ["prm", "orm"].contains(&verifier) {
                assert!(
                    s["verifier_calls"].as_u64().expect("calls") > 0,
                    "{strategy}"
                );
            }
            if ["prm", "confidence", "leco", "likelihood"].contains(&verifier) {
                assert!(
                    records.iter().any(|r| r["tree"]["nodes"]
                        .as_array()
                        .is_some_and(|n| n.iter().any(|n| n["score"].is_f64()))),
                    "{strategy}: steps carry scores"
                );
            }
            if verifier == "likelihood" {
                // A step's probability under the policy: in (0, 1], and
                // below 1 for any step with text.
                for r in &records {
                    for n in r["tree"]["nodes"].as_array().expect("nodes") {
                        if let Some(p) = n["score"].as_f64() {
                            let empty = n["text"].as_str().is_some_and(str::is_empty);
                            assert!(p > 0.0 && p <= 1.0 && (empty || p < 1.0), "{n}");
                        }
                    }
                }
            }
        }
    }
    // Beam search shares the question and its partial solutions.
    let beam = solve(
        &input,
        &dir.path().join("beam2.jsonl"),
        "beam",
        "4",
        &["--verifier", "prm", "--beam-width", "2", "--seed", "1"],
    );
    assert!(
        beam["prompt_tokens_reused"].as_u64() > beam["prompt_tokens_computed"].as_u64(),
        "{beam}"
    );
}

#[test]
fn the_dpo_reward_of_a_model_against_itself_is_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = additions(dir.path());
    let model = std::env::var("QSTAR_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/qstar")
        })
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = dir.path().join("dpo.jsonl");
    let ref_model = model.to_str().expect("path");
    solve(
        &input,
        &out,
        "best-of-n",
        "2",
        &["--verifier", "dpo", "--ref-model", ref_model],
    );
    let mut scored = 0;
    for r in jsonl(&out) {
        for n in r["tree"]["nodes"].as_array().expect("nodes") {
            if let Some(s) = n["score"].as_f64() {
                // β·(log π − log π_ref) = 0, so σ(0) = 0.5.
                assert!((s - 0.5).abs() < 1e-9, "{s}");
                scored += 1;
            }
        }
    }
    assert!(scored > 0);
    // Without a reference model the verifier refuses to start.
    let run = qstar()
        .args([
            "solve",
            "--task",
            "arithmetic",
            "--strategy",
            "best-of-n",
            "--verifier",
            "dpo",
            "--input",
        ])
        .arg(&input)
        .arg("--out")
        .arg(dir.path().join("x.jsonl"))
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--ref-model"));
}

#[test]
fn a_partial_run_resumes_to_the_same_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = additions(dir.path());
    let whole = dir.path().join("whole.jsonl");
    solve(&input, &whole, "majority", "3", &[]);
    let part = dir.path().join("part.jsonl");
    let first = solve(&input, &part, "majority", "3", &["--limit", "1"]);
    assert_eq!(first["questions"], 1);
    let run = qstar()
        .args(["solve", "--task", "arithmetic", "--input"])
        .arg(&input)
        .args(["--strategy", "majority", "--budget", "3", "--json", "--out"])
        .arg(&part)
        .args(SHORT)
        .output()
        .expect("resume");
    // A different question count is a different job: it starts afresh.
    let all: Value = serde_json::from_str(ok(&run).trim()).expect("summary");
    assert_eq!(
        (all["records"].as_u64(), all["resumed"].as_u64()),
        (Some(3), Some(0))
    );
    // The same configuration, run again, reuses its records.
    let mut again = solve(&input, &part, "majority", "3", &["--limit", "1"]);
    assert_eq!(again["resumed"], 1);
    let mut first = first;
    for summary in [&mut again, &mut first] {
        summary.as_object_mut().expect("object").remove("resumed");
    }
    assert_eq!(again, first);
    let store = dir.path().join("part.jsonl.store.sqlite");
    assert!(store.exists());
    // Same seeds, same answers: the whole run and a fresh run agree.
    let fresh = dir.path().join("fresh.jsonl");
    solve(&input, &fresh, "majority", "3", &[]);
    let strip = |v: Vec<Value>| -> Vec<(Value, Value)> {
        v.into_iter()
            .map(|r| (r["answer"].clone(), r["solution"].clone()))
            .collect()
    };
    assert_eq!(strip(jsonl(&whole)), strip(jsonl(&fresh)));
}

#[test]
fn sweep_writes_a_table_json_and_plot_and_its_policy_drives_compute_optimal() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = additions(dir.path());
    let out = dir.path().join("sweep");
    let run = qstar()
        .args(["sweep", "--task", "arithmetic", "--input"])
        .arg(&input)
        .args([
            "--strategies",
            "greedy,majority",
            "--budgets",
            "1,2",
            "--out",
        ])
        .arg(&out)
        .args(SHORT)
        .output()
        .expect("sweep");
    let table = ok(&run);
    assert!(table.contains("| majority | 2 |"), "{table}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).expect("json"))
            .expect("json");
    assert_eq!(report["rows"].as_array().expect("rows").len(), 3);
    assert_eq!(
        report["compute_optimal"].as_array().expect("curve").len(),
        2
    );
    let png = std::fs::read(out.join("sweep.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 5_000);

    let solved = dir.path().join("optimal.jsonl");
    let run = qstar()
        .args(["solve", "--task", "arithmetic", "--input"])
        .arg(&input)
        .args([
            "--strategy",
            "compute-optimal",
            "--budget",
            "2",
            "--json",
            "--policy",
        ])
        .arg(out.join("sweep.json"))
        .arg("--out")
        .arg(&solved)
        .args(SHORT)
        .output()
        .expect("compute-optimal");
    let summary: Value = serde_json::from_str(ok(&run).trim()).expect("summary");
    assert_eq!(summary["questions"], 3);
    for r in jsonl(&solved) {
        assert!(["greedy", "majority"].contains(&r["strategy"].as_str().expect("strategy")));
        assert!(r["difficulty"]
            .as_f64()
            .is_some_and(|d| (0.0..=1.0).contains(&d)));
    }
}

#[test]
fn gsm8k_and_serial_questions_are_solved_and_checked() {
    let dir = tempfile::tempdir().expect("tmp");
    let (gsm, math) = solve_gsm8k_and_math(
        dir.path(),
        &example("gsm8k_sample.jsonl"),
        &example("math_sample.jsonl"),
    );
    assert_eq!(gsm[0]["reference"], "57");
    assert_eq!(math[0]["reference"], "\\left( 3, 2 \\right)");
    assert_eq!((gsm.len(), math.len()), (2, 2));
    for kind in ["modadd", "permutation", "squaring", "circuit"] {
        let path = dir.path().join(format!("{kind}.jsonl"));
        ok(&qstar()
            .args([
                "tasks",
                "generate",
                "--task",
                &format!("serial:{kind}"),
                "--count",
                "2",
                "--size",
                "3",
                "--out",
            ])
            .arg(&path)
            .output()
            .expect("generate"));
        let out = dir.path().join(format!("{kind}.out.jsonl"));
        ok(&qstar()
            .args(["solve", "--task", &format!("serial:{kind}"), "--input"])
            .arg(&path)
            .args(["--strategy", "greedy", "--json", "--out"])
            .arg(&out)
            .args(SHORT)
            .output()
            .expect("serial"));
        assert_eq!(jsonl(&out).len(), 2, "{kind}");
    }
}

/// The same on the public GSM8K and MATH-500 development files.
#[test]
fn the_public_gsm8k_and_math500_files_are_solved_and_checked() {
    let test = "the_public_gsm8k_and_math500_files_are_solved_and_checked";
    let (Some(gsm8k), Some(math)) = (
        shared_file_or_skip(test, "data/gsm8k/train_first1000.jsonl"),
        shared_file_or_skip(test, "data/math500/math500_dev.jsonl"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (gsm, math) = solve_gsm8k_and_math(dir.path(), &gsm8k, &math);
    assert_eq!(gsm[0]["reference"], "72");
    assert_eq!(math[0]["reference"], "\\left( 3, \\frac{\\pi}{2} \\right)");
}
#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"question\":\"q\",\"answer\":\"#### 4\"}\n{not json\n",
    )
    .expect("write");
    let out = dir.path().join("o.jsonl");
    let toml = dir.path().join("bad.toml");
    std::fs::write(&toml, "budget = 2\nstrategy = \"nope\"\n").expect("write");
    let toml = toml.to_str().expect("utf-8 path");
    let strategies = "greedy, majority, weighted, best-of-n, beam, dvts, lookahead, mcts, \
                      rebase, revise, compute-optimal";
    let cases: [(&[&str], String); 6] = [
        (&["--strategy", "greedy"], "bad.jsonl:2".into()),
        (&["--strategy", "beam"], "needs --verifier".into()),
        (
            &["--strategy", "nope"],
            format!("invalid value 'nope' for '--strategy <STRATEGY>'\n  [possible values: {strategies}]"),
        ),
        (
            &["--config", toml],
            format!("bad.toml: `strategy` is one of {strategies}, not \"nope\""),
        ),
        (
            &["--strategy", "greedy", "--verifier", "oracle"],
            "[possible values: checker, prm, orm, confidence, leco, dpo, likelihood, orm-model, prm-model, agreement]".into(),
        ),
        (
            &["--strategy", "greedy", "--aggregation", "max"],
            "[possible values: min, last, product, mean]".into(),
        ),
    ];
    for (args, message) in cases {
        let run = qstar()
            .args(["solve", "--task", "gsm8k", "--input"])
            .arg(&bad)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .expect("run");
        assert_eq!(run.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(&message), "{args:?}: {err}");
    }
    let run = qstar()
        .args([
            "solve",
            "--task",
            "algebra",
            "--strategy",
            "greedy",
            "--input",
        ])
        .arg(&bad)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
}

/// Records the store holds for the solve jobs that write `out`.
fn solved_in(store: &Path, out: &Path) -> usize {
    let scope = format!("solve:{}#", out.display());
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
fn a_killed_search_resumes_without_losing_or_repeating_questions() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("add8.jsonl");
    ok(&qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "8",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&input)
        .output()
        .expect("generate"));
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "solve",
            "--task",
            "arithmetic",
            "--strategy",
            "majority",
            "--budget",
            "2",
            "--parallel",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "--input".into(),
            input.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        a.extend(SHORT.iter().map(|s| s.to_string()));
        a
    };
    let whole = dir.path().join("whole.jsonl");
    ok(&qstar().args(args(&whole)).output().expect("whole"));

    let cut = dir.path().join("cut.jsonl");
    let store = dir.path().join("cut.jsonl.store.sqlite");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("qstar"))
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while solved_in(&store, &cut) < 2 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(solved_in(&store, &cut) < 8, "finished before the kill");
    assert!(!cut.exists(), "no output before the run ends");
    let resumed = qstar().args(args(&cut)).output().expect("resume");
    ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming"));
    // Compute differs with what the prefix cache held; the search does not.
    let key = |v: Vec<Value>| -> Vec<(Value, Value, Value, Value)> {
        v.into_iter()
            .map(|r| {
                (
                    r["line"].clone(),
                    r["answer"].clone(),
                    r["solution"].clone(),
                    r["tree"].clone(),
                )
            })
            .collect()
    };
    let (a, b) = (key(jsonl(&whole)), key(jsonl(&cut)));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b);
}
