//! `qstar bench`: the engine's speed on fixed workloads, and llama.cpp's on
//! the same model in the same run when `llama-bench` is installed. The two
//! take turns (a qstar round, one `llama-bench -r 1`, a qstar round, …) and
//! both sides report the median of their rounds, so the ratios compare like
//! with like on a shared machine.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use qstar_core::{ChooseRequest, GenerateRequest, LanguageModel, SamplingParams};
use qstar_engine::kernels::Kernel;
use qstar_engine::Engine;
use serde_json::{json, Value};

use crate::backend::BackendArgs;
use crate::report::{Reporter, Text};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Training-step speed and memory, against PyTorch when it is installed.
    Train(crate::bench_train::BenchTrainArgs),
    /// Load on an OpenAI-compatible server (qstar serve), against
    /// llama-server on the same model when it is on PATH.
    Serve(crate::bench_serve::BenchServeArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Skip llama.cpp even when llama-bench is on PATH.
    #[arg(long)]
    no_peer: bool,
    /// Rounds of the prefill and decode workloads; each round runs qstar
    /// once, then llama-bench once, and every figure is the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    #[arg(long)]
    json: bool,
    /// Preference pairs for the labeling workload (the first 100 are
    /// labeled under 4 principles in both orders); skipped when absent.
    #[arg(long)]
    label_pairs: Option<std::path::PathBuf>,
    /// Also run the labeling workload against this OpenAI-compatible server
    /// (e.g. llama-server on the same model).
    #[arg(long)]
    label_server: Option<String>,
    /// Label with the principle after the replies (`label --principle-last`).
    #[arg(long)]
    label_principle_last: bool,
    /// GSM8K questions for the search workload (beam search, N = 16, PRM
    /// verifier, on the first 10); skipped when absent.
    #[arg(long)]
    search_problems: Option<std::path::PathBuf>,
}

/// Beam search (N = 16, width 4, the model as PRM) on every problem at
/// once; returns the wall time and the compute spent.
async fn search_workload(
    model: &dyn LanguageModel,
    problems: &[qstar_tasks::Problem],
) -> Result<(f64, qstar_search::Compute, usize)> {
    let config = qstar_search::SearchConfig::default();
    let verifier = qstar_search::JudgeVerifier {
        model,
        outcome_only: false,
    };
    let scorer = qstar_search::Scorer {
        verifier: &verifier,
        aggregation: qstar_search::Aggregation::Min,
    };
    let meter = qstar_search::Meter::new(0);
    let (t, correct) = timed(async {
        let runs = problems.iter().map(|p| async {
            let s =
                qstar_search::Searcher::new(model, qstar_tasks::Task::Gsm8k, p, &config, &meter)?;
            qstar_search::run(qstar_search::Strategy::Beam, &s, 16, Some(scorer)).await
        });
        let outcomes = futures::future::try_join_all(runs).await?;
        Ok(outcomes.iter().filter(|o| o.correct).count())
    })
    .await?;
    Ok((t, meter.total(), correct))
}

/// Labels the first 100 pairs (4 principles, both orders) and returns pairs
/// per second.
async fn labeling_workload(
    model: &dyn LanguageModel,
    pairs: &[qstar_tasks::PreferencePair],
    format: qstar_feedback::PromptFormat,
    principle_last: bool,
) -> Result<f64> {
    let constitution = qstar_feedback::Constitution::default_constitution();
    let labeler = qstar_feedback::CaiLabeler::new(
        model,
        &constitution,
        qstar_feedback::CaiConfig {
            principles: qstar_feedback::PrincipleChoice::Sample(4),
            format,
            principle_last,
            ..Default::default()
        },
    )?;
    let (t, _) = timed(async {
        for chunk in pairs.chunks(8) {
            labeler.label(chunk).await?;
        }
        Ok(())
    })
    .await?;
    Ok(pairs.len() as f64 / t)
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

pub(crate) fn peak_rss_mb() -> Option<f64> {
    peak_rss_mb_of("self")
}

/// The peak resident memory (Linux's VmHWM) of process `pid` ("self" for
/// this one), in MB; `None` where /proc does not tell.
pub(crate) fn peak_rss_mb_of(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
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
    match args.command {
        Some(BenchCommand::Train(a)) => {
            return crate::bench_train::run(a, args.backend.model.clone()).await
        }
        Some(BenchCommand::Serve(a)) => return crate::bench_serve::run(a).await,
        None => {}
    }
    let reporter = Reporter::new(args.json);
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

    // Prefill (a 256-token prompt, one token out), decode (128 tokens after
    // a short prompt, minus that prompt's cost) and eight sequences decoded
    // together, then llama-bench once (pp256, tg128), `runs` times over.
    let p256 = prompt_of(&engine, 256, 2);
    let short = prompt_of(&engine, 8, 3);
    let mut batch = GenerateRequest::new(
        short.clone(),
        SamplingParams {
            temperature: 0.8,
            seed: 1,
            ..greedy(129)
        },
    );
    batch.n = 8;
    let peer = if args.no_peer {
        None
    } else {
        let found = which("llama-bench");
        if found.is_none() {
            reporter.note("llama-bench is not on PATH: no peer in this run");
        }
        found
    };
    let model_arg = model_path.display().to_string();
    let time_one = |request: GenerateRequest| {
        let engine = engine.clone();
        async move {
            let (t, _) = timed(async { Ok(engine.generate(vec![request]).await?) }).await?;
            anyhow::Ok(t)
        }
    };
    let mut ours = Rounds::default();
    let mut theirs: Option<PeerRounds> = peer.as_ref().map(|_| PeerRounds::default());
    for _ in 0..args.runs {
        let mut failed = false;
        let t_prefill = time_one(GenerateRequest::new(p256.clone(), greedy(1))).await?;
        let t_short = time_one(GenerateRequest::new(short.clone(), greedy(1))).await?;
        let t_decode = time_one(GenerateRequest::new(short.clone(), greedy(129))).await?;
        let t_batch = time_one(batch.clone()).await?;
        ours.prefill.push(256.0 / t_prefill);
        ours.decode.push(128.0 / (t_decode - t_short).max(1e-9));
        ours.batch8
            .push(8.0 * 128.0 / (t_batch - t_short).max(1e-9));
        if let (Some(bin), Some(rounds)) = (&peer, theirs.as_mut()) {
            match llama_bench(bin, &model_arg, threads) {
                Ok(run) => rounds.push(run),
                Err(e) => {
                    reporter.note(&format!("llama-bench failed: {e:#}"));
                    failed = true;
                }
            }
        }
        if failed {
            theirs = None;
        }
    }
    let prefill_tok_s = median(&ours.prefill);
    let decode_tok_s = median(&ours.decode);
    let batch8_decode_tok_s = median(&ours.batch8);

    // Shared prefix: 64 prompts = one 400-token prefix + a 40-token suffix.
    let prefix = prompt_of(&engine, 400, 4);
    let requests: Vec<ChooseRequest> = (0..64)
        .map(|i| ChooseRequest {
            prompt: format!("{prefix}{} Answer: (", prompt_of(&engine, 36, 100 + i)),
            options: vec!["A".into(), "B".into()],
        })
        .collect();
    let mut report_label: Option<(f64, f64)> = None;
    let mut report_server: Option<f64> = None;
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
    if let Some(path) = &args.label_pairs {
        let pairs = qstar_tasks::read_pairs(path, true, Some(100))
            .map_err(|e| crate::UsageError(e.to_string()))?
            .pairs;
        let last = args.label_principle_last;
        engine.set_prefix_cache(false).await;
        let uncached =
            labeling_workload(&engine, &pairs, qstar_feedback::PromptFormat::Chat, last).await?;
        engine.set_prefix_cache(true).await;
        let cached =
            labeling_workload(&engine, &pairs, qstar_feedback::PromptFormat::Chat, last).await?;
        report_label = Some((cached, uncached));
        if let Some(url) = &args.label_server {
            let server = qstar_openai::OpenAiBackend::new(qstar_openai::OpenAiConfig {
                base_urls: vec![url.clone()],
                concurrency: 8,
                ..Default::default()
            })?;
            // The server applies no chat template to raw prompts, so the
            // prompt is rendered here with the model's template and sent as
            // plain text: the same tokens reach both engines.
            let rendered = RenderedChat {
                inner: &server,
                engine: &engine,
            };
            report_server = Some(
                labeling_workload(&rendered, &pairs, qstar_feedback::PromptFormat::Chat, last)
                    .await?,
            );
        }
    }
    let mut report_search = None;
    if let Some(path) = &args.search_problems {
        let problems = qstar_tasks::read_problems(path, qstar_tasks::Task::Gsm8k, Some(10))
            .map_err(|e| crate::UsageError(e.to_string()))?;
        engine.set_prefix_cache(false).await;
        let uncached = search_workload(&engine, &problems).await?;
        engine.set_prefix_cache(true).await;
        let cached = search_workload(&engine, &problems).await?;
        report_search = Some((cached, uncached));
    }
    let rss = peak_rss_mb();

    let mut report = json!({
        "model": model_path.display().to_string(),
        "threads": threads,
        "kernel": Kernel::detect().name(),
        "runs": args.runs,
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
    if let Some(dir) = &backend.adapter {
        report["adapter"] = json!(dir.display().to_string());
    }
    if let Some((cached, uncached)) = report_label {
        report["label_pairs_per_s_cached"] = json!(cached);
        report["label_pairs_per_s_uncached"] = json!(uncached);
        report["label_cache_speedup"] = json!(cached / uncached);
    }
    if let Some(((t_on, c_on, ok_on), (t_off, c_off, ok_off))) = report_search {
        report["search"] = json!({
            "cached_s": t_on,
            "uncached_s": t_off,
            "speedup": t_off / t_on,
            "prompt_tokens_computed_cached": c_on.prompt_tokens_computed,
            "prompt_tokens_computed_uncached": c_off.prompt_tokens_computed,
            "prompt_tokens_reused_cached": c_on.prompt_tokens_reused,
            "prompt_token_saving": c_off.prompt_tokens_computed as f64 / c_on.prompt_tokens_computed.max(1) as f64,
            "tokens_generated_cached": c_on.tokens_generated,
            "tokens_generated_uncached": c_off.tokens_generated,
            "correct_cached": ok_on,
            "correct_uncached": ok_off,
        });
    }
    if let Some(server) = report_server {
        report["label_pairs_per_s_llama_server"] = json!(server);
    }
    report["samples"] = json!({
        "prefill_tok_s": ours.prefill,
        "decode_tok_s": ours.decode,
        "batch8_decode_tok_s": ours.batch8,
    });
    if let (Some(bin), Some(rounds)) = (&peer, theirs) {
        let (pp, tg) = (median(&rounds.prefill), median(&rounds.decode));
        report["llamacpp"] = json!({
            "prefill_tok_s": pp,
            "decode_tok_s": tg,
            "samples": {"prefill_tok_s": rounds.prefill, "decode_tok_s": rounds.decode},
            "build_commit": rounds.build_commit,
            "build_number": rounds.build_number,
            "build_info": build_info(bin),
            "cpu_info": rounds.cpu_info,
        });
        report["ratio_prefill"] = json!(prefill_tok_s / pp);
        report["ratio_decode"] = json!(decode_tok_s / tg);
    }
    reporter.summary_pretty(&report, &table_text(&report))
}

/// The report as a Markdown table and the lines about the kernel and the
/// peer's build.
fn table_text(r: &Value) -> Text {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let peer = &r["llamacpp"];
    let mut t = Text::new();
    t = t.line("| workload | qstar | llama.cpp | ratio |");
    t = t.line("| --- | ---: | ---: | ---: |");
    t = t.line(format!(
        "| prefill, 256-token prompt (tok/s) | {} | {} | {} |",
        f(&r["prefill_tok_s"]),
        f(&peer["prefill_tok_s"]),
        r["ratio_prefill"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.2}×"))
    ));
    t = t.line(format!(
        "| decode, 1 sequence (tok/s) | {} | {} | {} |",
        f(&r["decode_tok_s"]),
        f(&peer["decode_tok_s"]),
        r["ratio_decode"]
            .as_f64()
            .map_or("-".into(), |x| format!("{x:.2}×"))
    ));
    t = t.line(format!(
        "| decode, 8 sequences (tok/s) | {} | | |",
        f(&r["batch8_decode_tok_s"])
    ));
    t = t.line(format!(
        "| shared-prefix choose ×64, cache off (s) | {:.2} | | |",
        r["prefix_workload_uncached_s"].as_f64().unwrap_or(0.0)
    ));
    t = t.line(format!(
        "| shared-prefix choose ×64, cache on (s) | {:.2} | | {:.2}× faster |",
        r["prefix_workload_cached_s"].as_f64().unwrap_or(0.0),
        r["prefix_workload_speedup"].as_f64().unwrap_or(0.0)
    ));
    if r["label_pairs_per_s_cached"].is_number() {
        t = t.line(format!(
            "| CAI labeling, 100 pairs × 4 principles × 2 orders, cache off (pairs/s) | {} | | |",
            f(&r["label_pairs_per_s_uncached"])
        ));
        t = t.line(format!(
            "| CAI labeling, cache on (pairs/s) | {} | {} (llama-server) | {:.2}× faster |",
            f(&r["label_pairs_per_s_cached"]),
            f(&r["label_pairs_per_s_llama_server"]),
            r["label_cache_speedup"].as_f64().unwrap_or(0.0)
        ));
    }
    let search = &r["search"];
    if search.is_object() {
        t = t.line(format!(
            "| beam search N=16 + PRM, 10 GSM8K questions, cache off (s) | {:.1} | | {} prompt tokens computed |",
            search["uncached_s"].as_f64().unwrap_or(0.0),
            search["prompt_tokens_computed_uncached"]
        ));
        t = t.line(format!(
            "| beam search, cache on (s) | {:.1} | | {:.2}× faster, {} prompt tokens computed ({:.1}× fewer) |",
            search["cached_s"].as_f64().unwrap_or(0.0),
            search["speedup"].as_f64().unwrap_or(0.0),
            search["prompt_tokens_computed_cached"],
            search["prompt_token_saving"].as_f64().unwrap_or(0.0)
        ));
    }
    t = t.line(format!("| peak RSS (MB) | {} | | |", f(&r["peak_rss_mb"])));
    t = t.line("");
    t = t.line(format!(
        "kernel: {}; {} threads; prefill and decode figures are medians of {} rounds, qstar and llama-bench taking turns",
        r["kernel"].as_str().unwrap_or("-"),
        r["threads"],
        r["runs"]
    ));
    if peer.is_object() {
        let commit = peer["build_commit"].as_str().unwrap_or("unknown");
        let number = peer["build_number"]
            .as_u64()
            .map_or("-".into(), |n| n.to_string());
        t = t.line(format!(
            "llama.cpp: build {number}, commit {commit}, CPU {}",
            peer["cpu_info"].as_str().unwrap_or("-")
        ));
        for line in peer["build_info"].as_array().into_iter().flatten() {
            t = t.line(format!("  {}", line.as_str().unwrap_or_default()));
        }
    }
    t
}

/// qstar's figure of each round, in tok/s.
#[derive(Default)]
struct Rounds {
    prefill: Vec<f64>,
    decode: Vec<f64>,
    batch8: Vec<f64>,
}

/// llama-bench's figure of each call, and what it says about its build.
#[derive(Default)]
struct PeerRounds {
    prefill: Vec<f64>,
    decode: Vec<f64>,
    build_commit: Option<String>,
    build_number: Option<u64>,
    cpu_info: Option<String>,
}

/// One `llama-bench -r 1` call: pp256 and tg128 in tok/s.
struct PeerRun {
    pp: f64,
    tg: f64,
    build_commit: Option<String>,
    build_number: Option<u64>,
    cpu_info: Option<String>,
}

impl PeerRounds {
    fn push(&mut self, run: PeerRun) {
        self.prefill.push(run.pp);
        self.decode.push(run.tg);
        self.build_commit = run.build_commit.or(self.build_commit.take());
        self.build_number = run.build_number.or(self.build_number);
        self.cpu_info = run.cpu_info.or(self.cpu_info.take());
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs llama.cpp's own benchmark once (pp256 and tg128, one repetition
/// each after its warm-up) on the same model with the same threads.
fn llama_bench(bin: &std::path::Path, model: &str, threads: usize) -> Result<PeerRun> {
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
            "-r",
            "1",
            "-o",
            "json",
        ])
        .output()
        .context("running llama-bench")?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_llama_bench(&out.stdout)
}

/// Reads pp256 and tg128 (and the build fields) from llama-bench's JSON.
fn parse_llama_bench(stdout: &[u8]) -> Result<PeerRun> {
    let rows: Vec<Value> = serde_json::from_slice(stdout).context("llama-bench JSON")?;
    let mut pp = None;
    let mut tg = None;
    for row in &rows {
        let ts = row["avg_ts"].as_f64();
        if row["n_prompt"].as_u64() == Some(256) && row["n_gen"].as_u64() == Some(0) {
            pp = ts;
        }
        if row["n_gen"].as_u64() == Some(128) && row["n_prompt"].as_u64() == Some(0) {
            tg = ts;
        }
    }
    let field = |key: &str| rows.first().and_then(|r| r[key].as_str()).map(String::from);
    match (pp, tg) {
        (Some(pp), Some(tg)) => Ok(PeerRun {
            pp,
            tg,
            build_commit: field("build_commit"),
            build_number: rows.first().and_then(|r| r["build_number"].as_u64()),
            cpu_info: field("cpu_info"),
        }),
        _ => anyhow::bail!("llama-bench output lacks pp256/tg128 rows"),
    }
}

/// The BUILD-INFO lines `scripts/build-llama-cpp` writes beside the binary
/// (version, CMake flags, compiler), when they are there.
pub(crate) fn build_info(bin: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(bin.parent()?.join("BUILD-INFO")).ok()?;
    Some(text.lines().map(str::to_string).collect())
}

pub(crate) fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A server backend that borrows the embedded model's chat template, so
/// prompts rendered for the embedded engine can be sent to the server as-is.
struct RenderedChat<'a> {
    inner: &'a qstar_openai::OpenAiBackend,
    engine: &'a Engine,
}

#[async_trait::async_trait]
impl LanguageModel for RenderedChat<'_> {
    fn backend_name(&self) -> String {
        self.inner.backend_name()
    }
    fn capabilities(&self) -> qstar_core::Capabilities {
        qstar_core::Capabilities {
            chat_template: true,
            ..self.inner.capabilities()
        }
    }
    async fn generate(
        &self,
        r: Vec<GenerateRequest>,
    ) -> Result<Vec<qstar_core::GenerateResponse>, qstar_core::ModelError> {
        self.inner.generate(r).await
    }
    async fn score(
        &self,
        r: Vec<qstar_core::ScoreRequest>,
    ) -> Result<Vec<qstar_core::ScoreResponse>, qstar_core::ModelError> {
        self.inner.score(r).await
    }
    async fn choose(
        &self,
        r: Vec<ChooseRequest>,
    ) -> Result<Vec<qstar_core::ChooseResponse>, qstar_core::ModelError> {
        self.inner.choose(r).await
    }
    fn render_chat(
        &self,
        m: &[qstar_core::Message],
        add: bool,
    ) -> Result<String, qstar_core::ModelError> {
        self.engine.render_chat(m, add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_one_bench_has_always_printed() {
        // The figures of a `qstar bench --runs 1 --no-peer` run and, below,
        // what that run printed.
        let report = json!({
            "prefill_tok_s": 96.71, "decode_tok_s": 31.62, "batch8_decode_tok_s": 87.46,
            "prefix_workload_uncached_s": 259.0, "prefix_workload_cached_s": 29.9,
            "prefix_workload_speedup": 8.662, "peak_rss_mb": 733.9,
            "kernel": "avx2", "threads": 2, "runs": 1,
        });
        let printed = "\
| workload | qstar | llama.cpp | ratio |
| --- | ---: | ---: | ---: |
| prefill, 256-token prompt (tok/s) | 96.7 | - | - |
| decode, 1 sequence (tok/s) | 31.6 | - | - |
| decode, 8 sequences (tok/s) | 87.5 | | |
| shared-prefix choose ×64, cache off (s) | 259.00 | | |
| shared-prefix choose ×64, cache on (s) | 29.90 | | 8.66× faster |
| peak RSS (MB) | 733.9 | | |

kernel: avx2; 2 threads; prefill and decode figures are medians of 1 rounds, qstar and llama-bench taking turns";
        assert_eq!(table_text(&report).lines().join("\n"), printed);
    }

    #[test]
    fn the_table_has_the_peer_labeling_and_search_rows_when_they_ran() {
        let report = json!({
            "prefill_tok_s": 390.0, "decode_tok_s": 149.0, "batch8_decode_tok_s": 500.0,
            "prefix_workload_uncached_s": 10.0, "prefix_workload_cached_s": 2.0,
            "prefix_workload_speedup": 5.0, "peak_rss_mb": 700.0,
            "kernel": "avx512vnni", "threads": 2, "runs": 5,
            "ratio_prefill": 1.345, "ratio_decode": 1.12,
            "label_pairs_per_s_uncached": 0.132, "label_pairs_per_s_cached": 0.384,
            "label_pairs_per_s_llama_server": 0.159, "label_cache_speedup": 2.909,
            "search": {"uncached_s": 80.0, "cached_s": 20.0, "speedup": 4.0,
                       "prompt_tokens_computed_uncached": 9000,
                       "prompt_tokens_computed_cached": 1000, "prompt_token_saving": 9.0},
            "llamacpp": {"prefill_tok_s": 290.0, "decode_tok_s": 133.0,
                         "build_commit": "abc123", "build_number": 42,
                         "cpu_info": "EPYC", "build_info": ["GGML_NATIVE=ON"]},
        });
        let text = table_text(&report);
        let lines = text.lines();
        assert_eq!(
            lines[2],
            "| prefill, 256-token prompt (tok/s) | 390.0 | 290.0 | 1.34× |"
        );
        assert_eq!(
            lines[3],
            "| decode, 1 sequence (tok/s) | 149.0 | 133.0 | 1.12× |"
        );
        assert_eq!(
            lines[8],
            "| CAI labeling, cache on (pairs/s) | 0.4 | 0.2 (llama-server) | 2.91× faster |"
        );
        assert_eq!(
            lines[10],
            "| beam search, cache on (s) | 20.0 | | 4.00× faster, 1000 prompt tokens computed (9.0× fewer) |"
        );
        assert_eq!(
            &lines[lines.len() - 2..],
            [
                "llama.cpp: build 42, commit abc123, CPU EPYC",
                "  GGML_NATIVE=ON"
            ]
        );
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
