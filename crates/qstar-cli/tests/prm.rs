//! Process supervision on the real model: `qstar label-steps` labels the
//! steps of sampled solutions by rollouts (resumable, the prefix cache
//! shared), `qstar train prm` fits a step head on them, and search uses it
//! as `--verifier prm-model:DIR`; bad rows are exit 2 with file and line.

use std::path::Path;

use assert_cmd::Command;
use qstar_tasks::Task;
use serde_json::Value;

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn ok(args: &[&str]) -> Value {
    let out = qstar().args(args).output().expect("run");
    assert!(
        out.status.success(),
        "qstar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON summary")
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("rows")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("path")
}

#[test]
fn steps_are_labelled_by_rollouts_a_step_head_trains_and_search_uses_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("add.jsonl");
    let generated = qstar()
        .args([
            "tasks",
            "generate",
            "--task",
            "arithmetic",
            "--count",
            "3",
            "--seed",
            "11",
            "--out",
        ])
        .arg(&input)
        .output()
        .expect("generate");
    assert!(generated.status.success());
    let steps = dir.path().join("steps.jsonl");
    let label = |out: &Path| {
        ok(&[
            "label-steps",
            "--task",
            "arithmetic",
            "--input",
            path(&input),
            "--samples",
            "3",
            "--rollouts",
            "2",
            "--step-delimiter",
            "\\n",
            "--temperature",
            "1.0",
            "--max-tokens",
            "40",
            "--out",
            path(out),
            "--json",
        ])
    };
    let summary = label(&steps);
    let labelled = rows(&steps);
    assert_eq!(
        labelled.len() as u64,
        summary["solutions"].as_u64().expect("solutions")
    );
    let mut n_steps = 0;
    for row in &labelled {
        let completions = row["completions"].as_array().expect("completions");
        let labels = row["labels"].as_array().expect("labels");
        let soft = row["soft_labels"].as_array().expect("soft");
        assert_eq!(completions.len(), labels.len());
        assert_eq!(completions.len(), soft.len());
        n_steps += completions.len();
        // The last step's label is the solution's own correctness, by the
        // task's checker on the joined text.
        let text: Vec<&str> = completions
            .iter()
            .map(|c| c.as_str().expect("step"))
            .collect();
        let joined = text.join("\n");
        let reference = row["reference"].as_str().expect("reference");
        let right = Task::Gsm8k
            .extract(&joined)
            .is_some_and(|a| Task::Gsm8k.is_correct(&a, reference));
        assert_eq!(row["correct"].as_bool(), Some(right), "{row}");
        assert_eq!(labels.last().and_then(Value::as_bool), Some(right));
        // Earlier steps: two rollouts each, so 0, 1/2 or 1; hard is "any".
        for (l, s) in labels.iter().zip(soft).take(labels.len() - 1) {
            let s = s.as_f64().expect("soft label");
            assert!([0.0, 0.5, 1.0].contains(&s), "{s}");
            assert_eq!(l.as_bool(), Some(s > 0.0));
        }
        assert!(row["prompt"]
            .as_str()
            .expect("prompt")
            .starts_with("What is"));
    }
    assert_eq!(n_steps as u64, summary["steps"].as_u64().expect("steps"));
    // The rollouts of a step share their prefix: most prompt tokens are
    // reused, not computed.
    let reused = summary["prompt_tokens_reused"].as_u64().expect("reused");
    let computed = summary["prompt_tokens_computed"]
        .as_u64()
        .expect("computed");
    assert!(reused > 2 * computed, "{summary}");
    // Run again: every question from the store, the same rows.
    let before = std::fs::read(&steps).expect("rows");
    let again = label(&steps);
    assert_eq!(again["resumed"], 3);
    assert_eq!(std::fs::read(&steps).expect("rows"), before);

    // A step head on the labels.
    let cache = dir.path().join("features.sqlite");
    let prm = dir.path().join("prm");
    let trained = ok(&[
        "train",
        "prm",
        "--steps",
        path(&steps),
        "--out",
        path(&prm),
        "--step-delimiter",
        "\\n",
        "--epochs",
        "20",
        "--lr",
        "0.01",
        "--feature-cache",
        path(&cache),
        "--json",
    ]);
    assert_eq!(trained["train_steps"].as_u64(), Some(n_steps as u64));
    for f in [
        "reward_head.safetensors",
        "prm_model.json",
        "metrics.jsonl",
        "loss.png",
    ] {
        assert!(prm.join(f).exists(), "{f}");
    }
    let epochs = rows(&prm.join("metrics.jsonl"));
    assert_eq!(epochs.len(), 20);
    let loss = |r: &Value| r["train_loss"].as_f64().expect("loss");
    assert!(
        loss(&epochs[19]) < loss(&epochs[0]),
        "{:?}",
        (loss(&epochs[0]), loss(&epochs[19]))
    );

    // Search with it: every step scored in (0, 1), and best-of-n keeps the
    // solution whose weakest step scores highest.
    // It runs in a qstar home of its own, to see that search adds nothing
    // to the feature cache (its steps never recur).
    let solved = dir.path().join("solved.jsonl");
    let verifier = format!("prm-model:{}", prm.display());
    let info = ok(&["model", "info", "--json"]);
    let model = info["path"].as_str().expect("model path").to_string();
    let home = dir.path().join("home");
    // Best-of-3 over the same seeded samples, with the verifier named.
    let best_of_3 = |verifier: &str, out: &Path| -> Vec<String> {
        [
            "solve",
            "--model",
            &model,
            "--task",
            "arithmetic",
            "--input",
            path(&input),
            "--strategy",
            "best-of-n",
            "--budget",
            "3",
            "--verifier",
            verifier,
            "--step-delimiter",
            "\\n",
            "--temperature",
            "1.0",
            "--max-tokens",
            "40",
            "--out",
            path(out),
            "--json",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let search = qstar()
        .env("QSTAR_HOME", &home)
        .args(best_of_3(&verifier, &solved))
        .output()
        .expect("run");
    assert!(
        search.status.success(),
        "{}",
        String::from_utf8_lossy(&search.stderr)
    );
    let cache = qstar_store::Store::open(&home.join("features.sqlite")).expect("the feature cache");
    let jobs = cache.jobs().expect("jobs");
    assert!(
        jobs.iter().any(|j| j.starts_with("last-hidden-state/")),
        "the search used this cache: {jobs:?}"
    );
    for job in jobs {
        assert!(cache.records(&job).expect("records").is_empty(), "{job}");
    }
    for record in rows(&solved) {
        let nodes = record["tree"]["nodes"].as_array().expect("nodes");
        let score = |i: usize| nodes[i]["score"].as_f64();
        let mut best: Option<(f64, usize)> = None;
        for (i, n) in nodes.iter().enumerate().skip(1) {
            let Some(s) = score(i) else {
                assert!(n["finished"] != true, "a finished step without a score");
                continue;
            };
            assert!(s > 0.0 && s < 1.0, "{s}");
            if n["finished"] == true {
                // The weakest step on the path from the root.
                let mut weakest = s;
                let mut at = n["parent"].as_u64().expect("parent") as usize;
                while at != 0 {
                    weakest = weakest.min(score(at).expect("scored"));
                    at = nodes[at]["parent"].as_u64().expect("parent") as usize;
                }
                if best.is_none_or(|(b, _)| weakest > b) {
                    best = Some((weakest, i));
                }
            }
        }
        let (_, leaf) = best.expect("a finished solution");
        assert_eq!(record["answer"], nodes[leaf]["answer"], "{record}");
    }

    // The step head's forward passes are metered: the same search with the
    // checker (free) samples the same solutions, so the difference in prompt
    // tokens and FLOPs is the PRM's.
    let checked = dir.path().join("checked.jsonl");
    let args = best_of_3("checker", &checked);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // A hidden state runs through the layers only (no output projection,
    // and the embedding is a lookup), so the PRM's tokens cost 2 × the
    // layers' parameters each, the policy's 2 × all of them.
    let config = &info["config"];
    let dim = |k: &str| config[k].as_f64().expect(k);
    let (d, kv) = (dim("n_embd"), dim("n_head_kv") * dim("head_dim"));
    let layer_parameters = dim("n_layer") * (2.0 * d * d + 2.0 * d * kv + 3.0 * d * dim("n_ff"));
    assert!(layer_parameters < info["parameters"].as_f64().expect("parameters"));
    for (with_prm, with_checker) in rows(&solved).iter().zip(rows(&checked).iter()) {
        let (p, c) = (&with_prm["compute"], &with_checker["compute"]);
        let n = |v: &Value, k: &str| v[k].as_f64().expect(k);
        assert_eq!(p["tokens_generated"], c["tokens_generated"], "{p} {c}");
        assert!(n(p, "prompt_tokens") > n(c, "prompt_tokens"), "{p} {c}");
        assert!(
            n(p, "prompt_tokens_computed") > n(c, "prompt_tokens_computed"),
            "{p} {c}"
        );
        assert!(n(p, "verifier_calls") >= 1.0, "{p}");
        assert_eq!(
            n(p, "prompt_tokens"),
            n(p, "prompt_tokens_computed") + n(p, "prompt_tokens_reused"),
            "{p}"
        );
        let verifier_computed = n(p, "prompt_tokens_computed") - n(c, "prompt_tokens_computed");
        let flops = n(c, "flops") + 2.0 * layer_parameters * verifier_computed;
        assert!((n(p, "flops") - flops).abs() <= 1e-9 * flops, "{p} {c}");
    }

    // Bad rows: exit 2 naming the file and the line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"q\",\"completions\":[\"a\"],\"labels\":[true]}\n{\"prompt\":\"q\",\"completions\":[\"a\",\"b\"],\"labels\":[true]}\n",
    )
    .expect("write");
    let out = qstar()
        .args([
            "train",
            "prm",
            "--steps",
            path(&bad),
            "--out",
            path(&dir.path().join("x")),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("1 labels for 2 steps"),
        "{err}"
    );
    // --soft needs soft labels.
    let out = qstar()
        .args([
            "train",
            "prm",
            "--soft",
            "--steps",
            path(&bad),
            "--limit",
            "1",
            "--out",
        ])
        .arg(dir.path().join("y"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soft_labels"));
}

#[test]
fn a_step_head_trains_on_prm800k_human_labels() {
    let test = "a_step_head_trains_on_prm800k_human_labels";
    let Some(records) = qstar_core::shared_data::shared_file_or_skip(
        test,
        "data/prm800k/prm800k_examples_dev.jsonl",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let prm = dir.path().join("prm");
    // The first record (phase 1) has six steps in its walk; the labeller
    // rewrote step 2 after rejecting 5 candidates and chose the fifth of 5
    // candidates at step 6. So: 5 branch rows at step 2 and 4 at step 6,
    // each trained on its last step only, and the walk of 6 steps — 10 rows,
    // 15 steps.
    let trained = ok(&[
        "train",
        "prm",
        "--steps",
        path(&records),
        "--limit",
        "1",
        "--out",
        path(&prm),
        "--step-delimiter",
        "\\n",
        "--epochs",
        "30",
        "--lr",
        "0.01",
        "--soft",
        "--feature-cache",
        path(&dir.path().join("features.sqlite")),
        "--json",
    ]);
    assert_eq!(trained["train_solutions"].as_u64(), Some(10), "{trained}");
    assert_eq!(trained["train_steps"].as_u64(), Some(15), "{trained}");
    let epochs = rows(&prm.join("metrics.jsonl"));
    let loss = |r: &Value| r["train_loss"].as_f64().expect("loss");
    assert!(loss(&epochs[29]) < loss(&epochs[0]), "{epochs:?}");
    // A PRM800K record with a rating outside -1, 0, 1 names its line.
    let bad = dir.path().join("bad.jsonl");
    let first = std::fs::read_to_string(&records).expect("records");
    let first = first.lines().next().expect("a record");
    std::fs::write(
        &bad,
        format!(
            "{first}\n{}\n",
            first.replace("\"rating\": 1", "\"rating\": 7")
        ),
    )
    .expect("write");
    let out = qstar()
        .args(["train", "prm", "--steps", path(&bad), "--out", path(&prm)])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("rating 7"),
        "{err}"
    );
}
