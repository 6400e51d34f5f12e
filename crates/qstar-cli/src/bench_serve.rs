//! `qstar bench serve`: a bounded load generator for OpenAI-compatible
//! servers. C clients each send R completion requests one after another
//! (fixed-length answers: `ignore_eos`), with prompts that share a long
//! instruction or that share nothing. Against `qstar serve` (given by URL,
//! or started here) and, in the same run, llama-server on the same model
//! with one slot per client, the two taking turns level by level; every
//! figure is the median over the rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{json, Value};

use crate::bench::median;
use crate::report::{Align, Reporter, Text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptSet {
    /// Every prompt starts with the same long instruction.
    Shared,
    /// No two prompts share more than the first token.
    Distinct,
}

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// The server to load; without it, `qstar serve` is started here on
    /// `--model` with `--threads`.
    #[arg(long)]
    base_url: Option<String>,
    /// GGUF model (for the server started here and for llama-server;
    /// default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent clients, one level after another.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',',
          value_parser = crate::bounded(1, 64))]
    concurrency: Vec<usize>,
    /// Requests each client sends, one after another.
    #[arg(long, default_value_t = 4, value_parser = crate::bounded(1, 1000))]
    requests_per_client: usize,
    /// Tokens generated per request (the end-of-generation token is ignored).
    #[arg(long, default_value_t = 32, value_parser = crate::bounded(1, 1024))]
    max_tokens: usize,
    #[arg(long, value_enum, default_values_t = [PromptSet::Shared, PromptSet::Distinct],
          value_delimiter = ',')]
    prompts: Vec<PromptSet>,
    /// Rounds; each runs every level on qstar, then on llama-server.
    #[arg(long, default_value_t = 3, value_parser = crate::bounded(1, 100))]
    runs: usize,
    /// Threads of the servers started here.
    #[arg(long, default_value_t = 2, value_parser = crate::bounded(1, 256))]
    threads: usize,
    /// `--max-queue` of the qstar server started here: more clients than
    /// this are answered 429, which the table counts.
    #[arg(long, default_value_t = 32, value_parser = crate::bounded(1, 4096))]
    max_queue: usize,
    /// Skip llama-server even when it is on PATH.
    #[arg(long)]
    no_peer: bool,
    /// The llama-server binary (default: llama-server on PATH).
    #[arg(long)]
    peer_bin: Option<PathBuf>,
    /// Context per llama-server slot, in tokens.
    #[arg(long, default_value_t = 1024, value_parser = crate::bounded(128, 1 << 20))]
    peer_slot_context: usize,
    #[arg(long)]
    json: bool,
}

/// What one load run measured.
#[derive(Debug, Clone, Default, Serialize)]
struct LoadRun {
    requests_per_s: f64,
    generated_tok_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: usize,
    /// Tokens generated in the answered requests.
    tokens: usize,
    status_5xx: usize,
    status_429: usize,
    /// Other failures: connection errors, 4xx other than 429, bad bodies.
    other_errors: usize,
}

/// A server process started for the bench, killed when dropped.
struct Started {
    child: Child,
    url: String,
}

impl Started {
    /// The server's peak resident memory so far, in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        crate::bench::peak_rss_mb_of(&self.child.id().to_string())
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

async fn wait_healthy(client: &reqwest::Client, started: &mut Started, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some(status) = started.child.try_wait()? {
            bail!("{what} exited before it was ready ({status})");
        }
        let health = client.get(format!("{}/health", started.url)).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what} was not ready after 300 s")
}

async fn start(
    client: &reqwest::Client,
    mut cmd: Command,
    port: u16,
    what: &str,
) -> Result<Started> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut started = Started {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_healthy(client, &mut started, what).await?;
    Ok(started)
}

async fn start_qstar(
    client: &reqwest::Client,
    args: &BenchServeArgs,
    model: &Path,
) -> Result<Started> {
    let port = free_port()?;
    let mut cmd = Command::new(std::env::current_exe().context("the qstar binary")?);
    cmd.arg("serve")
        .arg("--model")
        .arg(model)
        .args(["--port", &port.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--max-queue", &args.max_queue.to_string()]);
    start(client, cmd, port, "qstar serve").await
}

async fn start_llama_server(
    client: &reqwest::Client,
    bin: &Path,
    args: &BenchServeArgs,
    model: &Path,
    slots: usize,
) -> Result<Started> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg("-m")
        .arg(model)
        .args(["--port", &port.to_string()])
        .args(["-t", &args.threads.to_string()])
        .args(["-np", &slots.to_string()])
        .args(["-c", &(slots * args.peer_slot_context).to_string()]);
    start(client, cmd, port, "llama-server").await
}

/// The shared instruction: long enough (a few hundred tokens) that sharing
/// it is most of a prompt's work.
fn shared_instruction() -> String {
    let mut s = String::from(
        "You are a careful assistant. Answer the question below in one short \
         paragraph. Follow these rules:\n",
    );
    for i in 1..=24 {
        s.push_str(&format!(
            "Rule {i}: state facts plainly, check every number twice, and say so when \
             you do not know.\n"
        ));
    }
    s
}

/// Prompt `k` of a set: the shared instruction and a short question of its
/// own, or a question of its own alone, made from a seeded word list so no
/// two share more than a token.
fn prompt(set: PromptSet, k: usize, shared: &str) -> String {
    const WORDS: [&str; 16] = [
        "river", "copper", "lantern", "orchid", "glacier", "violin", "harbor", "meadow", "falcon",
        "pepper", "saddle", "comet", "walnut", "quarry", "tundra", "marble",
    ];
    let mut state = qstar_core::mix(k as u64 + 1);
    let mut words = Vec::new();
    for _ in 0..40 {
        state = qstar_core::mix(state);
        words.push(WORDS[(state % WORDS.len() as u64) as usize]);
    }
    let question = format!("Question {k}: write about {}.", words.join(" "));
    match set {
        PromptSet::Shared => format!("{shared}\n{question}"),
        PromptSet::Distinct => question,
    }
}

/// One level: `clients` tasks, each sending its requests in turn.
async fn load(
    client: &reqwest::Client,
    url: &str,
    set: PromptSet,
    clients: usize,
    args: &BenchServeArgs,
    round: usize,
) -> LoadRun {
    let shared = shared_instruction();
    let began = Instant::now();
    let tasks = (0..clients).map(|c| {
        let shared = shared.clone();
        async move {
            let mut out = Vec::new();
            for r in 0..args.requests_per_client {
                // A fresh prompt every request and round, so no server
                // answers from a cache of an earlier identical request.
                let k = (round * 64 + c) * args.requests_per_client + r;
                let body = json!({
                    "model": "bench",
                    "prompt": prompt(set, k, &shared),
                    "max_tokens": args.max_tokens,
                    "temperature": 0.0,
                    "ignore_eos": true,
                });
                let t = Instant::now();
                let sent = client
                    .post(format!("{url}/v1/completions"))
                    .json(&body)
                    .send()
                    .await;
                let outcome = match sent {
                    Err(_) => Outcome::Other,
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: Option<Value> = r.json().await.ok();
                        match (status, v) {
                            (200, Some(v)) => v["usage"]["completion_tokens"]
                                .as_u64()
                                .map_or(Outcome::Other, |n| Outcome::Ok(n as usize)),
                            (429, _) => Outcome::Busy,
                            (s, _) if s >= 500 => Outcome::ServerError,
                            _ => Outcome::Other,
                        }
                    }
                };
                out.push((t.elapsed().as_secs_f64() * 1e3, outcome));
            }
            out
        }
    });
    let results: Vec<(f64, Outcome)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let wall = began.elapsed().as_secs_f64();
    let mut run = LoadRun::default();
    let mut latencies = Vec::new();
    let mut tokens = 0;
    for (ms, o) in &results {
        match o {
            Outcome::Ok(n) => {
                run.ok += 1;
                tokens += n;
                latencies.push(*ms);
            }
            Outcome::Busy => run.status_429 += 1,
            Outcome::ServerError => run.status_5xx += 1,
            Outcome::Other => run.other_errors += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() - 1) as f64 * q).round() as usize]
        }
    };
    run.p50_ms = pick(0.5);
    run.p99_ms = pick(0.99);
    run.tokens = tokens;
    run.requests_per_s = run.ok as f64 / wall;
    run.generated_tok_s = tokens as f64 / wall;
    run
}

enum Outcome {
    Ok(usize),
    Busy,
    ServerError,
    Other,
}

/// The medians of a level's rounds (counts are summed: every error counts).
fn summarize(runs: &[LoadRun]) -> Value {
    let m = |f: fn(&LoadRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let sum = |f: fn(&LoadRun) -> usize| runs.iter().map(f).sum::<usize>();
    json!({
        "requests_per_s": m(|r| r.requests_per_s),
        "generated_tok_s": m(|r| r.generated_tok_s),
        "p50_ms": m(|r| r.p50_ms),
        "p99_ms": m(|r| r.p99_ms),
        "ok": sum(|r| r.ok),
        "tokens": sum(|r| r.tokens),
        "status_5xx": sum(|r| r.status_5xx),
        "status_429": sum(|r| r.status_429),
        "other_errors": sum(|r| r.other_errors),
        "rounds": runs,
    })
}

fn peer_bin(args: &BenchServeArgs) -> Option<PathBuf> {
    if args.no_peer {
        return None;
    }
    args.peer_bin
        .clone()
        .or_else(|| crate::bench::which("llama-server"))
}

pub async fn run(args: BenchServeArgs) -> Result<()> {
    let reporter = Reporter::new(args.json);
    let model = args
        .model
        .clone()
        .unwrap_or_else(qstar_engine::fetch::default_model_path);
    let needs_model = args.base_url.is_none() || peer_bin(&args).is_some();
    if needs_model && !model.exists() {
        return Err(crate::UsageError(format!(
            "{}: no such model file (run `qstar model fetch`)",
            model.display()
        ))
        .into());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .timeout(Duration::from_secs(600))
        .build()
        .context("the HTTP client")?;
    // The server under load: the one given by URL, or one started here.
    let (own, url) = match &args.base_url {
        Some(u) => (None, u.trim_end_matches('/').to_string()),
        None => {
            let started = start_qstar(&client, &args, &model).await?;
            let url = started.url.clone();
            (Some(started), url)
        }
    };
    let peer = peer_bin(&args);
    if peer.is_none() && !args.no_peer {
        reporter.note("llama-server is not on PATH: measuring qstar alone");
    }
    // (prompt set, concurrency) → rounds, for each side.
    let levels: Vec<(PromptSet, usize)> = args
        .prompts
        .iter()
        .flat_map(|&p| args.concurrency.iter().map(move |&c| (p, c)))
        .collect();
    let mut ours: Vec<Vec<LoadRun>> = vec![Vec::new(); levels.len()];
    let mut theirs: Vec<Vec<LoadRun>> = vec![Vec::new(); levels.len()];
    // llama-server's peak memory per level (the largest of its rounds; it
    // is started afresh for each).
    let mut their_rss: Vec<Option<f64>> = vec![None; levels.len()];
    let bar = reporter.progress(
        args.runs * levels.len() * if peer.is_some() { 2 } else { 1 },
        0,
        "bench serve",
        "loads",
    );
    for round in 0..args.runs {
        for (i, &(set, c)) in levels.iter().enumerate() {
            ours[i].push(load(&client, &url, set, c, &args, round).await);
            bar.inc(1);
            if let Some(bin) = &peer {
                // One slot per client, as llama-server serves concurrency.
                let server = start_llama_server(&client, bin, &args, &model, c).await?;
                theirs[i].push(load(&client, &server.url, set, c, &args, round).await);
                if let Some(mb) = server.peak_rss_mb() {
                    their_rss[i] = Some(their_rss[i].map_or(mb, |m: f64| m.max(mb)));
                }
                drop(server);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let rows: Vec<Value> = levels
        .iter()
        .enumerate()
        .map(|(i, &(set, c))| {
            let q = summarize(&ours[i]);
            let p = (!theirs[i].is_empty()).then(|| {
                let mut p = summarize(&theirs[i]);
                p["peak_rss_mb"] = json!(their_rss[i]);
                p
            });
            let ratio = p.as_ref().and_then(|p| {
                let them = p["generated_tok_s"].as_f64()?;
                (them > 0.0).then(|| q["generated_tok_s"].as_f64().unwrap_or(0.0) / them)
            });
            json!({
                "prompts": set,
                "concurrency": c,
                "qstar": q,
                "llama_server": p,
                "ratio_generated_tok_s": ratio,
            })
        })
        .collect();
    let figures = json!({
        "base_url": args.base_url,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "runs": args.runs,
        "threads": args.threads,
        "peer": peer.as_ref().map(|p| p.display().to_string()),
        "peer_build": peer.as_deref().and_then(crate::bench::build_info),
        // One `qstar serve` serves every level: its peak over the whole run
        // (null when the bench was pointed at a server by URL).
        "qstar_peak_rss_mb": own.as_ref().and_then(Started::peak_rss_mb),
        "levels": rows,
    });
    reporter.summary(&figures, &table(&figures))
}

fn table(figures: &Value) -> Text {
    let f1 = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let f0 = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let mut rows = Vec::new();
    for l in figures["levels"].as_array().into_iter().flatten() {
        let q = &l["qstar"];
        let p = &l["llama_server"];
        rows.push(vec![
            l["prompts"].as_str().unwrap_or("").to_string(),
            l["concurrency"].to_string(),
            f1(&q["requests_per_s"]),
            f1(&q["generated_tok_s"]),
            f0(&q["p50_ms"]),
            f0(&q["p99_ms"]),
            format!("{}/{}", q["status_5xx"], q["status_429"]),
            f1(&p["generated_tok_s"]),
            f0(&p["p50_ms"]),
            if p.is_null() {
                "-".into()
            } else {
                format!("{}/{}", p["status_5xx"], p["status_429"])
            },
            l["ratio_generated_tok_s"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.2}×")),
        ]);
    }
    use Align::{Left, Right};
    let peak = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0} MB"));
    let their_peak = figures["levels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["llama_server"]["peak_rss_mb"].as_f64())
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    Text::new()
        .line(format!(
            "{} tokens per request, {} requests per client, median of {} rounds",
            figures["max_tokens"], figures["requests_per_client"], figures["runs"]
        ))
        .line(format!(
            "peak RSS: qstar serve {} over the run, llama-server {} (largest level)",
            peak(&figures["qstar_peak_rss_mb"]),
            peak(&json!(their_peak))
        ))
        .table(
            &[
                "prompts",
                "clients",
                "qstar req/s",
                "qstar gen tok/s",
                "p50 ms",
                "p99 ms",
                "5xx/429",
                "llama-server gen tok/s",
                "p50 ms",
                "5xx/429",
                "ratio",
            ],
            &[
                Left, Right, Right, Right, Right, Right, Right, Right, Right, Right, Right,
            ],
            &rows,
        )
}
