//! `qstar train rm` and `qstar eval rm` on the real model: the head learns
//! the pairs it sees, swapping every pair turns its accuracy into its
//! complement, states come back from the cache instead of the engine (also
//! after a kill), soft labels are read from `qstar label` rows, and bad
//! input is exit code 2 with the file and line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::{json, Value};

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl")
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn write_rows(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).expect("write");
}

/// Runs qstar with `args`; its JSON summary on success, else the output.
fn run(args: &[&str]) -> Result<Value, std::process::Output> {
    let out = qstar().args(args).output().expect("run");
    if !out.status.success() {
        return Err(out);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(stdout.trim()).expect("a JSON summary"))
}

fn ok(args: &[&str]) -> Value {
    run(args).unwrap_or_else(|out| {
        panic!(
            "qstar {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn usage_error(args: &[&str]) -> String {
    let out = run(args).expect_err("should fail");
    assert_eq!(out.status.code(), Some(2), "{:?}", out);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_reward_head_trains_evaluates_and_reuses_its_states() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("features.sqlite");
    let (cache, pairs) = (cache.to_str().unwrap(), examples());
    let pairs = pairs.to_str().unwrap();
    let out = dir.path().join("rm");
    let train = |out: &Path| {
        let out = qstar()
            .args([
                "train",
                "rm",
                "--pairs",
                pairs,
                "--holdout",
                "2",
                "--epochs",
                "40",
            ])
            .args(["--lr", "0.01", "--feature-cache", cache, "--json", "--out"])
            .arg(out)
            .output()
            .expect("train");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
        (summary, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (summary, log) = train(&out);
    // Ten pairs to train on, two held out: two replies each.
    assert!(
        log.contains("computing 20 hidden states (0 cached)"),
        "{log}"
    );
    assert!(
        log.contains("computing 4 hidden states (0 cached)"),
        "{log}"
    );
    assert_eq!(
        (
            summary["train_pairs"].as_u64(),
            summary["eval_pairs"].as_u64()
        ),
        (Some(10), Some(2))
    );
    // Ten pairs in 576 dimensions: the head separates every one it saw.
    assert_eq!(summary["train_accuracy"], 1.0, "{summary}");
    for f in ["reward_head.safetensors", "reward_model.json", "loss.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let epochs = rows(&out.join("metrics.jsonl"));
    assert_eq!(epochs.len(), 40);
    let loss = |r: &Value| r["train_loss"].as_f64().expect("loss");
    assert!(
        loss(&epochs[39]) < 0.5 * loss(&epochs[0]),
        "{:?}",
        (loss(&epochs[0]), loss(&epochs[39]))
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("reward_model.json")).unwrap())
            .unwrap();
    assert_eq!(config["framing"], "chat");
    assert_eq!(config["width"], 576);

    // Again: every state from the cache, and the same head to the byte.
    let again = dir.path().join("rm2");
    let (_, log) = train(&again);
    assert!(!log.contains("computing"), "states were recomputed: {log}");
    assert_eq!(
        std::fs::read(out.join("reward_head.safetensors")).unwrap(),
        std::fs::read(again.join("reward_head.safetensors")).unwrap()
    );

    // Evaluation on the training pairs agrees with training's own figure;
    // with every pair swapped, accuracy and margin turn around.
    let rm = out.to_str().unwrap();
    let eval = ok(&[
        "eval",
        "rm",
        "--model",
        rm,
        "--pairs",
        pairs,
        "--feature-cache",
        cache,
        "--json",
    ]);
    assert_eq!(eval["pairs"], 12);
    let swapped = dir.path().join("swapped.jsonl");
    let mut flipped = rows(&examples());
    for r in &mut flipped {
        let c = r["chosen"].clone();
        r["chosen"] = r["rejected"].clone();
        r["rejected"] = c;
    }
    write_rows(&swapped, &flipped);
    let swapped_eval = ok(&[
        "eval",
        "rm",
        "--model",
        rm,
        "--pairs",
        swapped.to_str().unwrap(),
        "--feature-cache",
        cache,
        "--json",
    ]);
    let acc = |v: &Value| v["accuracy"].as_f64().expect("accuracy");
    let margin = |v: &Value| v["mean_margin"].as_f64().expect("margin");
    assert!(
        (acc(&eval) + acc(&swapped_eval) - 1.0).abs() < 1e-9,
        "{eval} {swapped_eval}"
    );
    assert!((margin(&eval) + margin(&swapped_eval)).abs() < 1e-6);
    assert!(margin(&eval) > 0.0);
    // The two held-out pairs alone, through --last.
    let held = ok(&[
        "eval",
        "rm",
        "--model",
        rm,
        "--pairs",
        pairs,
        "--last",
        "2",
        "--feature-cache",
        cache,
        "--json",
    ]);
    assert_eq!(held["pairs"], 2);
    assert_eq!(held["accuracy"], summary["eval_accuracy"]);

    orm_model_verifier(&out, dir.path(), cache);
}

/// The reward model as search's verifier: best-of-n keeps the solution it
/// scores highest, each score is σ(reward), and the rewards agree with
/// `eval rm` scoring the same solutions as a pair (another code path: the
/// pair reader and the pair framing).
fn orm_model_verifier(rm: &Path, dir: &Path, cache: &str) {
    let input = dir.join("add.jsonl");
    let generated = qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "2",
            "--seed",
            "5",
            "--out",
        ])
        .arg(&input)
        .output()
        .expect("generate");
    assert!(generated.status.success());
    let solved = dir.join("orm.jsonl");
    let verifier = format!("orm-model:{}", rm.display());
    // A qstar home of its own: the default feature cache there starts
    // empty, so the verifier's states are computed here (the model is
    // named, so nothing is fetched into it).
    let home = dir.join("home");
    let info = ok(&["model", "info", "--json"]);
    let model = info["path"].as_str().expect("model path").to_string();
    let best_of_3 = |verifier: &str, out: &Path| {
        let run = qstar()
            .env("QSTAR_HOME", &home)
            .args([
                "solve",
                "--model",
                &model,
                "--task",
                "arithmetic",
                "--strategy",
                "best-of-n",
                "--budget",
                "3",
                "--temperature",
                "1.0",
                "--max-tokens",
                "40",
                "--verifier",
                verifier,
                "--input",
                input.to_str().expect("path"),
                "--out",
                out.to_str().expect("path"),
                "--json",
            ])
            .output()
            .expect("run");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        serde_json::from_slice::<Value>(&run.stdout).expect("a JSON summary")
    };
    let summary = best_of_3(&verifier, &solved);
    // The reward model's forward passes are metered: the checker (free)
    // ranks the same seeded samples, so the difference is the reward
    // model's, its FLOPs on its layers' parameters (a state never runs the
    // output projection).
    let checked = dir.join("checked.jsonl");
    best_of_3("checker", &checked);
    assert!(
        !home.join("models").exists(),
        "the test fetched a model into its home"
    );
    let config = &info["config"];
    let dim = |k: &str| config[k].as_f64().expect(k);
    let (d, kv) = (dim("n_embd"), dim("n_head_kv") * dim("head_dim"));
    let layer_parameters = dim("n_layer") * (2.0 * d * d + 2.0 * d * kv + 3.0 * d * dim("n_ff"));
    for (with_rm, with_checker) in rows(&solved).iter().zip(rows(&checked).iter()) {
        let (r, c) = (&with_rm["compute"], &with_checker["compute"]);
        let n = |v: &Value, k: &str| v[k].as_f64().expect(k);
        assert_eq!(r["tokens_generated"], c["tokens_generated"], "{r} {c}");
        let computed = n(r, "prompt_tokens_computed") - n(c, "prompt_tokens_computed");
        assert!(computed > 0.0, "{r} {c}");
        assert!(n(r, "verifier_calls") >= 1.0, "{r}");
        let flops = n(c, "flops") + 2.0 * layer_parameters * computed;
        assert!((n(r, "flops") - flops).abs() <= 1e-9 * flops, "{r} {c}");
    }
    assert_eq!(summary["questions"], 2);
    assert!(summary["verifier_calls"].as_u64().expect("calls") > 0);
    let logit = |p: f64| (p / (1.0 - p)).ln();
    for record in rows(&solved) {
        let nodes = record["tree"]["nodes"].as_array().expect("nodes");
        // Each finished solution's text and score (one step each here,
        // or the last step's score for several).
        let text_of = |mut id: usize| {
            let mut parts = Vec::new();
            while id != 0 {
                parts.push(nodes[id]["text"].as_str().expect("text").to_string());
                id = nodes[id]["parent"].as_u64().expect("parent") as usize;
            }
            parts.reverse();
            parts.concat()
        };
        let finished: Vec<(String, f64)> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n["finished"] == true)
            .map(|(i, n)| (text_of(i), n["score"].as_f64().expect("a scored solution")))
            .collect();
        assert!(finished.len() >= 2, "{record}");
        let best = finished
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a solution");
        assert_eq!(record["solution"].as_str(), Some(best.0.as_str()));
        // The first two solutions as a pair: eval rm's margin is the
        // difference of the verifier's logits.
        let (a, b) = (&finished[0], &finished[1]);
        let user = format!(
            "{}\n\nSolve the problem step by step, one step per paragraph. End with \"The answer is N.\" where N is a number.",
            record["question"].as_str().expect("question")
        );
        let pair = dir.join("pair.jsonl");
        write_rows(
            &pair,
            &[serde_json::json!({
                "prompt": [{"role": "user", "content": user}],
                "chosen": [{"role": "assistant", "content": a.0}],
                "rejected": [{"role": "assistant", "content": b.0}],
            })],
        );
        let eval = ok(&[
            "eval",
            "rm",
            "--model",
            rm.to_str().expect("path"),
            "--pairs",
            pair.to_str().expect("path"),
            "--feature-cache",
            cache,
            "--json",
        ]);
        let margin = eval["mean_margin"].as_f64().expect("margin");
        assert!(
            (margin - (logit(a.1) - logit(b.1))).abs() < 1e-4,
            "{margin} against {} − {}",
            logit(a.1),
            logit(b.1)
        );
    }
    // A reward model is named with its directory.
    let bare = usage_error(&[
        "solve",
        "--task",
        "arithmetic",
        "--strategy",
        "best-of-n",
        "--verifier",
        "orm-model",
        "--input",
        input.to_str().expect("path"),
        "--out",
        dir.join("x.jsonl").to_str().expect("path"),
    ]);
    assert!(bare.contains("orm-model:DIR"), "{bare}");
}

#[test]
fn soft_labels_train_from_label_rows_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("features.sqlite");
    let cache = cache.to_str().expect("path");
    // `qstar label` rows: TRL columns plus the labeler's soft label.
    let labels = dir.path().join("labels.jsonl");
    let mut labelled = rows(&examples());
    for (i, r) in labelled.iter_mut().enumerate() {
        r["soft_label"] = json!(0.55 + 0.04 * i as f64);
    }
    write_rows(&labels, &labelled);
    let labels = labels.to_str().expect("path");
    let soft_out = dir.path().join("soft");
    let summary = ok(&[
        "train",
        "rm",
        "--pairs",
        labels,
        "--soft",
        "--epochs",
        "5",
        "--feature-cache",
        cache,
        "--json",
        "--out",
        soft_out.to_str().expect("path"),
    ]);
    assert_eq!(summary["labels"], "soft");

    let out = dir.path().join("x");
    let out = out.to_str().expect("path");
    // --soft on rows without a soft label names the first such line.
    let err = usage_error(&[
        "train",
        "rm",
        "--pairs",
        examples().to_str().expect("path"),
        "--soft",
        "--feature-cache",
        cache,
        "--out",
        out,
    ]);
    assert!(
        err.contains("pairs.jsonl:1") && err.contains("soft_label"),
        "{err}"
    );
    // A malformed line is named; with --skip-invalid it is passed over.
    let broken = dir.path().join("broken.jsonl");
    let mut text = std::fs::read_to_string(examples()).unwrap();
    text.push_str("{\"prompt\": \"only a prompt\"}\n");
    std::fs::write(&broken, &text).unwrap();
    let broken = broken.to_str().expect("path");
    let err = usage_error(&[
        "train",
        "rm",
        "--pairs",
        broken,
        "--feature-cache",
        cache,
        "--out",
        out,
    ]);
    assert!(err.contains("broken.jsonl:13"), "{err}");
    let skipped = ok(&[
        "train",
        "rm",
        "--pairs",
        broken,
        "--skip-invalid",
        "--epochs",
        "2",
        "--feature-cache",
        cache,
        "--json",
        "--out",
        out,
    ]);
    assert_eq!(skipped["skipped_lines"], 1);
    assert_eq!(skipped["train_pairs"], 12);
    // Holding out everything, a negative margin with --soft, a base model
    // that is not the one trained on.
    usage_error(&[
        "train",
        "rm",
        "--pairs",
        broken,
        "--holdout",
        "12",
        "--skip-invalid",
        "--out",
        out,
    ]);
    let err = usage_error(&[
        "eval",
        "rm",
        "--model",
        soft_out.to_str().expect("path"),
        "--pairs",
        labels,
        "--base-model",
        labels,
        "--feature-cache",
        cache,
    ]);
    assert!(
        err.contains("is not the model this reward model was trained on"),
        "{err}"
    );
    let err = usage_error(&[
        "eval",
        "rm",
        "--model",
        dir.path().to_str().expect("path"),
        "--pairs",
        labels,
    ]);
    assert!(err.contains("reward_model.json"), "{err}");
}

#[test]
fn a_killed_feature_pass_resumes_from_the_states_it_committed() {
    let dir = tempfile::tempdir().expect("dir");
    // 48 pairs, 96 distinct replies: three chunks of states.
    let base = rows(&examples());
    let many: Vec<Value> = (0..48)
        .map(|i| {
            let mut r = base[i % base.len()].clone();
            for key in ["chosen", "rejected"] {
                let content = r[key][0]["content"].as_str().unwrap().to_string();
                r[key][0]["content"] = json!(format!("{content} (variant {i})"));
            }
            r
        })
        .collect();
    let pairs = dir.path().join("many.jsonl");
    write_rows(&pairs, &many);
    let cache = dir.path().join("features.sqlite");
    let args = |out: &str| -> Vec<String> {
        [
            "train",
            "rm",
            "--pairs",
            pairs.to_str().expect("path"),
            "--epochs",
            "3",
            "--json",
            "--feature-cache",
            cache.to_str().expect("path"),
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cut = dir.path().join("cut");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("qstar"))
        .args(args(cut.to_str().expect("path")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Kill once the first chunk is committed, before the last one is.
    let committed = || -> usize {
        qstar_store::Store::open(&cache)
            .ok()
            .and_then(|s| {
                let jobs = s.jobs().ok()?;
                let job = jobs.first()?;
                s.records(job).ok().map(|r| r.len())
            })
            .unwrap_or(0)
    };
    let start = Instant::now();
    while committed() == 0 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let at_kill = committed();
    assert!(at_kill > 0 && at_kill < 96, "{at_kill} states at the kill");

    let resumed = qstar()
        .args(args(dir.path().join("whole").to_str().expect("path")))
        .output()
        .expect("rerun");
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let log = String::from_utf8_lossy(&resumed.stderr);
    let cached = 96 - committed_before(&log);
    assert_eq!(cached, at_kill, "{log}");
    assert_eq!(committed(), 96);

    // The head is what an uninterrupted run on a fresh cache trains (the
    // states may differ in the last bits where other batches shared other
    // prefixes, so the comparison is of what the heads say).
    let fresh_cache = dir.path().join("fresh.sqlite");
    let fresh = dir.path().join("fresh");
    let out = qstar()
        .args([
            "train",
            "rm",
            "--pairs",
            pairs.to_str().expect("path"),
            "--epochs",
            "3",
            "--json",
        ])
        .args([
            "--feature-cache",
            fresh_cache.to_str().expect("path"),
            "--out",
        ])
        .arg(&fresh)
        .output()
        .expect("fresh");
    assert!(out.status.success());
    let judge = |rm: &Path| {
        ok(&[
            "eval",
            "rm",
            "--model",
            rm.to_str().expect("path"),
            "--pairs",
            pairs.to_str().expect("path"),
            "--feature-cache",
            cache.to_str().expect("path"),
            "--json",
        ])
    };
    let (a, b) = (judge(&fresh), judge(&dir.path().join("whole")));
    assert_eq!(a["accuracy"], b["accuracy"]);
    let (ma, mb) = (
        a["mean_margin"].as_f64().unwrap(),
        b["mean_margin"].as_f64().unwrap(),
    );
    assert!((ma - mb).abs() <= 1e-3 * ma.abs().max(1e-3), "{ma} vs {mb}");
}

/// N in "computing N hidden states (M cached)".
fn committed_before(log: &str) -> usize {
    log.split("computing ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
