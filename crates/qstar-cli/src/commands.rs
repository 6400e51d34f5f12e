//! The model-level commands: fetch, info, generate, score, choose.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

use qstar_core::{
    ChooseRequest, GenerateRequest, LanguageModel, Message, SamplingParams, ScoreRequest,
    ScoreResponse,
};

use crate::backend::BackendArgs;
use crate::report::{Reporter, Text};
use crate::{bounded, non_empty, positive_f64, UsageError};

/// The most samples `generate` draws for one prompt.
pub const MAX_SAMPLES: usize = 256;

pub async fn model_fetch() -> Result<()> {
    let reporter = Reporter::new(false);
    let bar = reporter.download_progress();
    let progress = |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let (path, downloaded) = qstar_engine::fetch::fetch_default(&progress).await?;
    bar.finish_and_clear();
    reporter.note(if downloaded {
        "fetched the default model"
    } else {
        "the default model is already in the cache and intact"
    });
    reporter.data(&Text::new().line(path.display().to_string()))
}

pub async fn model_info(backend: &BackendArgs, json: bool) -> Result<()> {
    let reporter = Reporter::new(json);
    let path = backend.ensure_model().await?;
    let model = qstar_engine::LoadedModel::load_with_adapter(&path, backend.adapter.as_deref())?;
    let info = &model.info;
    reporter.summary_pretty(info, &info_text(info))
}

/// `model info` without `--json`: one aligned line per fact, then the
/// chat template.
fn info_text(info: &qstar_engine::model::ModelInfo) -> Text {
    let c = &info.config;
    let show = |t: &Option<qstar_engine::model::SpecialToken>| {
        t.as_ref()
            .map_or("-".to_string(), |t| format!("{} ({})", t.text, t.id))
    };
    let specials: Vec<String> = info
        .special_tokens
        .iter()
        .map(|t| format!("{}={}", t.id, t.text))
        .collect();
    let mut text = Text::new()
        .line(format!("path            {}", info.path))
        .line(format!(
            "name            {}",
            info.name.as_deref().unwrap_or("-")
        ))
        .line(format!("architecture    {}", info.architecture))
        .line(format!(
            "file size       {:.1} MB",
            info.file_bytes as f64 / 1e6
        ))
        .line(format!(
            "parameters      {:.1} M",
            info.parameters as f64 / 1e6
        ))
        .line(format!(
            "quantization    {} (tensors: {:?})",
            info.quantization, info.tensor_types
        ))
        .line(format!(
            "layers          {} (width {}, {} heads, {} KV heads, FFN {})",
            c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff
        ))
        .line(format!("context length  {}", info.context_length))
        .line(format!(
            "vocabulary      {} (pre-tokenizer {})",
            info.vocab_size, info.pre_tokenizer
        ))
        .line(format!(
            "BOS / EOS       {} / {} (add BOS: {})",
            show(&info.bos_token),
            show(&info.eos_token),
            info.add_bos_token
        ))
        .line(format!("special tokens  {}", specials.join(" ")));
    if let Some(a) = &info.adapter {
        text = text.line(format!(
            "adapter         {} (LoRA rank {}, alpha {}, {} in {} layers)",
            a.path,
            a.rank,
            a.alpha,
            a.target_modules.join(", "),
            a.layers
        ));
    }
    text.line(format!(
        "chat template:\n{}",
        info.chat_template.as_deref().unwrap_or("(none)")
    ))
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
    let mut text = Text::new();
    for (i, c) in response.completions.iter().enumerate() {
        if response.completions.len() > 1 {
            text = text.line(format!("--- sample {i} ---"));
        }
        text = text.line(c.text.clone());
    }
    Reporter::new(args.json).summary(&response.summary(), &text)
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long)]
    continuation: String,
    /// Print DPO's implicit reward per token, β·(log π − log π_ref): the
    /// policy is the model (with --adapter), the reference --ref-model or
    /// the model without the adapter.
    #[arg(long)]
    implicit_reward: bool,
    /// Reference model of --implicit-reward (GGUF; default: the model
    /// without --adapter).
    #[arg(long, requires = "implicit_reward")]
    ref_model: Option<PathBuf>,
    /// β of --implicit-reward.
    #[arg(long, default_value_t = 0.1, requires = "implicit_reward", value_parser = positive_f64)]
    beta: f64,
    #[arg(long)]
    json: bool,
}

pub async fn score(args: ScoreArgs) -> Result<()> {
    let request = ScoreRequest {
        prompt: args.prompt,
        continuation: args.continuation,
    };
    if args.implicit_reward {
        let reference = args
            .backend
            .reference_engine(args.ref_model.as_deref())
            .await?;
        let policy = args.backend.open().await?;
        return implicit_reward(policy.as_ref(), &reference, request, args.beta, args.json).await;
    }
    let model = args.backend.open().await?;
    let response = model
        .score(vec![request])
        .await?
        .pop()
        .context("the backend returned no answer")?;
    let mut text = Text::new();
    for t in &response.tokens {
        let lp = t
            .logprob
            .map_or("    -   ".to_string(), |l| format!("{l:8.4}"));
        text = text.line(format!("{lp}  {:>6}  {:?}", t.id, t.text));
    }
    let text = text.line(format!("total {:.4}", response.total_logprob));
    Reporter::new(args.json).summary(&response.summary(), &text)
}

/// `score --implicit-reward`: both models score the text; each token's
/// reward is β times the difference of their log-probs.
async fn implicit_reward(
    policy: &dyn LanguageModel,
    reference: &dyn LanguageModel,
    request: ScoreRequest,
    beta: f64,
    json: bool,
) -> Result<()> {
    async fn scored(m: &dyn LanguageModel, request: ScoreRequest) -> Result<ScoreResponse> {
        m.score(vec![request])
            .await?
            .pop()
            .context("the backend returned no answer")
    }
    let p = scored(policy, request.clone()).await?;
    let r = scored(reference, request).await?;
    let rewards = qstar_search::implicit_token_rewards(&p, &r, beta).map_err(UsageError)?;
    let total: f64 = rewards.iter().sum();
    let mut text = Text::new().line(format!(
        "{:>9}  {:>9}  {:>9}  {:>6}  token",
        "reward", "log π", "log π_ref", "id"
    ));
    let mut tokens = Vec::new();
    for ((pt, rt), reward) in p.tokens.iter().zip(&r.tokens).zip(&rewards) {
        let lp = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.4}"));
        text = text.line(format!(
            "{reward:9.4}  {:>9}  {:>9}  {:>6}  {:?}",
            lp(pt.logprob),
            lp(rt.logprob),
            pt.id,
            pt.text
        ));
        tokens.push(serde_json::json!({
            "id": pt.id,
            "text": pt.text,
            "logprob": pt.logprob,
            "ref_logprob": rt.logprob,
            "implicit_reward": reward,
        }));
    }
    let text = text.line(format!(
        "total implicit reward {total:.4} (β {beta}; log π {:.4}, log π_ref {:.4})",
        p.total_logprob, r.total_logprob
    ));
    let summary = serde_json::json!({
        "beta": beta,
        "tokens": tokens,
        "total_implicit_reward": total,
        "total_logprob": p.total_logprob,
        "ref_total_logprob": r.total_logprob,
    });
    Reporter::new(json).summary(&summary, &text)
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
    let mut text = Text::new();
    for o in &response.options {
        text = text.line(format!("{:8.4}  {:9.4}  {:?}", o.prob, o.logprob, o.text));
    }
    Reporter::new(args.json).summary(&response.summary(), &text)
}
