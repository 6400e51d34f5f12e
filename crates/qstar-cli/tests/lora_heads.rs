//! Reward and process reward models in LoRA mode on the real model: the
//! head fitted on cached states then learns with adapters; the engine,
//! with the adapter applied, gives `eval rm` the figures training reported;
//! a rerun continues from the last checkpoint instead of training again; a
//! changed adapter is refused; search scores with a LoRA PRM.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};

fn qstar() -> Command {
    Command::cargo_bin("qstar").expect("binary")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pairs.jsonl")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("path")
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

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn a_lora_reward_model_trains_past_its_head_and_scores_through_the_engine() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = dir.path().join("features.sqlite");
    let pairs = examples();
    // A head fitted for one epoch only, so that the adapters have work to
    // do; then three passes with the adapters.
    let train = |mode: &str, out: &Path| {
        ok(&[
            "train",
            "rm",
            "--pairs",
            path(&pairs),
            "--holdout",
            "2",
            "--epochs",
            "1",
            "--mode",
            mode,
            "--lora-epochs",
            "3",
            "--lora-lr",
            "2e-3",
            "--batch-tokens",
            "1024",
            "--checkpoint-every",
            "2",
            "--feature-cache",
            path(&cache),
            "--json",
            "--out",
            path(out),
        ])
    };
    let head_dir = dir.path().join("head");
    let head = train("head", &head_dir);
    let rm = dir.path().join("rm");
    let summary = train("lora", &rm);
    assert_eq!(summary["mode"], "lora");
    for f in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "reward_head.safetensors",
        "reward_model.json",
        "lora/metrics.jsonl",
        "loss.png",
    ] {
        assert!(rm.join(f).exists(), "{f} missing");
    }
    let lora = &summary["lora"];
    let steps = lora["steps"].as_u64().expect("steps") as usize;
    let metrics = rows(&rm.join("lora/metrics.jsonl"));
    assert_eq!(metrics.len(), steps);
    assert!(steps >= 4, "{lora}");
    // The head-only figure the LoRA run reports is the head run's own.
    assert_eq!(lora["head_only_eval_accuracy"], head["eval_accuracy"]);
    // The adapters and the head learn together: the pairwise loss falls
    // below where the one-epoch head left it, on the training pairs.
    let loss = |r: &Value| num(r, "loss");
    let early = (loss(&metrics[0]) + loss(&metrics[1])) / 2.0;
    let late = (loss(&metrics[steps - 1]) + loss(&metrics[steps - 2])) / 2.0;
    assert!(late < 0.7 * early, "loss {early} → {late}");
    assert!(
        num(&summary, "train_accuracy") >= num(&head, "train_accuracy"),
        "{summary} vs {head}"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("reward_model.json")).unwrap())
            .unwrap();
    assert_eq!(config["mode"], "lora");
    assert_eq!(config["adapter"], "adapter");
    assert!(config["adapter_sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));

    // `eval rm` reads the states through the engine with the adapter, as
    // training's summary did: the same accuracy and margin.
    let eval = |model: &Path| {
        ok(&[
            "eval",
            "rm",
            "--model",
            path(model),
            "--pairs",
            path(&pairs),
            "--last",
            "2",
            "--feature-cache",
            path(&cache),
            "--json",
        ])
    };
    let evaluated = eval(&rm);
    assert_eq!(evaluated["accuracy"], summary["eval_accuracy"]);
    let margin = num(&evaluated, "mean_margin");
    assert!((margin - num(&summary, "eval_mean_margin")).abs() < 1e-9);
    // The trainer measured the same held-out pairs on its own f32 states
    // at the last step: the engine, with 8-bit activations and the saved
    // adapter, agrees with it closely.
    let trainer = &metrics[steps - 1];
    let trainer_margin = num(trainer, "eval_mean_margin");
    eprintln!("held-out margin: engine {margin}, trainer {trainer_margin}");
    assert!(
        (margin - trainer_margin).abs() <= 0.1 * trainer_margin.abs().max(1.0),
        "engine {margin} against trainer {trainer_margin}"
    );
    // …and not the head-only model's states and head.
    let head_margin = num(&eval(&head_dir), "mean_margin");
    assert!(
        (margin - head_margin).abs() > 1e-3,
        "{margin} vs {head_margin}"
    );

    // The same command again continues from the last checkpoint (the
    // last step): nothing is trained twice, and the head is the same.
    let before = std::fs::read(rm.join("reward_head.safetensors")).expect("head");
    let again = train("lora", &rm);
    assert_eq!(again["lora"]["resumed_from"].as_u64(), Some(steps as u64));
    assert_eq!(rows(&rm.join("lora/metrics.jsonl")).len(), steps);
    assert_eq!(
        std::fs::read(rm.join("reward_head.safetensors")).expect("head"),
        before
    );

    // A head on the adapted model's states (`--adapter`) keeps its own
    // copy of the adapter; fitted with the same settings on the base
    // model's states, the same pairs give another head.
    let head_on = |out: &Path, adapter: Option<&Path>| {
        let mut cmd = qstar();
        cmd.args(["train", "rm", "--pairs", path(&pairs), "--holdout", "2"])
            .args(["--feature-cache", path(&cache), "--json", "--out"])
            .arg(out);
        if let Some(a) = adapter {
            cmd.arg("--adapter").arg(a);
        }
        let run = cmd.output().expect("run");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        serde_json::from_slice::<Value>(&run.stdout).expect("summary")
    };
    let on_adapter = dir.path().join("on-adapter");
    let on_base = dir.path().join("on-base");
    let summary_on_adapter = head_on(&on_adapter, Some(&rm.join("adapter")));
    head_on(&on_base, None);
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(on_adapter.join("reward_model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["mode"], "head");
    assert_eq!(kept["adapter_sha256"], config["adapter_sha256"]);
    assert_eq!(
        std::fs::read(on_adapter.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(rm.join("adapter/adapter_model.safetensors")).unwrap()
    );
    assert_ne!(
        std::fs::read(on_adapter.join("reward_head.safetensors")).unwrap(),
        std::fs::read(on_base.join("reward_head.safetensors")).unwrap(),
        "the adapter did not change the states"
    );
    assert_eq!(
        eval(&on_adapter)["accuracy"],
        summary_on_adapter["eval_accuracy"]
    );

    // Another adapter in the directory is refused, naming the reason.
    let config_file = rm.join("adapter/adapter_config.json");
    let mut text = std::fs::read_to_string(&config_file).expect("config");
    text.push('\n');
    std::fs::write(&config_file, text).expect("write");
    let out = qstar()
        .args(["eval", "rm", "--model", path(&rm), "--pairs", path(&pairs)])
        .args(["--feature-cache", path(&cache)])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the one this model was trained with"),
        "{err}"
    );
}

/// Sums in the search's one-step-per-line form, each written twice: right,
/// and with its second partial sum wrong (which every later line repeats).
fn step_rows() -> Vec<Value> {
    let mut out = Vec::new();
    for (i, terms) in [
        [12, 34, 5],
        [27, 18, 40],
        [61, 9, 13],
        [44, 45, 7],
        [38, 26, 19],
    ]
    .iter()
    .enumerate()
    {
        let question = format!("What is {} + {} + {}?", terms[0], terms[1], terms[2]);
        let first = terms[0] + terms[1];
        let total = first + terms[2];
        let right = vec![
            format!("{} + {} = {first}", terms[0], terms[1]),
            format!("{first} + {} = {total}", terms[2]),
            format!("The answer is {total}."),
        ];
        let wrong_total = total + 10 + i as i32;
        let wrong = vec![
            right[0].clone(),
            format!("{first} + {} = {wrong_total}", terms[2]),
            format!("The answer is {wrong_total}."),
        ];
        out.push(json!({"prompt": question, "completions": right, "labels": [true, true, true]}));
        out.push(json!({"prompt": question, "completions": wrong, "labels": [true, false, false]}));
    }
    out
}

#[test]
fn a_lora_process_reward_model_trains_and_scores_search() {
    let dir = tempfile::tempdir().expect("dir");
    let steps = dir.path().join("steps.jsonl");
    let text: String = step_rows().iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&steps, text).expect("write");
    let prm = dir.path().join("prm");
    let summary = ok(&[
        "train",
        "prm",
        "--steps",
        path(&steps),
        "--holdout",
        "1",
        "--step-delimiter",
        "\\n",
        "--epochs",
        "5",
        "--mode",
        "lora",
        "--lora-epochs",
        "2",
        "--lora-lr",
        "1e-3",
        "--batch-tokens",
        "512",
        "--feature-cache",
        path(&dir.path().join("features.sqlite")),
        "--json",
        "--out",
        path(&prm),
    ]);
    assert_eq!(summary["mode"], "lora");
    // Four questions train, one is held out: 8 and 2 solutions of 3 steps.
    assert_eq!(summary["train_steps"], 24);
    assert_eq!(summary["eval_steps"], 6);
    let lora = &summary["lora"];
    let metrics = rows(&prm.join("lora/metrics.jsonl"));
    assert_eq!(metrics.len() as u64, lora["steps"].as_u64().expect("steps"));
    let trained: f64 = metrics.iter().map(|r| num(r, "predicted")).sum();
    assert_eq!(trained, 2.0 * 24.0, "every step scored once per epoch");
    // The held-out loss through the engine (adapter applied) is close to
    // the trainer's own at the last step.
    let trainer_loss = metrics
        .last()
        .and_then(|r| r["eval_loss"].as_f64())
        .expect("eval");
    let engine_loss = num(&summary, "eval_loss");
    eprintln!("held-out step loss: engine {engine_loss}, trainer {trainer_loss}");
    assert!(
        (engine_loss - trainer_loss).abs() <= 0.05 * trainer_loss.max(0.1),
        "engine {engine_loss} against trainer {trainer_loss}"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(prm.join("prm_model.json")).unwrap())
            .unwrap();
    assert_eq!(config["mode"], "lora");
    assert_eq!(config["step_delimiter"], "\n");

    // Search scores its steps with the adapter applied.
    let input = dir.path().join("q.jsonl");
    std::fs::write(
        &input,
        "{\"question\": \"What is 12 + 34 + 5?\", \"answer\": \"51\"}\n",
    )
    .expect("write");
    let out = dir.path().join("solved.jsonl");
    let verifier = format!("prm-model:{}", path(&prm));
    ok(&[
        "solve",
        "--task",
        "arithmetic",
        "--input",
        path(&input),
        "--strategy",
        "best-of-n",
        "--budget",
        "2",
        "--verifier",
        &verifier,
        "--step-delimiter",
        "\\n",
        "--temperature",
        "1.0",
        "--max-tokens",
        "40",
        "--out",
        path(&out),
        "--json",
    ]);
    // The search's records are keyed on the adapter too.
    let keyed: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("solved.jsonl.config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(
        keyed["process_reward_model"]["adapter_sha256"],
        config["adapter_sha256"]
    );
    let record = &rows(&out)[0];
    let scores: Vec<f64> = record["tree"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["score"].as_f64())
        .collect();
    assert!(!scores.is_empty(), "{record}");
    assert!(scores.iter().all(|s| *s > 0.0 && *s < 1.0), "{scores:?}");
}
