//! `qstar bench train`: tokens per second of a training step (forward,
//! backward, clipping and AdamW) on the default model, full fine-tuning and
//! LoRA (rank 8 on all seven projections), with peak memory; and PyTorch's
//! (Hugging Face transformers `LlamaForCausalLM` of the same shape, PEFT for
//! LoRA) on the same batch and threads in the same run, when it is
//! installed. Every measurement runs in a process of its own, so each peak
//! RSS is its own; qstar and PyTorch take turns, and each figure is the
//! median of the runs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::{Args, ValueEnum};
use qstar_train::optim::{AdamW, AdamWConfig};
use qstar_train::rng::SplitMix;
use qstar_train::run::{accumulate, decay_mask, trainable_sizes, update};
use qstar_train::{Lora, LoraConfig, Model, Sequence, Trainable, Weights};
use serde_json::{json, Value};

use crate::bench::{median, peak_rss_mb};
use crate::report::{Align, Reporter, Text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Full,
    Lora,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Lora => "lora",
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Rounds; each runs every measurement once, qstar then PyTorch.
    #[arg(long, default_value_t = 3, value_parser = crate::bounded(1, 100))]
    pub runs: usize,
    /// Timed steps per measurement (after the warm-up steps).
    #[arg(long, default_value_t = 3, value_parser = crate::bounded(1, 1000))]
    pub steps: usize,
    #[arg(long, default_value_t = 1, value_parser = crate::bounded(0, 1000))]
    pub warmup: usize,
    /// Batch shapes as SEQUENCESxTOKENS.
    #[arg(long, default_value = "4x64,1x512", value_delimiter = ',')]
    pub shapes: Vec<String>,
    #[arg(long, value_enum, default_values_t = [Mode::Full, Mode::Lora], value_delimiter = ',')]
    pub modes: Vec<Mode>,
    #[arg(long, default_value_t = 2, value_parser = crate::bounded(1, 256))]
    pub threads: usize,
    /// Skip PyTorch even when it is installed.
    #[arg(long)]
    pub no_peer: bool,
    #[arg(long)]
    pub json: bool,
    /// Run one measurement in this process and print it (used by the bench itself).
    #[arg(long, hide = true, value_enum)]
    pub worker: Option<Mode>,
    #[arg(long, hide = true, default_value = "4x64")]
    pub shape: String,
}

/// (shape, mode, side) → (tokens/s, peak RSS MB) of each run.
type Samples<'a> = std::collections::BTreeMap<(String, &'a str, &'a str), Vec<(f64, f64)>>;

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let bad = || {
        anyhow!(crate::UsageError(format!(
            "a shape is SEQUENCESxTOKENS, like 4x64, not {s:?}"
        )))
    };
    let (b, l) = s.split_once('x').ok_or_else(bad)?;
    let (b, l): (usize, usize) = (b.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?);
    if b == 0 || l < 2 || b * l > 1 << 16 {
        return Err(bad());
    }
    Ok((b, l))
}

/// The kernel the f32 products run on (the GEMM crate picks it at run time).
fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "gemm f32 avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "gemm f32 avx2+fma";
        }
    }
    "gemm f32 portable"
}

/// One measurement: `steps` timed training steps after `warmup` ones.
fn worker(args: &BenchTrainArgs, mode: Mode, model_path: &std::path::Path) -> Result<Value> {
    let (batch, len) = parse_shape(&args.shape)?;
    let (config, weights) = Weights::from_gguf(model_path)?;
    let lora = match mode {
        Mode::Full => None,
        Mode::Lora => Some(
            Lora::init(
                &config,
                LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    dropout: 0.0,
                    targets: qstar_engine::adapter::Projection::ALL
                        .map(|p| p.hf_name().to_string())
                        .to_vec(),
                },
                0,
            )
            .map_err(|e| anyhow!(e))?,
        ),
    };
    let trainable = if mode == Mode::Full {
        Trainable::Full
    } else {
        Trainable::Lora
    };
    let mut model = Model::new(config.clone(), weights, lora).map_err(|e| anyhow!(e))?;
    let mut grads = model.grads(trainable);
    let sizes = trainable_sizes(&mut model, trainable);
    let decay = decay_mask(&mut model, trainable);
    let mut optimizer = AdamW::new(AdamWConfig::default(), &sizes);
    let mut rng = SplitMix::new(7);
    let mut times = Vec::new();
    for step in 0..args.warmup + args.steps {
        let seqs: Vec<Sequence> = (0..batch)
            .map(|_| Sequence::all((0..len).map(|_| rng.below(config.n_vocab) as u32).collect()))
            .collect();
        let predicted: usize = seqs.iter().map(Sequence::predicted).sum();
        let t = Instant::now();
        grads.fill_zero();
        accumulate(&model, &mut grads, &seqs, predicted, step as u64)?;
        update(
            &mut model,
            trainable,
            &mut grads,
            &mut optimizer,
            &decay,
            1e-5,
            1.0,
        );
        if step >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let step_s = median(&times);
    Ok(json!({
        "mode": mode.name(),
        "batch": batch,
        "seq_len": len,
        "tok_s": (batch * len) as f64 / step_s,
        "step_s_median": step_s,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

fn json_of(out: std::process::Output, what: &str) -> Result<Value> {
    if !out.status.success() {
        return Err(anyhow!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{what} printed no JSON line"))
}

/// The PyTorch script beside the binary's sources, or in the working directory.
fn torch_script() -> Option<PathBuf> {
    let candidates = [
        std::env::var("QSTAR_TORCH_BENCH").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench-train-torch.py")),
        Some(PathBuf::from("scripts/bench-train-torch.py")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

fn torch_python() -> String {
    std::env::var("QSTAR_TORCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub async fn run(args: BenchTrainArgs, model: Option<PathBuf>) -> Result<()> {
    let model_path = match &model {
        Some(p) => p.clone(),
        None => {
            let p = qstar_engine::fetch::default_model_path();
            if !p.exists() {
                qstar_engine::fetch::fetch_default(&|_, _| {}).await?;
            }
            p
        }
    };
    if let Some(mode) = args.worker {
        let figures =
            tokio::task::spawn_blocking(move || worker(&args, mode, &model_path)).await??;
        // The figures go to the process that started this worker.
        return Reporter::new(false).data(&Text::new().line(figures.to_string()));
    }
    let reporter = Reporter::new(args.json);
    let shapes: Vec<(String, (usize, usize))> = args
        .shapes
        .iter()
        .map(|s| parse_shape(s).map(|p| (s.clone(), p)))
        .collect::<Result<_>>()?;
    let script = if args.no_peer { None } else { torch_script() };
    let mut peer = script.is_some();
    let exe = std::env::current_exe().context("cannot find the qstar binary")?;
    // (shape, mode, side) → samples of tok/s and peak RSS.
    let mut samples: Samples = Default::default();
    let mut torch_versions = Value::Null;
    for round in 0..args.runs {
        for (name, _) in &shapes {
            for &mode in &args.modes {
                reporter.note(&format!(
                    "round {}/{}: {name} {} (qstar)",
                    round + 1,
                    args.runs,
                    mode.name()
                ));
                let out = Command::new(&exe)
                    .args(["bench", "train", "--worker", mode.name(), "--shape", name])
                    .args([
                        "--steps",
                        &args.steps.to_string(),
                        "--warmup",
                        &args.warmup.to_string(),
                    ])
                    .arg("--model")
                    .arg(&model_path)
                    .env("RAYON_NUM_THREADS", args.threads.to_string())
                    .output()
                    .context("cannot run the qstar worker")?;
                let v = json_of(out, "the qstar measurement")?;
                let tok_s = v["tok_s"].as_f64().unwrap_or(f64::NAN);
                let rss = v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
                samples
                    .entry((name.clone(), mode.name(), "qstar"))
                    .or_default()
                    .push((tok_s, rss));
                let Some(script) = script.as_ref().filter(|_| peer) else {
                    continue;
                };
                reporter.note(&format!(
                    "round {}/{}: {name} {} (PyTorch)",
                    round + 1,
                    args.runs,
                    mode.name()
                ));
                let (b, l) = parse_shape(name)?;
                let out = Command::new(torch_python())
                    .arg(script)
                    .args([
                        "--batch",
                        &b.to_string(),
                        "--seq-len",
                        &l.to_string(),
                        "--mode",
                        mode.name(),
                    ])
                    .args([
                        "--threads",
                        &args.threads.to_string(),
                        "--steps",
                        &args.steps.to_string(),
                    ])
                    .args(["--warmup", &args.warmup.to_string(), "--json"])
                    .output();
                match out {
                    Ok(o)
                        if o.status.code() == Some(3)
                            || o.status.code().is_none() && !o.status.success() =>
                    {
                        reporter.note(&format!(
                            "PyTorch is not installed ({}); qstar alone",
                            String::from_utf8_lossy(&o.stderr).trim()
                        ));
                        peer = false;
                    }
                    Ok(o) => {
                        let v = json_of(o, "the PyTorch measurement")?;
                        torch_versions = json!({"torch": v["torch"], "transformers": v["transformers"], "peft": v["peft"]});
                        let tok_s = v["tok_s"].as_f64().unwrap_or(f64::NAN);
                        let rss = v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
                        samples
                            .entry((name.clone(), mode.name(), "torch"))
                            .or_default()
                            .push((tok_s, rss));
                    }
                    Err(e) => {
                        reporter.note(&format!("cannot run {}: {e}; qstar alone", torch_python()));
                        peer = false;
                    }
                }
            }
        }
    }
    let med = |k: &(String, &str, &str), i: usize| {
        samples.get(k).map(|v| {
            median(
                &v.iter()
                    .map(|s| if i == 0 { s.0 } else { s.1 })
                    .collect::<Vec<_>>(),
            )
        })
    };
    let mut rows = Vec::new();
    let mut by_shape = serde_json::Map::new();
    for (name, _) in &shapes {
        let mut entry = serde_json::Map::new();
        for &mode in &args.modes {
            let q = (name.clone(), mode.name(), "qstar");
            let t = (name.clone(), mode.name(), "torch");
            let (qt, qr, tt, tr) = (med(&q, 0), med(&q, 1), med(&t, 0), med(&t, 1));
            let ratio = qt.zip(tt).map(|(a, b)| a / b);
            entry.insert(
                mode.name().into(),
                json!({"tok_s": qt, "peak_rss_mb": qr, "torch_tok_s": tt, "torch_peak_rss_mb": tr, "ratio": ratio,
                       "samples": samples.get(&q).map(|v| v.iter().map(|s| s.0).collect::<Vec<_>>()),
                       "torch_samples": samples.get(&t).map(|v| v.iter().map(|s| s.0).collect::<Vec<_>>())}),
            );
            let f = |x: Option<f64>, d: usize| x.map_or("–".into(), |v| format!("{v:.d$}"));
            rows.push(vec![
                name.clone(),
                mode.name().into(),
                f(qt, 1),
                f(tt, 1),
                ratio.map_or("–".into(), |r| format!("{r:.2}×")),
                f(qr, 0),
                f(tr, 0),
            ]);
        }
        by_shape.insert(name.clone(), Value::Object(entry));
    }
    // The headline keys are the 4 × 64 batch's.
    let head = by_shape.get("4x64").cloned().unwrap_or(Value::Null);
    let pick = |mode: &str, key: &str| {
        head.get(mode)
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let torch_rss = pick("lora", "torch_peak_rss_mb");
    let figures = json!({
        "kernel": kernel(),
        "threads": args.threads,
        "runs": args.runs,
        "steps": args.steps,
        "full": {"tok_s": pick("full", "tok_s"), "peak_rss_mb": pick("full", "peak_rss_mb")},
        "lora": {"tok_s": pick("lora", "tok_s"), "peak_rss_mb": pick("lora", "peak_rss_mb")},
        "torch": if samples.keys().any(|k| k.2 == "torch") {
            json!({"full": {"tok_s": pick("full", "torch_tok_s"), "peak_rss_mb": pick("full", "torch_peak_rss_mb")},
                   "lora": {"tok_s": pick("lora", "torch_tok_s"), "peak_rss_mb": torch_rss},
                   "peak_rss_mb": torch_rss,
                   "versions": torch_versions})
        } else {
            Value::Null
        },
        "shapes": by_shape,
    });
    let text = Text::new()
        .line(format!(
            "training step (forward + backward + AdamW), {} threads, {}; median of {} runs × {} steps",
            args.threads,
            kernel(),
            args.runs,
            args.steps
        ))
        .table(
            &["batch", "mode", "qstar tok/s", "PyTorch tok/s", "ratio", "qstar RSS MB", "PyTorch RSS MB"],
            &[Align::Left, Align::Left, Align::Right, Align::Right, Align::Right, Align::Right, Align::Right],
            &rows,
        );
    reporter.summary(&figures, &text)
}
