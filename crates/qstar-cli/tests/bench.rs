//! `qstar bench` on the real default model against a stand-in for
//! llama-bench: one peer call per round with `-r 1`, each after a qstar
//! round, and the peer's figures are the medians of its calls.

use std::path::PathBuf;

use assert_cmd::Command;
use serde_json::Value;

fn model() -> PathBuf {
    let path = qstar_engine::fetch::default_model_path();
    assert!(
        path.exists(),
        "the default model is missing; run `cargo run --release -- model fetch` first"
    );
    path
}

/// A `llama-bench` that logs its arguments and the time of each call and
/// prints the JSON rows of the real one: pp256 and tg128 at the next pair of
/// rates from a fixed list.
fn fake_llama_bench(dir: &std::path::Path) {
    let script = r#"#!/bin/sh
log="$(dirname "$0")/calls.log"
n=$(cat "$log" 2>/dev/null | wc -l)
echo "$(date +%s.%N) $*" >> "$log"
set -- 300 100 900 200 400
i=0
for v in "$@"; do
  if [ "$i" -eq "$n" ]; then pp=$v; fi
  i=$((i + 1))
done
tg=$((pp / 10))
cat <<JSON
[{"build_commit": "abc1234", "build_number": 42, "cpu_info": "Test CPU", "n_prompt": 256, "n_gen": 0, "avg_ts": $pp.0},
 {"build_commit": "abc1234", "build_number": 42, "cpu_info": "Test CPU", "n_prompt": 0, "n_gen": 128, "avg_ts": $tg.5}]
JSON
"#;
    let path = dir.join("llama-bench");
    std::fs::write(&path, script).expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        dir.join("BUILD-INFO"),
        "llama.cpp test build\ncmake -DGGML_NATIVE=ON\n",
    )
    .expect("write info");
}

#[test]
fn peer_runs_interleaved_and_medians_on_both_sides() {
    model();
    let dir = tempfile::tempdir().expect("tempdir");
    fake_llama_bench(dir.path());
    let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let out = Command::cargo_bin("qstar")
        .expect("binary")
        .env("PATH", path)
        .args(["bench", "--runs", "3", "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");

    // The peer: three calls, one repetition each, medians of its figures
    // (300 and 30.5, where the means would be 433.3 and 43.8).
    let log = std::fs::read_to_string(dir.path().join("calls.log")).expect("log");
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 3, "{log}");
    for call in &calls {
        assert!(call.contains("-r 1"), "{call}");
        assert!(call.contains("-p 256") && call.contains("-n 128"), "{call}");
        assert!(call.contains("-t 2"), "{call}");
    }
    let peer = &r["llamacpp"];
    assert_eq!(peer["prefill_tok_s"], 300.0);
    assert_eq!(peer["decode_tok_s"], 30.5);
    assert_eq!(peer["build_commit"], "abc1234");
    assert_eq!(peer["build_number"], 42);
    assert_eq!(peer["build_info"][1], "cmake -DGGML_NATIVE=ON");

    // qstar ran a whole round (prefill, two decodes, eight sequences: seconds
    // of work) between two peer calls.
    let times: Vec<f64> = calls
        .iter()
        .map(|c| {
            c.split(' ')
                .next()
                .and_then(|t| t.parse().ok())
                .expect("time")
        })
        .collect();
    for w in times.windows(2) {
        assert!(w[1] - w[0] > 0.5, "peer calls back to back: {times:?}");
    }

    // qstar's side: three samples each, and the reported figure is their median.
    for key in ["prefill_tok_s", "decode_tok_s", "batch8_decode_tok_s"] {
        let mut v: Vec<f64> = r["samples"][key]
            .as_array()
            .expect("samples")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        assert_eq!(v.len(), 3, "{key}");
        v.sort_by(f64::total_cmp);
        assert_eq!(r[key].as_f64(), Some(v[1]), "{key}");
    }
    assert_eq!(r["runs"], 3);
    // The ratio of the two medians (to rounding: it is divided before the
    // figures are written out).
    let ratio = r["ratio_prefill"].as_f64().expect("ratio");
    let want = r["prefill_tok_s"].as_f64().expect("prefill") / 300.0;
    assert!((ratio - want).abs() <= 1e-12 * want, "{ratio} vs {want}");

    // The kernel the engine's dispatch really takes.
    let kernel = r["kernel"].as_str().expect("kernel");
    assert_eq!(kernel, qstar_engine::kernels::Kernel::detect().name());
    assert!(["avx512vnni", "avx2", "portable"].contains(&kernel));
}

#[test]
fn zero_runs_is_a_usage_error() {
    let out = Command::cargo_bin("qstar")
        .expect("binary")
        .args(["bench", "--runs", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--runs"));
}

fn bench_serve(extra: &[&str]) -> Value {
    model();
    let out = Command::cargo_bin("qstar")
        .expect("binary")
        .args([
            "bench",
            "serve",
            "--requests-per-client",
            "2",
            "--max-tokens",
            "4",
        ])
        .args(["--runs", "1", "--threads", "1", "--json"])
        .args(extra)
        .output()
        .expect("run bench serve");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

/// `qstar bench serve` against a qstar server it starts (and llama-server,
/// when it is on PATH): every request answered with exactly the tokens
/// asked for, no 5xx; and a queue smaller than the load answers 429, never
/// 5xx, while the rest still complete.
#[test]
fn bench_serve_counts_answers_tokens_and_refusals() {
    let v = bench_serve(&["--concurrency", "1,3", "--prompts", "shared,distinct"]);
    let levels = v["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 4, "{v}");
    let peer = v["peer"].is_string();
    // The server's peak memory is reported (from Linux's /proc): at least
    // the model's weights (the file is about 98 MB).
    if cfg!(target_os = "linux") {
        let rss = v["qstar_peak_rss_mb"]
            .as_f64()
            .expect("qstar serve's peak RSS");
        assert!((80.0..4000.0).contains(&rss), "{rss} MB");
    }
    for l in levels {
        let clients = l["concurrency"].as_u64().expect("clients");
        let mut sides = vec![&l["qstar"]];
        if peer {
            sides.push(&l["llama_server"]);
            assert!(
                l["ratio_generated_tok_s"].as_f64().is_some_and(|r| r > 0.0),
                "{l}"
            );
        }
        if peer && cfg!(target_os = "linux") {
            let theirs = l["llama_server"]["peak_rss_mb"].as_f64().expect("peak RSS");
            assert!(theirs > 50.0, "{l}");
        }
        for side in sides {
            assert_eq!(side["ok"].as_u64(), Some(clients * 2), "{l}");
            assert_eq!(side["tokens"].as_u64(), Some(clients * 2 * 4), "{l}");
            assert_eq!(side["status_5xx"].as_u64(), Some(0), "{l}");
            assert!(side["generated_tok_s"].as_f64().is_some_and(|x| x > 0.0));
            let (p50, p99) = (side["p50_ms"].as_f64(), side["p99_ms"].as_f64());
            assert!(p50.zip(p99).is_some_and(|(a, b)| 0.0 < a && a <= b), "{l}");
        }
    }
    let v = bench_serve(&[
        "--concurrency",
        "8",
        "--prompts",
        "distinct",
        "--max-queue",
        "2",
        "--no-peer",
    ]);
    let q = &v["levels"][0]["qstar"];
    assert!(q["status_429"].as_u64().is_some_and(|n| n > 0), "{q}");
    assert_eq!(q["status_5xx"].as_u64(), Some(0), "{q}");
    assert_eq!(q["other_errors"].as_u64(), Some(0), "{q}");
    assert!(q["ok"].as_u64().is_some_and(|n| n >= 2), "{q}");
    assert_eq!(
        q["ok"].as_u64().unwrap_or(0) + q["status_429"].as_u64().unwrap_or(0),
        16
    );
}
