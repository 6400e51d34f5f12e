//! The model-level commands: fetch, info, generate, score, choose.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qstar_core::{ChooseRequest, GenerateRequest, Message, SamplingParams, ScoreRequest};
use serde_json::json;

use crate::backend::BackendArgs;
use crate::{bounded, non_empty, UsageError};

/// The most samples `generate` draws for one prompt.
pub const MAX_SAMPLES: usize = 256;

pub async fn model_fetch() -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let (path, downloaded) = qstar_engine::fetch::fetch_default(&progress).await?;
    bar.finish_and_clear();
    if downloaded {
        eprintln!("fetched the default model");
    } else {
        eprintln!("the default model is already in the cache and intact");
    }
    println!("{}", path.display());
    Ok(())
}

pub async fn model_info(backend: &BackendArgs, json: bool) -> Result<()> {
    let path = backend.ensure_model().await?;
    let model = qstar_engine::LoadedModel::load(&path)?;
    let info = &model.info;
    if json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(());
    }
    let c = &info.config;
    println!("path            {}", info.path);
    println!("name            {}", info.name.as_deref().unwrap_or("-"));
    println!("architecture    {}", info.architecture);
    println!("file size       {:.1} MB", info.file_bytes as f64 / 1e6);
    println!("parameters      {:.1} M", info.parameters as f64 / 1e6);
    println!(
        "quantization    {} (tensors: {:?})",
        info.quantization, info.tensor_types
    );
    println!(
        "layers          {} (width {}, {} heads, {} KV heads, FFN {})",
        c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff
    );
    println!("context length  {}", info.context_length);
    println!(
        "vocabulary      {} (pre-tokenizer {})",
        info.vocab_size, info.pre_tokenizer
    );
    let show = |t: &Option<qstar_engine::model::SpecialToken>| {
        t.as_ref()
            .map_or("-".to_string(), |t| format!("{} ({})", t.text, t.id))
    };
    println!(
        "BOS / EOS       {} / {} (add BOS: {})",
        show(&info.bos_token),
        show(&info.eos_token),
        info.add_bos_token
    );
    let specials: Vec<String> = info
        .special_tokens
        .iter()
        .map(|t| format!("{}={}", t.id, t.text))
        .collect();
    println!("special tokens  {}", specials.join(" "));
    println!(
        "chat template:\n{}",
        info.chat_template.as_deref().unwrap_or("(none)")
    );
    Ok(())
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    prompt: String,
    /// Send the prompt as one user message through the chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of samples (1 to 256).
    #[arg(long, default_value_t = 1, value_parser = bounded(1, MAX_SAMPLES))]
    n: usize,
    /// Stop before this string (repeatable; not empty).
    #[arg(long, value_parser = non_empty("--stop"))]
    stop: Vec<String>,
    #[arg(long)]
    json: bool,
}

pub async fn generate(args: GenerateArgs) -> Result<()> {
    let valid = args.temperature >= 0.0 && args.top_p > 0.0 && args.top_p <= 1.0;
    if !valid {
        return Err(UsageError("--temperature must be ≥ 0 and --top-p in (0, 1]".into()).into());
    }
    let model = args.backend.open().await?;
    let messages = args.chat.then(|| vec![Message::user(args.prompt.clone())]);
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        messages,
        n: args.n,
        params: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            max_tokens: args.max_tokens,
            stop: args.stop.clone(),
            ignore_eos: false,
        },
        top_logprobs: None,
    };
    let response = model
        .generate(vec![request])
        .await?
        .pop()
        .context("the backend returned no answer")?;
    if args.json {
        let completions: Vec<_> = response
            .completions
            .iter()
            .map(|c| json!({"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason}))
            .collect();
        println!(
            "{}",
            json!({"completions": completions, "usage": response.usage})
        );
    } else {
        for (i, c) in response.completions.iter().enumerate() {
            if response.completions.len() > 1 {
                println!("--- sample {i} ---");
            }
            println!("{}", c.text);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long)]
    continuation: String,
    #[arg(long)]
    json: bool,
}

pub async fn score(args: ScoreArgs) -> Result<()> {
    let model = args.backend.open().await?;
    let response = model
        .score(vec![ScoreRequest {
            prompt: args.prompt,
            continuation: args.continuation,
        }])
        .await?
        .pop()
        .context("the backend returned no answer")?;
    if args.json {
        let tokens: Vec<_> = response
            .tokens
            .iter()
            .map(|t| json!({"id": t.id, "text": t.text, "logprob": t.logprob}))
            .collect();
        println!(
            "{}",
            json!({"tokens": tokens, "total_logprob": response.total_logprob})
        );
    } else {
        for t in &response.tokens {
            let lp = t
                .logprob
                .map_or("    -   ".to_string(), |l| format!("{l:8.4}"));
            println!("{lp}  {:>6}  {:?}", t.id, t.text);
        }
        println!("total {:.4}", response.total_logprob);
    }
    Ok(())
}

#[derive(Args)]
pub struct ChooseArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long)]
    prompt: String,
    /// A candidate continuation (repeat for each).
    #[arg(long = "option")]
    options: Vec<String>,
    #[arg(long)]
    json: bool,
}

pub async fn choose(args: ChooseArgs) -> Result<()> {
    let request = ChooseRequest {
        prompt: args.prompt,
        options: args.options,
    };
    request.validate()?;
    let model = args.backend.open().await?;
    let response = model
        .choose(vec![request])
        .await?
        .pop()
        .context("the backend returned no answer")?;
    if args.json {
        let options: Vec<_> = response
            .options
            .iter()
            .map(|o| json!({"text": o.text, "logprob": o.logprob, "prob": o.prob}))
            .collect();
        println!("{}", json!({"options": options}));
    } else {
        for o in &response.options {
            println!("{:8.4}  {:9.4}  {:?}", o.prob, o.logprob, o.text);
        }
    }
    Ok(())
}
