//! `--prompts DIR` on the real model: a replaced template is the question
//! the model is asked (checked against `qstar choose` on the prompt written
//! out by hand), a changed template starts its job afresh, a copy of the
//! built-in one changes nothing, and a bad directory is refused with exit 2
//! naming the file.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
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

fn config_text(out: &Path) -> String {
    let mut name = out.file_name().expect("name").to_os_string();
    name.push(".config.json");
    std::fs::read_to_string(out.with_file_name(name)).expect("config")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The probabilities `qstar choose` gives `options` after `prompt`.
fn choose(prompt: &str, options: &[&str]) -> Vec<f64> {
    let mut cmd = qstar();
    cmd.args(["choose", "--json", "--prompt", prompt]);
    for o in options {
        cmd.args(["--option", o]);
    }
    let v = json_line(&cmd.output().expect("choose"));
    v["options"]
        .as_array()
        .expect("options")
        .iter()
        .map(|o| o["prob"].as_f64().expect("prob"))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

/// `qstar rate` on the first two sample pairs, plain prompts, as JSON.
fn rate(out: &Path, extra: &[&str]) -> Value {
    json_line(
        &qstar()
            .arg("rate")
            .arg("--input")
            .arg(example("pairs.jsonl"))
            .arg("--out")
            .arg(out)
            .args(["--limit", "2", "--prompt-format", "plain", "--json"])
            .args(extra)
            .output()
            .expect("rate"),
    )
}

fn distributions(out: &Path) -> Vec<Vec<f64>> {
    jsonl(out)
        .iter()
        .flat_map(|r| [&r["rating_chosen"], &r["rating_rejected"]])
        .map(|r| {
            r["distribution"]
                .as_array()
                .expect("distribution")
                .iter()
                .map(|p| p.as_f64().expect("probability"))
                .collect()
        })
        .collect()
}

const SCORES: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

/// A rating template without variables asks every reply the same question,
/// exactly the one `qstar choose` is asked here by hand.
fn assert_rated_by(out: &Path, question: &str) {
    let expected = choose(
        &format!("Human: {question}\n\nAssistant: Rating: "),
        &SCORES,
    );
    let got = distributions(out);
    assert_eq!(got.len(), 4);
    for d in &got {
        assert_eq!(d.len(), 10);
        assert!(
            d.iter().zip(&expected).all(|(a, b)| close(*a, *b)),
            "{d:?} vs {expected:?}"
        );
    }
}

#[test]
fn a_replaced_template_is_the_question_the_model_is_asked_and_keys_the_job() {
    let dir = tempfile::tempdir().expect("tmp");
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).expect("dir");
    let out = dir.path().join("rated.jsonl");
    let prompts = templates.to_str().expect("utf-8 path");

    // The built-in question first: its ratings differ from reply to reply.
    let builtin = rate(&out, &[]);
    assert_eq!(builtin["resumed"], 0);
    let builtin_config = config_text(&out);
    let builtin_ratings = distributions(&out);
    assert!(builtin_ratings.windows(2).any(|w| w[0] != w[1]));

    // A copy of the built-in templates renders the same prompts: the job,
    // its key and its configuration are the ones without `--prompts`.
    ok(&qstar()
        .args(["prompts", "export"])
        .arg(&templates)
        .output()
        .expect("export"));
    let copy = rate(&out, &["--prompts", prompts]);
    assert_eq!(copy["resumed"], 2);
    assert_eq!(config_text(&out), builtin_config);
    assert!(!builtin_config.contains("\"prompts\""));

    // A replaced question: every reply is asked it, and the job is new.
    let first = "Pick a number from 1 to 10.";
    std::fs::write(templates.join("rate.j2"), format!("{first}\n")).expect("write");
    let replaced = rate(&out, &["--prompts", prompts]);
    assert_eq!(replaced["resumed"], 0, "{replaced}");
    assert_rated_by(&out, first);
    let config: Value = serde_json::from_str(&config_text(&out)).expect("config JSON");
    assert_eq!(
        config["prompts"],
        serde_json::json!({"rate": sha256_hex(format!("{first}\n").as_bytes())})
    );

    // The same template again, now from a config file: resumed.
    let toml = dir.path().join("rate.toml");
    std::fs::write(&toml, format!("prompts = {prompts:?}\n")).expect("write");
    let again = rate(&out, &["--config", toml.to_str().expect("utf-8 path")]);
    assert_eq!(again["resumed"], 2, "{again}");
    assert_rated_by(&out, first);

    // The template edited: its old records are not served.
    let second = "How many fingers are on one hand?";
    std::fs::write(templates.join("rate.j2"), format!("{second}\n")).expect("write");
    let edited = rate(&out, &["--prompts", prompts]);
    assert_eq!(edited["resumed"], 0, "{edited}");
    assert_rated_by(&out, second);
    assert_ne!(distributions(&out), builtin_ratings);

    // Without `--prompts`, the first job's records come back unchanged.
    let back = rate(&out, &[]);
    assert_eq!(back["resumed"], 2);
    assert_eq!(distributions(&out), builtin_ratings);
    assert_eq!(config_text(&out), builtin_config);
}

#[test]
fn a_replaced_labeling_question_reaches_the_model() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("cai_pairwise.j2"),
        "Which letter comes first in the alphabet, A or B?\n",
    )
    .expect("write");
    let out = dir.path().join("labels.jsonl");
    ok(&qstar()
        .arg("label")
        .arg("--input")
        .arg(example("pairs.jsonl"))
        .arg("--out")
        .arg(&out)
        .args(["--limit", "2", "--no-debias", "--prompt-format", "plain"])
        .arg("--prompts")
        .arg(dir.path())
        .output()
        .expect("label"));
    let expected = choose(
        "Human: Which letter comes first in the alphabet, A or B?\n\nAssistant: The answer is (",
        &["A", "B"],
    );
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let judgements = row["judgements"].as_array().expect("judgements");
        assert_eq!(judgements.len(), 1);
        let p_a = judgements[0]["p_a"].as_f64().expect("p_a");
        assert!(close(p_a, expected[0]), "{p_a} vs {expected:?}");
    }
}

#[test]
fn a_replaced_step_judge_scores_the_search() {
    let dir = tempfile::tempdir().expect("tmp");
    let question = "Is seven a prime number? Answer Yes or No.";
    std::fs::write(dir.path().join("step_judge.j2"), question).expect("write");
    let out = dir.path().join("solved.jsonl");
    ok(&qstar()
        .args(["solve", "--task", "gsm8k", "--strategy", "best-of-n"])
        .args(["--verifier", "orm", "--budget", "2", "--limit", "2"])
        .args(["--max-tokens", "32", "--max-step-tokens", "16"])
        .args(["--prompt-format", "plain"])
        .arg("--input")
        .arg(example("gsm8k_sample.jsonl"))
        .arg("--out")
        .arg(&out)
        .arg("--prompts")
        .arg(dir.path())
        .output()
        .expect("solve"));
    let expected = choose(&format!("Human: {question}\n\nAssistant: "), &["Yes", "No"]);
    let mut scored = 0;
    for record in jsonl(&out) {
        for node in record["tree"]["nodes"].as_array().expect("nodes") {
            if let Some(score) = node["score"].as_f64() {
                assert!(close(score, expected[0]), "{score} vs {expected:?}");
                scored += 1;
            }
        }
    }
    assert!(scored >= 2, "no node was scored");
    let config: Value = serde_json::from_str(&config_text(&out)).expect("config JSON");
    assert_eq!(
        config["prompts"],
        serde_json::json!({"step_judge": sha256_hex(question.as_bytes())})
    );
}

#[test]
fn a_replaced_rubric_judges_the_same_replies_differently() {
    let dir = tempfile::tempdir().expect("tmp");
    let judge = |out: &Path, prompts: Option<&Path>| {
        let mut cmd = qstar();
        cmd.arg("judge")
            .arg("--input")
            .arg(example("pairs.jsonl"))
            .arg("--out")
            .arg(out)
            .args(["--limit", "1", "--samples", "2", "--max-tokens", "24"]);
        if let Some(p) = prompts {
            cmd.arg("--prompts").arg(p);
        }
        ok(&cmd.output().expect("judge"));
        let record = dir.path().join(format!(
            "{}.store.sqlite",
            out.file_name().expect("name").to_string_lossy()
        ));
        assert!(record.exists());
        let store = qstar_store::Store::open(&record).expect("store");
        let job = store.jobs().expect("jobs").pop().expect("one job");
        let records = store.records(&job).expect("records");
        let v: Value =
            serde_json::from_str(records.values().next().expect("a record")).expect("record JSON");
        v["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| {
                (
                    s["response"].as_str().unwrap_or("").to_string(),
                    s["judgement"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let builtin = judge(&dir.path().join("a.jsonl"), None);
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).expect("dir");
    std::fs::write(
        templates.join("judge.j2"),
        "Question: {{ question }}\nAnswer: {{ response }}\nIs this answer rude? Reply, then write \"Score: \" and 0 to 5.\n",
    )
    .expect("write");
    let replaced = judge(&dir.path().join("b.jsonl"), Some(&templates));
    assert_eq!(builtin.len(), 2);
    // The replies are sampled before judging, from the same seeds.
    let replies = |v: &[(String, String)]| v.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
    assert_eq!(replies(&builtin), replies(&replaced));
    assert_ne!(builtin, replaced, "the judgements did not change");
}

fn refused(args: &[&str], prompts: &Path, needles: &[&str]) {
    let run = qstar()
        .args(args)
        .arg("--prompts")
        .arg(prompts)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_files_and_broken_templates_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("o.jsonl");
    let out = out.to_str().expect("utf-8 path");
    let pairs = example("pairs.jsonl");
    let pairs = pairs.to_str().expect("utf-8 path");
    let questions = example("gsm8k_sample.jsonl");
    let questions = questions.to_str().expect("utf-8 path");
    let commands: [Vec<&str>; 5] = [
        vec!["label", "--input", pairs, "--out", out],
        vec!["rate", "--input", pairs, "--out", out],
        vec!["judge", "--input", pairs, "--out", out],
        vec![
            "solve",
            "--task",
            "gsm8k",
            "--strategy",
            "greedy",
            "--input",
            questions,
            "--out",
            out,
        ],
        vec![
            "sweep", "--task", "gsm8k", "--input", questions, "--out", out,
        ],
    ];

    let unknown = dir.path().join("unknown");
    std::fs::create_dir(&unknown).expect("dir");
    std::fs::write(unknown.join("rating.j2"), "Rate it.").expect("write");
    for args in &commands {
        refused(
            args,
            &unknown,
            &[
                "rating.j2",
                "cai_pairwise.j2, rlaif.j2, rate.j2, judge.j2, step_judge.j2, revision.j2, reflection.j2",
            ],
        );
    }

    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).expect("dir");
    std::fs::write(
        broken.join("revision.j2"),
        "{{ question }}\n{% if attempt %}{{ attempt }\n",
    )
    .expect("write");
    for args in &commands {
        refused(args, &broken, &["revision.j2", "line 2", "does not parse"]);
    }

    let missing = dir.path().join("missing");
    refused(&commands[0], &missing, &["prompt directory"]);
    // Nothing was written.
    assert!(!Path::new(out).exists());
}

#[test]
fn export_writes_every_built_in_template_and_keeps_edits() {
    let dir = tempfile::tempdir().expect("tmp");
    let target = dir.path().join("t");
    ok(&qstar()
        .args(["prompts", "export"])
        .arg(&target)
        .output()
        .expect("export"));
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cai_pairwise.j2",
            "judge.j2",
            "rate.j2",
            "reflection.j2",
            "revision.j2",
            "rlaif.j2",
            "step_judge.j2"
        ]
    );
    // The files are the templates in the source tree, byte for byte.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (name, krate) in [("rate", "qstar-feedback"), ("reflection", "qstar-search")] {
        let shipped = std::fs::read(root.join(format!("crates/{krate}/prompts/{name}.j2")))
            .expect("shipped template");
        let exported = std::fs::read(target.join(format!("{name}.j2"))).expect("exported");
        assert_eq!(shipped, exported, "{name}");
    }
    // An edit is not overwritten without --force.
    std::fs::write(target.join("rate.j2"), "mine").expect("write");
    let again = qstar()
        .args(["prompts", "export"])
        .arg(&target)
        .output()
        .expect("export");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(target.join("rate.j2")).expect("read"),
        "mine"
    );
    ok(&qstar()
        .args(["prompts", "export", "--force"])
        .arg(&target)
        .output()
        .expect("export"));
    assert_ne!(
        std::fs::read_to_string(target.join("rate.j2")).expect("read"),
        "mine"
    );
}
