//! `qstar bench`: the engine's speed on fixed workloads, and llama.cpp's on
//! the same model in the same run when `llama-bench` is installed, so the
//! ratios mean something on a shared machine.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use qstar_core::{ChooseRequest, GenerateRequest, LanguageModel, SamplingParams};
use qstar_engine::Engine;
use serde_json::{json, Value};

use crate::backend::BackendArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Skip llama.cpp even when llama-bench is on PATH.
    #[arg(long)]
    no_peer: bool,
    #[arg(long)]
    json: bool,
}

/// A prompt of exactly `n` tokens (for this model's tokenizer).
fn prompt_of(engine: &Engine, n: usize, seed: usize) -> String {
    const WORDS: [&str; 12] = [
        " river", " stone", " light", " quiet", " market", " garden", " paper", " winter",
        " engine", " window", " forest", " silver",
    ];
    let mut text = String::new();
    let mut i = seed;
    while engine.tokenize(&text, true).len() < n {
        text.push_str(WORDS[i % WORDS.len()]);
        i = i * 7 + 3;
    }
    text
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn timed<F: std::future::Future<Output = Result<T>>, T>(f: F) -> Result<(f64, T)> {
    let start = Instant::now();
    let out = f.await?;
    Ok((start.elapsed().as_secs_f64(), out))
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let threads = if args.backend.threads == 0 {
        2
    } else {
        args.backend.threads
    };
    let backend = BackendArgs {
        threads,
        ..args.backend.clone()
    };
    let engine = backend.engine().await?;
    let model_path = backend.model_path();
    engine.set_prefix_cache(false).await;

    // Warm-up: first touches of the weights and thread pool.
    engine
        .generate(vec![GenerateRequest::new(
            prompt_of(&engine, 32, 1),
            greedy(4),
        )])
        .await?;

    // Prefill: a 256-token prompt, one token out.
    let p256 = prompt_of(&engine, 256, 2);
    let mut best_prefill = f64::INFINITY;
    for _ in 0..3 {
        let (t, _) = timed(async {
            Ok(engine
                .generate(vec![GenerateRequest::new(p256.clone(), greedy(1))])
                .await?)
        })
        .await?;
        best_prefill = best_prefill.min(t);
    }
    let prefill_tok_s = 256.0 / best_prefill;

    // Decode: 128 tokens after a short prompt, minus that prompt's cost.
    // Each figure is the best of a few runs, as the machine may be shared.
    let short = prompt_of(&engine, 8, 3);
    let best_of = |runs: usize, request: GenerateRequest| {
        let engine = engine.clone();
        async move {
            let mut best = f64::INFINITY;
            for _ in 0..runs {
                let (t, _) =
                    timed(async { Ok(engine.generate(vec![request.clone()]).await?) }).await?;
                best = best.min(t);
            }
            anyhow::Ok(best)
        }
    };
    let t_short = best_of(3, GenerateRequest::new(short.clone(), greedy(1))).await?;
    let t_decode = best_of(3, GenerateRequest::new(short.clone(), greedy(129))).await?;
    let decode_tok_s = 128.0 / (t_decode - t_short).max(1e-9);

    // Eight sequences decoded together.
    let mut batch = GenerateRequest::new(
        short.clone(),
        SamplingParams {
            temperature: 0.8,
            seed: 1,
            ..greedy(129)
        },
    );
    batch.n = 8;
    let t_batch = best_of(3, batch).await?;
    let batch8_decode_tok_s = 8.0 * 128.0 / (t_batch - t_short).max(1e-9);

    // Shared prefix: 64 prompts = one 400-token prefix + a 40-token suffix.
    let prefix = prompt_of(&engine, 400, 4);
    let requests: Vec<ChooseRequest> = (0..64)
        .map(|i| ChooseRequest {
            prompt: format!("{prefix}{} Answer: (", prompt_of(&engine, 36, 100 + i)),
            options: vec!["A".into(), "B".into()],
        })
        .collect();
    let workload = |cache: bool| {
        let engine = engine.clone();
        let requests = requests.clone();
        async move {
            engine.set_prefix_cache(cache).await;
            let before = engine.stats().await;
            let (t, answers) = timed(async { Ok(engine.choose(requests).await?) }).await?;
            let after = engine.stats().await;
            let computed = after.prompt_tokens_computed - before.prompt_tokens_computed;
            anyhow::Ok((t, computed, answers))
        }
    };
    let (uncached_s, uncached_tokens, a1) = workload(false).await?;
    let (cached_s, cached_tokens, a2) = workload(true).await?;
    let max_prob_gap = a1
        .iter()
        .zip(&a2)
        .map(|(x, y)| (x.options[0].prob - y.options[0].prob).abs())
        .fold(0.0, f64::max);
    let rss = peak_rss_mb();

    let mut report = json!({
        "model": model_path.display().to_string(),
        "threads": threads,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "batch8_decode_tok_s": batch8_decode_tok_s,
        "prefix_workload_cached_s": cached_s,
        "prefix_workload_uncached_s": uncached_s,
        "prefix_workload_speedup": uncached_s / cached_s,
        "prefix_workload_tokens_computed_cached": cached_tokens,
        "prefix_workload_tokens_computed_uncached": uncached_tokens,
        "prefix_workload_max_prob_difference": max_prob_gap,
        "peak_rss_mb": rss,
    });
    if !args.no_peer {
        match llama_bench(&model_path.display().to_string(), threads) {
            Ok(Some((pp, tg))) => {
                report["llamacpp"] = json!({"prefill_tok_s": pp, "decode_tok_s": tg});
                report["ratio_prefill"] = json!(prefill_tok_s / pp);
                report["ratio_decode"] = json!(decode_tok_s / tg);
            }
            Ok(None) => eprintln!("llama-bench is not on PATH: no peer in this run"),
            Err(e) => eprintln!("llama-bench failed: {e:#}"),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let peer = &r["llamacpp"];
    println!("| workload | qstar | llama.cpp | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| prefill, 256-token prompt (tok/s) | {} | {} | {} |",
        f(&r["prefill_tok_s"]),
        f(&peer["prefill_tok_s"]),
        r["ratio_prefill"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.2}×"))
    );
    println!(
        "| decode, 1 sequence (tok/s) | {} | {} | {} |",
        f(&r["decode_tok_s"]),
        f(&peer["decode_tok_s"]),
        r["ratio_decode"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.2}×"))
    );
    println!(
        "| decode, 8 sequences (tok/s) | {} | | |",
        f(&r["batch8_decode_tok_s"])
    );
    println!(
        "| shared-prefix choose ×64, cache off (s) | {:.2} | | |",
        r["prefix_workload_uncached_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "| shared-prefix choose ×64, cache on (s) | {:.2} | | {:.2}× faster |",
        r["prefix_workload_cached_s"].as_f64().unwrap_or(0.0),
        r["prefix_workload_speedup"].as_f64().unwrap_or(0.0)
    );
    println!("| peak RSS (MB) | {} | | |", f(&r["peak_rss_mb"]));
}

/// Runs llama.cpp's own benchmark (pp256, tg128) on the same model.
fn llama_bench(model: &str, threads: usize) -> Result<Option<(f64, f64)>> {
    let Ok(bin) = which("llama-bench") else {
        return Ok(None);
    };
    let out = Command::new(bin)
        .args([
            "-m",
            model,
            "-t",
            &threads.to_string(),
            "-p",
            "256",
            "-n",
            "128",
            "-o",
            "json",
        ])
        .output()
        .context("running llama-bench")?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).context("llama-bench JSON")?;
    let mut pp = None;
    let mut tg = None;
    for row in rows {
        let ts = row["avg_ts"].as_f64();
        if row["n_prompt"].as_u64() == Some(256) && row["n_gen"].as_u64() == Some(0) {
            pp = ts;
        }
        if row["n_gen"].as_u64() == Some(128) && row["n_prompt"].as_u64() == Some(0) {
            tg = ts;
        }
    }
    match (pp, tg) {
        (Some(p), Some(t)) => Ok(Some((p, t))),
        _ => anyhow::bail!("llama-bench output lacks pp256/tg128 rows"),
    }
}

fn which(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .context("not found")
}
